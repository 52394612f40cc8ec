//! `loopswap watch` in the VM, against lsw_fixture's parked threads.

use serde_json::Value;
use tests::{calls, inflight, run, run_ok, section, snapshots, total};

/// 3 threads in an exported function, 2 in a static one called through a
/// function pointer, 2 work items, 300 threads in one function (far past
/// kretprobe's default maxactive).
const PARK: &str = "park_exported=3 park_indirect=2 park_work=2 park_crowd=300";

/// Every thread is also inside hold_until_released (the shared wait), and
/// every kthread (not the work items) inside fixture_thread_fn.
fn assert_all_parked(snapshot: &Value) {
    assert_eq!(inflight(snapshot, "lsw_fixture_hold_exported"), 3, "{snapshot}");
    assert_eq!(inflight(snapshot, "fixture_hold_indirect"), 2, "{snapshot}");
    assert_eq!(inflight(snapshot, "fixture_work_fn"), 2, "{snapshot}");
    assert_eq!(inflight(snapshot, "lsw_fixture_hold_crowd"), 300, "{snapshot}");
    assert_eq!(inflight(snapshot, "fixture_thread_fn"), 305, "{snapshot}");
    assert_eq!(inflight(snapshot, "hold_until_released"), 307, "{snapshot}");
    assert_eq!(
        total(snapshot, "inflight"),
        3 + 2 + 2 + 300 + 305 + 307,
        "{snapshot}"
    );
    assert_eq!(total(snapshot, "threads"), 307, "{snapshot}");
    assert_eq!(total(snapshot, "missed"), 0, "{snapshot}");
}

fn assert_all_zero(snapshot: &Value) {
    assert_eq!(total(snapshot, "inflight"), 0, "{snapshot}");
    assert_eq!(total(snapshot, "threads"), 0, "{snapshot}");
    assert_eq!(total(snapshot, "missed"), 0, "{snapshot}");
    for function in snapshot["functions"].as_array().unwrap() {
        assert_eq!(function["inflight"], 0, "{function}");
    }
}

/// Starts a JSON watch in the background and waits for its first line.
const START_WATCH: &str = r#"
loopswap watch --json --interval 200ms lsw_fixture > /tmp/live.json &
watcher=$!
while [ ! -s /tmp/live.json ]; do sleep 0.1; done
"#;

const STOP_WATCH: &str = r#"
kill -TERM $watcher
wait $watcher
echo "== live"; cat /tmp/live.json
echo "== kprobe_events"; cat /sys/kernel/tracing/kprobe_events
rmmod lsw_fixture
echo "== end"
"#;

#[test]
fn threads_parked_before_attach_are_counted_and_followed_out() {
    let outcome = run_ok(&format!(
        "set -e\ninsmod /modules/lsw_fixture.ko {PARK}\n\
         echo '== once'; loopswap watch --once --json lsw_fixture\n\
         {START_WATCH}\n\
         echo release > /sys/kernel/debug/lsw_fixture/control\n\
         sleep 1\n{STOP_WATCH}"
    ));
    let once = snapshots(&outcome.output, "once");
    assert_eq!(once.len(), 1);
    assert_all_parked(&once[0]);
    // The probes saw none of them enter: all came from the stacks.
    assert_eq!(total(&once[0], "seeded"), total(&once[0], "inflight"));
    assert_eq!(calls(&once[0], "lsw_fixture_hold_crowd"), 0);

    let live = snapshots(&outcome.output, "live");
    assert!(live.len() >= 2, "{live:?}");
    assert_all_parked(&live[0]);
    assert_all_zero(live.last().unwrap());
    assert!(
        section(&outcome.output, "kprobe_events").is_empty(),
        "probes left behind"
    );
}

#[test]
fn threads_entering_after_attach_are_counted_by_the_probes() {
    let outcome = run_ok(&format!(
        "set -e\ninsmod /modules/lsw_fixture.ko\n{START_WATCH}\n\
         for what in 'exported 3' 'indirect 2' 'work 2' 'crowd 300'; do\n\
             echo \"park $what\" > /sys/kernel/debug/lsw_fixture/control\n\
         done\n\
         sleep 1\n\
         echo '== parked'; tail -n 1 /tmp/live.json\n\
         echo release > /sys/kernel/debug/lsw_fixture/control\n\
         sleep 1\n{STOP_WATCH}"
    ));
    let parked = snapshots(&outcome.output, "parked");
    assert_eq!(parked.len(), 1);
    assert_all_parked(&parked[0]);
    assert_eq!(total(&parked[0], "seeded"), 0, "all seen entering");
    assert_eq!(calls(&parked[0], "lsw_fixture_hold_crowd"), 300);
    assert_eq!(calls(&parked[0], "fixture_hold_indirect"), 2);
    assert_eq!(calls(&parked[0], "fixture_work_fn"), 2);

    let live = snapshots(&outcome.output, "live");
    assert_all_zero(live.last().unwrap());
    assert!(
        section(&outcome.output, "kprobe_events").is_empty(),
        "probes left behind"
    );
}

#[test]
fn returns_past_max_active_are_reported_as_missed() {
    // 100 sleepers against room for 16 returns: 84 returns cannot be
    // followed, and the watch must say so rather than report clean counts.
    let outcome = run_ok(
        "set -e\ninsmod /modules/lsw_fixture.ko\n\
         loopswap watch --json --max-active 16 --interval 200ms lsw_fixture > /tmp/live.json &\n\
         watcher=$!\n\
         while [ ! -s /tmp/live.json ]; do sleep 0.1; done\n\
         echo 'park crowd 100' > /sys/kernel/debug/lsw_fixture/control\n\
         echo release > /sys/kernel/debug/lsw_fixture/control\n\
         sleep 1\nkill -TERM $watcher; wait $watcher\n\
         echo '== live'; cat /tmp/live.json\nrmmod lsw_fixture\necho '== end'",
    );
    let last = snapshots(&outcome.output, "live").pop().expect("a snapshot");
    assert!(total(&last, "missed") >= 84, "{last}");
}

#[test]
fn exported_only_limits_the_functions() {
    let outcome = run_ok(
        "set -e\ninsmod /modules/lsw_fixture.ko park_indirect=2\n\
         echo '== once'; loopswap watch --once --json --exported-only lsw_fixture\n",
    );
    let once = snapshots(&outcome.output, "once");
    let mut names: Vec<&str> = once[0]["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "lsw_fixture_hold_crowd",
            "lsw_fixture_hold_exported",
            "lsw_fixture_nop"
        ]
    );
    // The parked threads are in static functions only: nothing exported.
    assert_eq!(total(&once[0], "inflight"), 0);
}

#[test]
fn bad_targets_fail_with_one_line_and_status_2_changing_nothing() {
    let outcome = run_ok(
        "insmod /modules/lsw_fixture.ko\n\
         for target in no_such_module printk; do\n\
             echo \"== $target\"; loopswap watch --once $target 2>&1; echo \"status=$?\"\n\
         done\n\
         echo '== nonroot'; su nobody -s /bin/sh -c 'loopswap watch --once lsw_fixture' 2>&1; echo \"status=$?\"\n\
         echo '== maxactive'; loopswap watch --once --max-active 0 lsw_fixture 2>&1; echo \"status=$?\"\n\
         echo '== kprobe_events'; cat /sys/kernel/tracing/kprobe_events\n\
         echo '== end'",
    );
    for (name, expected) in [
        ("no_such_module", "module no_such_module is not loaded"),
        ("printk", "printk is built into the kernel"),
        ("nonroot", "must run as root"),
        ("maxactive", "--max-active 0 is out of range"),
    ] {
        let lines = section(&outcome.output, name);
        assert_eq!(lines.len(), 2, "{name}: {lines:?}");
        assert!(
            lines[0].starts_with("loopswap: ") && lines[0].contains(expected),
            "{name}: {lines:?}"
        );
        assert_eq!(lines[1], "status=2", "{name}");
    }
    assert!(section(&outcome.output, "kprobe_events").is_empty());
}

#[test]
fn the_vm_reports_exit_status_added_files_and_kernel_panics() {
    let dir = std::env::temp_dir().join(format!("lsw-add-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("hello.txt");
    std::fs::write(&file, "hello from the host\n").unwrap();
    let mut request = tests::VmRequest::new("cat /add/hello.txt; test -d /sys/kernel/tracing/events; exit 3");
    request.adds.push(file);
    let outcome = xtask::vm::run(&request).unwrap();
    assert_eq!(outcome.exit_code, Some(3));
    assert!(outcome.output.contains("hello from the host"));
    assert!(
        outcome.kernel_problems.is_empty(),
        "{:?}",
        outcome.kernel_problems
    );

    let panicked = run("echo c > /proc/sysrq-trigger; sleep 5");
    assert!(panicked.check().is_err());
    assert!(
        panicked
            .kernel_problems
            .iter()
            .any(|line| line.contains("Kernel panic")),
        "{:?}",
        panicked.kernel_problems
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_watched_module_stays_loaded_until_the_watch_ends_and_nothing_is_left_behind() {
    // The kprobe.session link holds a reference on the module it probes:
    // it cannot be unloaded under the watch (whose counts would turn to
    // zeros). It is one ftrace user per function (an entry link and a
    // return link would be two).
    let outcome = run_ok(
        r#"insmod /modules/lsw_fixture.ko
loopswap watch --json --interval 200ms lsw_fixture > /tmp/live.json 2> /tmp/err.txt &
watch=$!
until [ -s /tmp/live.json ]; do sleep 0.1; done
echo "== ftrace-users"; grep '\[lsw_fixture\]' /sys/kernel/tracing/enabled_functions | grep -o '\] ([0-9]*)' | sort | uniq -c
echo "== rmmod-watched"; if rmmod lsw_fixture 2>/dev/null; then echo unloaded; else echo refused; fi
kill -TERM $watch; wait $watch
echo "== rmmod-after"; if rmmod lsw_fixture; then echo unloaded; else echo refused; fi
echo "== stderr"; cat /tmp/err.txt
echo "== events"; grep -c loopswap/ /sys/kernel/tracing/kprobe_events || true
echo "== end"
"#,
    );
    let out = &outcome.output;
    let users = section(out, "ftrace-users");
    assert!(
        users.len() == 1 && users[0].ends_with("(1)"),
        "one ftrace user (the session link) on every function: {out}"
    );
    assert_eq!(section(out, "rmmod-watched"), ["refused"], "{out}");
    assert_eq!(section(out, "rmmod-after"), ["unloaded"], "{out}");
    assert_eq!(section(out, "stderr"), Vec::<&str>::new(), "{out}");
    assert_eq!(section(out, "events"), ["0"], "every probe detached: {out}");
}

#[test]
fn a_module_of_two_thousand_functions_is_watched_in_one_attach() {
    // One kprobe.session link: 2,000 functions attach in one ftrace update
    // and need 2 descriptors, not 4,000, so even a tight descriptor limit
    // is no obstacle.
    let outcome = run_ok(
        r#"set -e
insmod /modules/lsw_many.ko
ulimit -n 64
loopswap watch --json --interval 500ms lsw_many > /tmp/live.json 2> /tmp/err.txt &
watch=$!
until [ -s /tmp/live.json ]; do sleep 0.1; done
echo 1 > /sys/module/lsw_many/parameters/call_all
sleep 2
kill -TERM $watch; wait $watch
echo "== last"; tail -n 1 /tmp/live.json
echo "== stderr"; cat /tmp/err.txt
rmmod lsw_many
echo "== end"
"#,
    );
    let out = &outcome.output;
    let last = snapshots(out, "last").pop().expect("a snapshot");
    let functions = last["functions"].as_array().expect("functions");
    let called: Vec<&Value> = functions
        .iter()
        .filter(|f| {
            f["name"]
                .as_str()
                .is_some_and(|name| name.starts_with("lsw_many_"))
        })
        .collect();
    assert_eq!(called.len(), 2000, "{last}");
    assert!(
        called.iter().all(|f| f["calls"] == 1 && f["inflight"] == 0),
        "{last}"
    );
    assert_eq!(total(&last, "missed"), 0, "{last}");
    assert_eq!(section(out, "stderr"), Vec::<&str>::new(), "{out}");
}
