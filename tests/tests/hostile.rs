//! Bad input, table-driven: each case must fail with a clear error (one
//! line of loopswap's own, or clap's usage error), the right exit status,
//! and leave the kernel exactly as it was (instances, implementations,
//! devices, loaded modules and their reference counts).

use tests::{LSWLOOP_SETUP, run_ok, section};

/// (name, command, exit status, text the error must contain).
const CASES: &[(&str, &str, i32, &str)] = &[
    ("no-args", "loopswap swap", 2, "--to"),
    ("no-to", "loopswap swap lswloop0", 2, "--to"),
    ("to-without-value", "loopswap swap lswloop0 --to", 2, "--to"),
    (
        "unknown-impl",
        "loopswap swap lswloop0 --to lswloop_v2",
        2,
        "no implementation named lswloop_v2",
    ),
    (
        "instance-as-impl",
        "loopswap swap lswloop0 --to lswloop0",
        2,
        "no implementation named lswloop0",
    ),
    (
        "names-and-all",
        "loopswap swap lswloop0 --all --to /modules/lswloop_v2.ko",
        2,
        "not both",
    ),
    (
        "neither-names-nor-all",
        "loopswap swap --to /modules/lswloop_v2.ko",
        2,
        "name at least one instance",
    ),
    (
        "all-on-target",
        "loopswap swap --all --to lswloop_v1",
        2,
        "no instance runs anything but lswloop_v1",
    ),
    (
        "unknown-instance",
        "loopswap swap lswloop9 --to /modules/lswloop_v2.ko",
        2,
        "no instance named lswloop9",
    ),
    (
        "already-runs",
        "loopswap swap lswloop0 --to lswloop_v1",
        2,
        "already runs lswloop_v1",
    ),
    (
        "already-runs-ko",
        "loopswap swap lswloop0 --to /modules/lswloop_v1.ko",
        2,
        "already runs lswloop_v1",
    ),
    (
        "missing-ko",
        "loopswap swap lswloop0 --to /nonexistent.ko",
        2,
        "no such file",
    ),
    (
        "not-elf",
        "loopswap swap lswloop0 --to /etc/passwd",
        2,
        "not an ELF file",
    ),
    (
        "empty-ko",
        "loopswap swap lswloop0 --to /tmp/empty.ko",
        2,
        "not an ELF file",
    ),
    (
        "directory",
        "loopswap swap lswloop0 --to /tmp/",
        2,
        "not a regular file",
    ),
    (
        "sparse-8g-ko",
        "loopswap swap lswloop0 --to /tmp/huge.ko",
        2,
        "larger than any kernel module",
    ),
    (
        "no-implementation-in-ko",
        "loopswap swap lswloop0 --to /modules/lsw_fixture.ko",
        2,
        "registered no lsw implementation",
    ),
    (
        "zero-timeout",
        "loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 0s",
        2,
        "out of range",
    ),
    (
        "long-timeout",
        "loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 61s",
        2,
        "out of range",
    ),
    (
        "absurd-timeout",
        "loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 500000000000y",
        2,
        "timeout",
    ),
    (
        "word-timeout",
        "loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout fast",
        2,
        "timeout",
    ),
    (
        "abort-nothing",
        "loopswap abort lswloop0",
        2,
        "no swap in progress",
    ),
    (
        "abort-unknown",
        "loopswap abort lswloop9",
        2,
        "no instance named lswloop9",
    ),
    ("abort-no-args", "loopswap abort", 2, "INSTANCE"),
    ("watch-no-args", "loopswap watch", 2, "MODULE"),
    (
        "watch-unknown-module",
        "loopswap watch --once no_such_module",
        2,
        "not loaded",
    ),
    (
        "watch-max-active-0",
        "loopswap watch --once --max-active 0 lswloop_v1",
        2,
        "max-active",
    ),
    (
        "watch-tiny-interval",
        "loopswap watch --interval 1ms lswloop_v1",
        2,
        "interval",
    ),
    (
        "watch-built-in",
        "loopswap watch --once kernel",
        2,
        "built into the kernel",
    ),
    ("unknown-subcommand", "loopswap bogus", 2, "bogus"),
    ("unknown-flag", "loopswap status --bogus", 2, "--bogus"),
    (
        "status-not-root",
        "su nobody -s /bin/sh -c 'loopswap status'",
        2,
        "must run as root",
    ),
    (
        "swap-not-root",
        "su nobody -s /bin/sh -c 'loopswap swap lswloop0 --to lswloop_v1'",
        2,
        "must run as root",
    ),
];

/// The kernel state a refusal must not change.
const SNAPSHOT: &str = r#"loopswap status --json
cat /sys/kernel/lswloop/devices
cut -d' ' -f1-3 /proc/modules | sort
grep -c loopswap/ /sys/kernel/tracing/kprobe_events || true"#;

#[test]
fn bad_input_fails_clearly_and_changes_nothing() {
    let mut script = format!(
        "{LSWLOOP_SETUP}
add disk0 64
set +e
: > /tmp/empty.ko
truncate -s 8G /tmp/huge.ko
echo '== before'; {SNAPSHOT}
"
    );
    for (name, command, _, _) in CASES {
        script.push_str(&format!(
            "{command} > /tmp/out.txt 2> /tmp/err.txt; status=$?\necho '== {name}'; echo \"status=$status\"; cat /tmp/err.txt\n"
        ));
    }
    script.push_str(&format!("echo '== after'; {SNAPSHOT}\necho '== end'\n"));
    let outcome = run_ok(&script);
    let out = &outcome.output;
    assert!(CASES.len() >= 30);
    for (name, _, status, text) in CASES {
        let lines = section(out, name);
        assert_eq!(
            lines.first(),
            Some(&format!("status={status}").as_str()),
            "{name}: {lines:?}"
        );
        let error = &lines[1..];
        assert!(!error.is_empty(), "{name}: no error message");
        if error[0].starts_with("loopswap: ") {
            assert_eq!(error.len(), 1, "{name}: more than one line: {error:?}");
        } else {
            // clap's own usage errors: "error: ...", then usage and a hint.
            assert!(error[0].starts_with("error: "), "{name}: {error:?}");
        }
        assert!(
            error.join("\n").contains(text),
            "{name}: {text:?} not in {error:?}"
        );
    }
    assert_eq!(
        section(out, "before"),
        section(out, "after"),
        "kernel state changed"
    );
}

#[test]
fn a_thousand_devices_are_all_listed_and_swap_all_moves_every_one() {
    // The devices file used to stop at one page (43 lines) and the core's
    // list reply at 8 KiB (97 instances); `--all` would have skipped the rest.
    // The swap's own output goes to files: 1,000 instances of progress lines
    // on the serial console would take longer than the swap.
    let outcome = run_ok(&format!(
        "{LSWLOOP_SETUP}
i=0
while [ $i -lt 1000 ]; do add disk$i 1; i=$((i + 1)); done
echo '== devices'; wc -l < /sys/kernel/lswloop/devices
echo '== last-device'; tail -n 1 /sys/kernel/lswloop/devices | cut -d' ' -f1-3
# One open file reads one listing, even if a device goes between its reads.
cat /sys/kernel/lswloop/devices > /tmp/whole
exec 3< /sys/kernel/lswloop/devices
dd bs=100 count=1 <&3 > /tmp/one 2>/dev/null
echo lswloop0 > /sys/kernel/lswloop/remove
cat <&3 >> /tmp/one
exec 3<&-
echo '== one-listing'; cmp /tmp/whole /tmp/one && echo same
# Read to the end, a file reads 0 again there (busybox tail does), even if
# the listing has grown meanwhile.
exec 3< /sys/kernel/lswloop/devices
cat <&3 > /dev/null
add grown 1
echo '== past-the-end'; cat <&3 | wc -c
exec 3<&-
echo lswloop0 > /sys/kernel/lswloop/remove
echo '== after-remove'; wc -l < /sys/kernel/lswloop/devices
add disk0 1
dd if=/sys/kernel/lswloop/devices bs=7 2>/dev/null > /tmp/small
cat /sys/kernel/lswloop/devices > /tmp/whole
echo '== small-reads'; cmp /tmp/whole /tmp/small && echo same
loopswap status --json > /tmp/status.json
echo '== status-count'; grep -o '\"name\":\"lswloop[0-9]*\"' /tmp/status.json | sort -u | wc -l
# 1,000 instances in JSON (about 110 KB) are more than a pipe holds (64 KiB)
# plus what head reads: the reader is gone before the end. (The table, about
# 66 KB, could fit once head had read its first block.)
echo '== head'; (set +e; loopswap status --json; echo \"pipe=$?\" > /tmp/pipe) | head -c 12; echo; cat /tmp/pipe
echo '== status-bytes'; wc -c < /tmp/status.json
# A failed swap is asserted on below with its last lines of stderr, not
# cut short by set -e with nothing said.
swap_exit=0
loopswap swap --all --to /modules/lswloop_v2.ko --json > /tmp/swap.json 2> /tmp/swap.err || swap_exit=$?
echo '== swap-exit'; echo $swap_exit
echo '== swap-stderr'; tail -n 5 /tmp/swap.err
echo '== committed'; grep -o '\"committed\":true' /tmp/swap.json | wc -l
echo '== attaches'; grep -o '\"phase\":\"attach\"' /tmp/swap.json | wc -l
echo '== on-v2'; grep -c ' impl=lswloop_v2' /sys/kernel/lswloop/devices
echo '== modules'; cut -d' ' -f1 /proc/modules | grep lswloop_
echo '== end'
"
    ));
    let out = &outcome.output;
    assert_eq!(section(out, "devices"), ["1000"], "{out}");
    assert_eq!(section(out, "last-device"), ["lswloop999 id=999 impl=lswloop_v1"]);
    // Built afresh for each read, the listing shifted under a reader when a
    // line changed length between its reads: lines were cut or repeated.
    assert_eq!(section(out, "one-listing"), ["same"], "{out}");
    assert_eq!(section(out, "past-the-end"), ["0"], "{out}");
    assert_eq!(section(out, "after-remove"), ["999"], "{out}");
    assert_eq!(section(out, "small-reads"), ["same"], "{out}");
    assert_eq!(section(out, "status-count"), ["1000"], "{out}");
    // A reader that goes away ends the command quietly, as SIGPIPE would.
    assert_eq!(section(out, "head"), ["{\"classes\":[", "pipe=141"], "{out}");
    let status_bytes: usize = section(out, "status-bytes")[0]
        .trim()
        .parse()
        .expect("a byte count");
    assert!(
        status_bytes > 96 * 1024,
        "{status_bytes} bytes: too few to outgrow the pipe and head's read"
    );
    assert_eq!(section(out, "swap-exit"), ["0"], "{out}");
    assert_eq!(section(out, "committed"), ["1000"], "{out}");
    // The counters attach once for the old module, not once per instance.
    assert_eq!(section(out, "attaches"), ["1"], "{out}");
    assert_eq!(section(out, "on-v2"), ["1000"], "{out}");
    assert_eq!(section(out, "modules"), ["lswloop_v2"], "{out}");
}

#[test]
fn a_swap_that_fails_after_loading_new_unloads_it() {
    // With tracefs gone the counters cannot attach: that happens after NEW
    // was loaded, and NEW must go again.
    let outcome = run_ok(&format!(
        "{LSWLOOP_SETUP}
add disk0 64
set +e
umount /sys/kernel/tracing; umount /sys/kernel/debug
loopswap swap lswloop0 --to /modules/lswloop_v2.ko > /tmp/out.txt 2> /tmp/err.txt; status=$?
echo '== swap'; echo \"status=$status\"; cat /tmp/err.txt
echo '== modules'; cut -d' ' -f1 /proc/modules | grep lswloop_ | sort
echo '== end'
"
    ));
    let out = &outcome.output;
    let swap = section(out, "swap");
    // A missing facility is the system's failure, not a usage error: 1.
    assert_eq!(swap.first(), Some(&"status=1"), "{out}");
    assert_eq!(swap.len(), 2, "one line: {swap:?}");
    assert!(swap[1].contains("tracefs is not mounted"), "{swap:?}");
    assert_eq!(section(out, "modules"), ["lswloop_v1"], "{out}");
}

#[test]
fn doctor_finds_the_guest_ready_and_names_what_is_not_loaded() {
    let outcome = run_ok(
        "set +e
loopswap doctor > /tmp/before.txt; echo \"status=$?\" >> /tmp/before.txt
insmod /modules/lsw_core.ko
loopswap doctor --json > /tmp/after.json; echo \"status=$?\" >> /tmp/after.json
echo '== before'; cat /tmp/before.txt
echo '== after'; cat /tmp/after.json
echo '== end'
",
    );
    let out = &outcome.output;
    let before = section(out, "before");
    assert_eq!(before.last(), Some(&"status=0"), "{out}");
    // Everything the guest kernel has is found; only the swap core is not
    // loaded yet, which is a warning with its fix.
    for name in [
        "kprobes",
        "kretprobes",
        "kprobe.multi",
        "task-iterator",
        "task-storage",
        "btf",
        "tracefs",
        "modules",
    ] {
        assert!(
            before
                .iter()
                .any(|line| line.starts_with("ok") && line.split_whitespace().nth(1) == Some(name)),
            "{name}: {before:?}"
        );
    }
    assert!(
        before.iter().any(|line| line.starts_with("warn")
            && line.contains("swap-core")
            && line.contains("insmod lsw_core.ko")),
        "{before:?}"
    );
    let after = tests::json_in(out, "after");
    assert_eq!(after["ready"], true, "{after}");
    assert!(
        after["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|check| check["verdict"] == "ok"),
        "{after}"
    );
    assert_eq!(section(out, "after").last(), Some(&"status=0"));
}

#[test]
fn check_and_dry_run_tell_whether_a_swap_would_be_attempted_and_change_nothing() {
    let outcome = run_ok(&format!(
        "{LSWLOOP_SETUP}
add disk0 8
add disk1 8
set +e
echo '== check'; loopswap check /modules/lswloop_v2.ko lswloop0; echo \"status=$?\"
echo '== dry'; loopswap swap --all --to /modules/lswloop_v2.ko --dry-run --json; echo \"status=$?\"
echo '== unknown'; loopswap check /modules/lswloop_v2.ko lswloop9; echo \"status=$?\"
echo '== not-swappable'; loopswap check /modules/lsw_fixture.ko lswloop0 2>&1; echo \"status=$?\"
echo '== modules'; cut -d' ' -f1 /proc/modules | grep -E '^(lswloop_|lsw_fixture)'
echo '== devices'; cut -d' ' -f1,3 /sys/kernel/lswloop/devices
echo '== end'
"
    ));
    let out = &outcome.output;
    let check = section(out, "check");
    assert_eq!(check.last(), Some(&"status=0"), "{out}");
    for expected in ["module", "vermagic", "signature", "class", "lswloop0"] {
        assert!(
            check
                .iter()
                .any(|line| line.starts_with(expected) && line.contains(" ok ")),
            "{expected}: {check:?}"
        );
    }
    assert!(
        check.iter().any(|line| line.contains("would be attempted")),
        "{check:?}"
    );
    let dry = tests::json_in(out, "dry");
    assert_eq!(dry["ready"], true, "{dry}");
    assert_eq!(dry["instances"].as_array().unwrap().len(), 2, "{dry}");
    assert_eq!(section(out, "dry").last(), Some(&"status=0"));
    let unknown = section(out, "unknown");
    assert!(
        unknown.iter().any(|line| line.contains("no such instance")),
        "{unknown:?}"
    );
    assert_eq!(unknown.last(), Some(&"status=1"));
    let fixture = section(out, "not-swappable");
    assert!(
        fixture
            .iter()
            .any(|line| line.contains("not a swappable implementation")),
        "{fixture:?}"
    );
    assert_eq!(fixture.last(), Some(&"status=1"));
    // Nothing was loaded, nothing swapped.
    assert_eq!(section(out, "modules"), ["lswloop_v1"], "{out}");
    assert_eq!(
        section(out, "devices"),
        ["lswloop0 impl=lswloop_v1", "lswloop1 impl=lswloop_v1"]
    );
}
