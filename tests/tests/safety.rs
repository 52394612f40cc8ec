//! The swap's safety and liveness properties in the VM: nothing waits
//! forever behind a closed gate, the core enforces a deadline of its own,
//! a thread on a CPU is unknown (never zero), nested devices swap under
//! load, the tripwire fires on a broken quiesce, and the control interface
//! parses strictly. Every VM run also fails on any WARN, BUG, Oops or hung
//! task unless a test expects one.

use serde_json::Value;
use tests::{LSWLOOP_SETUP, inflight, json_in, run, run_ok, section, snapshots, total};

#[test]
fn control_and_device_state_never_wait_behind_a_gate_and_the_deadline_reopens_it() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
mkfs.ext4 -q /dev/lswloop0
mount -t ext4 /dev/lswloop0 /mnt
mkdir /mnt/dir
truncate -s 8M /mnt/dir/inner.img
# Remount: nothing of dir/ stays cached, so opening inner.img reads the device.
umount /mnt
mount -t ext4 /dev/lswloop0 /mnt
set +e
loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 2s --test-pause-after gate > /tmp/swap.txt 2>&1 &
swap=$!
until loopswap status | grep -q 'gated:lswloop_v2'; do sleep 0.1; done
# Opening a file on the gated device waits at its gate (bounded by the deadline).
echo /mnt/dir/inner.img > /sys/kernel/lswloop/add &
add=$!
sleep 0.5
echo "== blocked"; kill -0 $add && echo add-waits-at-the-gate
echo "== during"; timeout 5 loopswap status --json; echo "status=$?"
echo "== devices"; timeout 5 su nobody -s /bin/sh -c 'cat /sys/kernel/lswloop/devices'; echo "status=$?"
echo "== add"; if wait $add; then echo ok; else echo failed; fi
echo "== after"; loopswap status --json
kill -9 $swap; wait $swap 2>/dev/null || true
echo "== log"; dmesg | grep -c 'aborted in phase gated (its deadline passed'
echo "== swap2"; loopswap swap lswloop0 --to lswloop_v2 --json
umount /mnt
echo "== end"
"#
    ));
    let out = &outcome.output;
    assert_eq!(section(out, "blocked"), ["add-waits-at-the-gate"], "{out}");
    let during = section(out, "during");
    assert_eq!(during.last(), Some(&"status=0"), "status must not wait: {out}");
    let during = json_in(out, "during");
    assert_eq!(during["instances"][0]["gate"], "closed");
    let devices = section(out, "devices");
    assert_eq!(devices, ["lswloop0 id=0 swapping", "status=0"], "{out}");
    assert_eq!(
        section(out, "add"),
        ["ok"],
        "the add completes once the core aborts"
    );
    let after = json_in(out, "after");
    let instances = after["instances"].as_array().unwrap();
    assert_eq!(instances[0]["gate"], "open");
    assert_eq!(instances[0]["swap"], Value::Null);
    assert_eq!(instances[0]["implementation"], "lswloop_v1");
    assert_eq!(instances.len(), 2, "the nested device was added: {after}");
    assert_eq!(section(out, "log"), ["1"]);
    assert_eq!(json_in(out, "swap2")["instances"][0]["committed"], true);
}

#[test]
fn a_stopped_controller_is_aborted_by_the_core_and_abort_works_from_another_shell() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
set +e
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/lswloop0 bs=1M oflag=direct 2>/dev/null
fio --filename=/dev/lswloop0 --offset=8M --size=32M --bs=4k --rw=randwrite --verify=crc32c \
    --verify_backlog=64 --verify_fatal=1 --direct=1 --ioengine=psync --time_based --runtime=16 \
    --name=load > /tmp/fio.txt 2>&1 &
fio=$!
sleep 1
loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 2s --test-pause-after gate > /tmp/swap1.txt 2>&1 &
first=$!
until loopswap status | grep -q 'gated:'; do sleep 0.1; done
kill -STOP $first
echo "== stopped"; loopswap status --json
sleep 4
echo "== deadline"; loopswap status --json
kill -CONT $first; kill -9 $first; wait $first 2>/dev/null || true
loopswap swap lswloop0 --to lswloop_v2 --timeout 50s --test-pause-after gate > /tmp/swap2.txt 2>&1 &
second=$!
until loopswap status | grep -q 'gated:'; do sleep 0.1; done
echo "== abort"; loopswap abort lswloop0; echo "status=$?"
echo "== aborted"; loopswap status --json
echo "== again"; loopswap abort lswloop0 2>&1; echo "status=$?"
kill -9 $second; wait $second 2>/dev/null || true
echo "== fio"; if wait $fio; then echo ok; else echo failed; cat /tmp/fio.txt; fi
echo "== readback"; dd if=/dev/lswloop0 bs=1M count=4 iflag=direct 2>/dev/null | cmp - /tmp/pattern && echo same
echo "== swap3"; loopswap swap lswloop0 --to lswloop_v2 --json
echo "== end"
"#
    ));
    let out = &outcome.output;
    let instance = |name: &str| json_in(out, name)["instances"][0].clone();
    assert_eq!(instance("stopped")["gate"], "closed", "{out}");
    assert_eq!(instance("deadline")["gate"], "open", "the core's deadline: {out}");
    assert_eq!(instance("deadline")["swap"], Value::Null);
    let abort = section(out, "abort");
    assert!(abort[0].contains("ok aborted (forced"), "{abort:?}");
    assert_eq!(abort.last(), Some(&"status=0"));
    assert_eq!(instance("aborted")["gate"], "open");
    assert_eq!(instance("aborted")["implementation"], "lswloop_v1");
    let again = section(out, "again");
    assert!(again[0].contains("no swap in progress"), "{again:?}");
    assert_eq!(again.last(), Some(&"status=2"));
    assert_eq!(section(out, "fio"), ["ok"], "{out}");
    assert_eq!(section(out, "readback"), ["same"]);
    assert_eq!(json_in(out, "swap3")["instances"][0]["committed"], true);
}

#[test]
fn a_thread_on_a_cpu_at_attach_is_unknown_until_its_stack_is_read_then_counted() {
    let outcome = run_ok(
        r#"set -e
insmod /modules/lsw_fixture.ko spin_ms=2500
echo "park spin 1" > /sys/kernel/debug/lsw_fixture/control
for t in /proc/[0-9]*; do
    if grep -q '^lsw_fixture/spin' $t/comm 2>/dev/null; then spinner=${t#/proc/}; fi
done
echo "== stack"; wc -l < /proc/$spinner/stack
echo "== once"; loopswap watch --once --json lsw_fixture
echo release > /sys/kernel/debug/lsw_fixture/control
echo "== end"
"#,
    );
    let out = &outcome.output;
    // The premise: while it spins, its stack reads as empty.
    assert_eq!(section(out, "stack"), ["0"], "{out}");
    let snapshot = &snapshots(out, "once")[0];
    assert_eq!(inflight(snapshot, "fixture_hold_spinning"), 1, "{snapshot}");
    assert_eq!(inflight(snapshot, "fixture_thread_fn"), 1, "{snapshot}");
    assert_eq!(total(snapshot, "seeded"), 2, "{snapshot}");
    assert_eq!(snapshot["unknown"], serde_json::json!([]), "{snapshot}");
}

#[test]
fn nested_devices_swap_under_load_without_waiting_on_each_other() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
insmod /modules/lswloop_v2.ko
add lower 160
mkfs.ext4 -q /dev/lswloop0
mkdir -p /lower
mount -t ext4 /dev/lswloop0 /lower
truncate -s 64M /lower/upper.img
echo /lower/upper.img > /sys/kernel/lswloop/add
fio --filename=/dev/lswloop1 --size=48M --bs=4k --rw=randrw --verify=crc32c --verify_backlog=32 \
    --verify_fatal=1 --direct=1 --ioengine=psync --time_based --runtime=25 --name=nested \
    > /tmp/fio.txt 2>&1 &
fio=$!
sleep 1
n=0
while kill -0 $fio 2>/dev/null || [ $n -lt 1 ]; do
    n=$((n + 1))
    for step in "lswloop0 lswloop_v1" "lswloop1 lswloop_v1" "lswloop0 lswloop_v2" "lswloop1 lswloop_v2"; do
        set -- $step
        echo "== swap$n-$1-$2"; loopswap swap $1 --to $2 --keep-old --json
    done
done
echo "== rounds"; echo $n
echo "== fio"; if wait $fio; then echo ok; else echo failed; cat /tmp/fio.txt; fi
echo "== devices"; cat /sys/kernel/lswloop/devices
echo remove-upper; echo lswloop1 > /sys/kernel/lswloop/remove
umount /lower
echo "== fsck"; if fsck.ext4 -fn /dev/lswloop0 > /tmp/fsck.txt 2>&1; then echo clean; else cat /tmp/fsck.txt; fi
echo "== end"
"#
    ));
    let out = &outcome.output;
    let rounds: u64 = section(out, "rounds")[0].parse().unwrap();
    for round in 1..=rounds {
        for step in [
            "lswloop0-lswloop_v1",
            "lswloop1-lswloop_v1",
            "lswloop0-lswloop_v2",
            "lswloop1-lswloop_v2",
        ] {
            let report = json_in(out, &format!("swap{round}-{step}"));
            assert_eq!(report["instances"][0]["committed"], true, "{report}");
        }
    }
    assert_eq!(section(out, "fio"), ["ok"], "{out}");
    assert_eq!(section(out, "fsck"), ["clean"], "{out}");
}

#[test]
fn the_tripwire_catches_an_implementation_that_runs_after_its_state_was_exported() {
    // lswloop_v2's leak_sampler knob is a broken quiesce: its timer keeps
    // firing every jiffy. Driven through /dev/lsw directly (no counters),
    // the core either refuses the export or the next timer WARNs.
    let outcome = run(&format!(
        r#"{LSWLOOP_SETUP}
set +e
insmod /modules/lswloop_v2.ko
add disk0 64
echo Y > /sys/module/lswloop_v2/parameters/leak_sampler
exec 3<>/dev/lsw
cmd() {{ echo "== $1"; printf '%s' "$2" >&3; echo "rc=$?"; cat <&3; echo; }}
cmd begin "begin 0 lswloop_v2 lswloop_v1 20000"
cmd drain "drain 0 5000"
cmd quiesce "quiesce 0"
cmd transfer "transfer 0"
sleep 0.3
cmd abort "abort 0"
echo N > /sys/module/lswloop_v2/parameters/leak_sampler
echo "== devices"; cat /sys/kernel/lswloop/devices
echo "== end"
"#
    ));
    assert_eq!(outcome.exit_code, Some(0), "{}", outcome.tail());
    let out = &outcome.output;
    let transfer = section(out, "transfer").join(" ");
    let refused = transfer.contains("not quiescent");
    let warned = outcome
        .kernel_log
        .contains("implementation code ran for a state it had exported");
    assert!(
        refused || (transfer.contains("ok transferred") && warned),
        "neither refused nor caught: {transfer}\n{}",
        outcome.tail()
    );
    for problem in &outcome.kernel_problems {
        assert!(
            problem.contains("WARNING:") || problem.contains("Call Trace:"),
            "only the tripwire may fire: {problem}\n{}",
            outcome.tail()
        );
    }
    assert!(section(out, "abort").join(" ").contains("ok aborted"), "{out}");
    assert!(section(out, "devices")[0].contains("impl=lswloop_v2"), "{out}");
}

#[test]
fn the_control_interface_parses_strictly_and_checks_the_outgoing_implementation() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
set +e
add disk0 64
insmod /modules/lswloop_v2.ko
exec 3<>/dev/lsw
cmd() {{ echo "== $1"; printf '%s' "$2" >&3; echo "rc=$?"; cat <&3; echo; }}
cmd wrapping-id "begin 4294967296 lswloop_v1 lswloop_v2 1000"
cmd spaces "   list   "
cmd trailing "quiesce 0 1 2"
cmd verb "abortx 0"
cmd wrong-from "begin 0 lswloop_v2 lswloop_v1 1000"
cmd zero-timeout "begin 0 lswloop_v1 lswloop_v2 0"
cmd huge-timeout "begin 0 lswloop_v1 lswloop_v2 99999999999"
cmd extra "begin 0 lswloop_v1 lswloop_v2 1000 extra"
cmd no-swap "drain 0 1000"
cmd word-id "begin x lswloop_v1 lswloop_v2 1000"
echo "== self-backed"; echo /dev/lswloop0 > /sys/kernel/lswloop/add; echo "rc=$?"
echo "== status"; loopswap status --json
echo "== end"
"#
    ));
    let out = &outcome.output;
    let reply = |command: &str| section(out, command).join("\n");
    let refused = |command: &str, why: &str| {
        let text = reply(command);
        assert!(
            text.starts_with("rc=1") || text.starts_with("rc=2"),
            "{command} accepted:\n{text}"
        );
        assert!(text.contains(why), "{command}: expected {why:?} in\n{text}");
    };
    refused("wrapping-id", "bad instance id");
    assert!(reply("spaces").starts_with("rc=0"), "{}", reply("spaces"));
    assert!(reply("spaces").contains("\nend"), "{}", reply("spaces"));
    refused("trailing", "usage: quiesce ID");
    refused("verb", "unknown command abortx");
    refused("wrong-from", "instance 0 runs lswloop_v1, not lswloop_v2");
    refused("zero-timeout", "bad timeout");
    refused("huge-timeout", "bad timeout");
    refused("extra", "usage: begin");
    refused("no-swap", "no swap begun on this handle");
    refused("word-id", "bad instance id");
    // A block device (an lswloop one included) never backs a device.
    assert_eq!(section(out, "self-backed").last(), Some(&"rc=1"), "{out}");
    let status = json_in(out, "status");
    assert_eq!(status["instances"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status["instances"][0]["gate"], "open");
    assert_eq!(status["instances"][0]["swap"], Value::Null);
    assert_eq!(status["instances"][0]["implementation"], "lswloop_v1");
}

#[test]
fn same_named_static_functions_are_each_probed_and_notrace_code_is_named() {
    let outcome = run_ok(
        r#"set -e
insmod /modules/lsw_twins.ko
sleep 0.5
echo "== once"; loopswap watch --once --json lsw_twins
rmmod lsw_twins
echo "== end"
"#,
    );
    let snapshot = &snapshots(&outcome.output, "once")[0];
    let functions = snapshot["functions"].as_array().unwrap();
    let twins: Vec<&Value> = functions.iter().filter(|f| f["name"] == "twin_hold").collect();
    assert_eq!(twins.len(), 2, "both twin_hold functions are watched: {snapshot}");
    let twin_frames: u64 = twins.iter().map(|f| f["inflight"].as_u64().unwrap()).sum();
    assert_eq!(twin_frames, 2, "{snapshot}");
    // ftrace cannot hook the notrace function, so no probe can: it is named,
    // and the thread inside it is still counted from its stack.
    assert!(
        snapshot["unprobed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|name| name == "twin_hidden"),
        "{snapshot}"
    );
    assert_eq!(inflight(snapshot, "twin_hidden"), 1, "{snapshot}");
    assert_eq!(total(snapshot, "missed"), 0, "{snapshot}");
}

#[test]
fn sigint_aborts_a_swap_waiting_for_calls_and_unloads_what_it_loaded() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
set +e
echo 6000 > /sys/module/lswloop_v1/parameters/stall_ms
dd if=/dev/lswloop0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
held=$!
sleep 0.5
# --force-wait: the gate closes at once and the drain waits for the
# stalled call (without it the swap would wait for it with the gate open).
loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 30s --force-wait > /tmp/swap.txt 2>&1 &
swap=$!
n=0
until loopswap status | grep -q 'gated:' || [ $n -ge 200 ]; do sleep 0.1; n=$((n + 1)); done
echo "== gated"; loopswap status | grep -c 'gated:'
sleep 0.5
kill -INT $swap
wait $swap; status=$?
echo "== status"; echo "status=$status"
echo "== report"; cat /tmp/swap.txt
echo "== after"; loopswap status --json
echo "== modules"; cut -d' ' -f1 /proc/modules | grep lswloop_ | sort
echo 0 > /sys/module/lswloop_v1/parameters/stall_ms
echo "== held"; if wait $held; then echo ok; else echo failed; fi
echo "== end"
"#
    ));
    let out = &outcome.output;
    assert_eq!(section(out, "gated"), ["1"], "the gate closed: {out}");
    assert_eq!(section(out, "status"), ["status=1"], "{out}");
    let report = section(out, "report").join("\n");
    assert!(report.contains("interrupted by SIGINT or SIGTERM"), "{report}");
    assert!(report.contains("unload lswloop_v2"), "{report}");
    let after = json_in(out, "after");
    assert_eq!(after["instances"][0]["gate"], "open");
    assert_eq!(after["instances"][0]["swap"], Value::Null);
    assert_eq!(section(out, "modules"), ["lswloop_v1"], "{out}");
    assert_eq!(section(out, "held"), ["ok"]);
}
