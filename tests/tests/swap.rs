//! `loopswap swap` in the VM: lswloop devices under real load (ext4, fio
//! with verification) swapped between lswloop_v1 and lswloop_v2. Every VM
//! run also fails on any WARN (the core's tripwire included), BUG or Oops.

use serde_json::Value;
use tests::{LSWLOOP_SETUP, device_facts, json_in, run_ok, section};

fn facts_of(output: &str, name: &str, device: &str) -> std::collections::HashMap<String, String> {
    let line = section(output, name)
        .into_iter()
        .find(|line| line.starts_with(device))
        .unwrap_or_else(|| panic!("{device} missing from section {name}:\n{output}"));
    device_facts(line)
}

fn number(facts: &std::collections::HashMap<String, String>, key: &str) -> u64 {
    facts
        .get(key)
        .unwrap_or_else(|| panic!("{key} missing from {facts:?}"))
        .parse()
        .unwrap()
}

/// Whether an instance's report lists the phase `name`.
fn has_phase(instance: &Value, name: &str) -> bool {
    instance["phases"]
        .as_array()
        .unwrap()
        .iter()
        .any(|phase| phase["phase"] == name)
}

fn assert_committed(report: &Value) {
    let instance = &report["instances"][0];
    assert_eq!(instance["committed"], true, "{report}");
    assert!(instance["blackout_us"].as_u64().is_some(), "{report}");
    // Inside the blackout the stacks were checked through the switch
    // program (the tasks that ran since the full scan before the gate),
    // not by walking every task again.
    assert_eq!(instance["stack_check"]["scope"], "switched", "{report}");
}

#[test]
fn ext4_under_fio_survives_repeated_swaps_with_state_carried_over() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 256
mkfs.ext4 -q /dev/lswloop0
mount -t ext4 /dev/lswloop0 /mnt
dd if=/dev/urandom of=/mnt/before bs=1M count=8 2>/dev/null
sync
md5sum /mnt/before > /tmp/before.md5
echo "== devices0"; cat /sys/kernel/lswloop/devices
fio --directory=/mnt --size=16M --bs=4k --rw=randwrite --verify=crc32c --verify_backlog=64 \
    --verify_fatal=1 --ioengine=psync --time_based --runtime=30 \
    --name=direct --direct=1 --name=buffered --direct=0 > /tmp/fio.txt 2>&1 &
fio=$!
sleep 2
n=0
while kill -0 $fio 2>/dev/null || [ $n -lt 4 ]; do
    n=$((n + 1))
    for v in 2 1; do
        echo "== swap$n-$v"; loopswap swap lswloop0 --to /modules/lswloop_v$v.ko --json
        echo "== devices$n-$v"; cat /sys/kernel/lswloop/devices
    done
done
echo "== rounds"; echo $n
echo "== fio"; if wait $fio; then echo ok; else echo failed; cat /tmp/fio.txt; fi
grep -c 'err= 0' /tmp/fio.txt
echo "== md5"; md5sum -c /tmp/before.md5
umount /mnt
echo "== fsck"; if fsck.ext4 -fn /dev/lswloop0 > /tmp/fsck.txt 2>&1; then echo clean; else cat /tmp/fsck.txt; fi
echo "== end"
"#
    ));
    let out = &outcome.output;
    let rounds: u64 = section(out, "rounds")[0].parse().unwrap();
    assert!(rounds >= 4, "only {rounds} rounds");
    assert_eq!(
        section(out, "fio"),
        ["ok", "2"],
        "fio failed or reported errors:\n{out}"
    );
    assert_eq!(section(out, "md5"), ["/mnt/before: OK"]);
    assert_eq!(section(out, "fsck"), ["clean"]);

    // State carried over: same backing file and size, counters never reset.
    let mut previous = facts_of(out, "devices0", "lswloop0");
    assert_eq!(previous["impl"], "lswloop_v1");
    for round in 1..=rounds {
        for v in [2, 1] {
            assert_committed(&json_in(out, &format!("swap{round}-{v}")));
            let facts = facts_of(out, &format!("devices{round}-{v}"), "lswloop0");
            assert_eq!(facts["impl"], format!("lswloop_v{v}"));
            assert_eq!(facts["backing"], "disk0.img");
            assert_eq!(facts["size"], "268435456");
            assert_eq!(facts["flags"], "0");
            for key in ["reads", "writes"] {
                assert!(
                    number(&facts, key) >= number(&previous, key),
                    "{key} went back: {previous:?} -> {facts:?}"
                );
            }
            if v == 2 {
                // v2 represents the mapping as an extent map.
                assert_eq!(facts["extents"], "1");
                assert_eq!(facts["errors"], "0");
            } else {
                assert_eq!(facts["offset"], "0");
            }
            previous = facts;
        }
    }
}

#[test]
fn swapping_one_device_leaves_the_other_serving_on_v1() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
add disk1 64
fio --filename=/dev/lswloop1 --size=32M --bs=4k --rw=randwrite --verify=crc32c --verify_backlog=64 \
    --verify_fatal=1 --direct=1 --ioengine=psync --time_based --runtime=12 --name=other > /tmp/fio.txt 2>&1 &
fio=$!
sleep 2
# Requests of lswloop1 sleep inside lswloop_v1 during the swap of lswloop0:
# the stack check reads that thread (whether the scan before the gate or
# the switch program found it) and its frames are the counters' own.
echo 200 > /sys/module/lswloop_v1/parameters/stall_ms
sleep 0.5
echo "== swap"; loopswap swap lswloop0 --to /modules/lswloop_v2.ko --json
echo 0 > /sys/module/lswloop_v1/parameters/stall_ms
echo "== during"; kill -0 $fio && echo fio-running
echo "== fio"; if wait $fio; then echo ok; else echo failed; cat /tmp/fio.txt; fi
echo "== status"; loopswap status --json
echo "== modules"; cut -d' ' -f1 /proc/modules | grep lswloop_ | sort
echo "== end"
"#
    ));
    let out = &outcome.output;
    let report = json_in(out, "swap");
    assert_committed(&report);
    // At least fio's thread, asleep inside lswloop_v1 for lswloop1.
    assert!(
        report["instances"][0]["stack_check"]["tasks_read"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "{report}"
    );
    assert_eq!(
        report["unloaded"],
        serde_json::json!([]),
        "v1 still serves lswloop1: {report}"
    );
    assert_eq!(
        section(out, "during"),
        ["fio-running"],
        "the swap must happen under load"
    );
    assert_eq!(section(out, "fio"), ["ok"]);
    let status = json_in(out, "status");
    let implementation = |name: &str| {
        status["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .unwrap()["implementation"]
            .clone()
    };
    assert_eq!(implementation("lswloop0"), "lswloop_v2");
    assert_eq!(implementation("lswloop1"), "lswloop_v1");
    assert_eq!(section(out, "modules"), ["lswloop_v1", "lswloop_v2"]);
}

#[test]
fn a_request_held_past_the_timeout_aborts_and_nothing_is_lost() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/lswloop0 bs=1M oflag=direct 2>/dev/null
echo 8000 > /sys/module/lswloop_v1/parameters/stall_ms
dd if=/dev/lswloop0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
held=$!
sleep 0.5
echo "== swap"
if loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 1s --force-wait --json 2>/tmp/err; then
    echo status=0
else
    echo "status=$?"
fi
echo "== stderr"; cat /tmp/err
echo 0 > /sys/module/lswloop_v1/parameters/stall_ms
echo "== held"; if wait $held; then echo ok; else echo failed; fi
echo "== status"; loopswap status --json
echo "== modules"; cut -d' ' -f1 /proc/modules | grep lswloop_ | sort
echo "== readback"; dd if=/dev/lswloop0 bs=1M count=4 iflag=direct 2>/dev/null | cmp - /tmp/pattern && echo same
echo "== swap2"; loopswap swap lswloop0 --to /modules/lswloop_v2.ko --json
echo "== end"
"#
    ));
    let out = &outcome.output;
    let swap = section(out, "swap");
    let report: Value = serde_json::from_str(swap[0]).unwrap();
    let instance = &report["instances"][0];
    assert_eq!(instance["committed"], false, "{report}");
    assert!(
        instance["error"]
            .as_str()
            .unwrap()
            .contains("did not become quiescent"),
        "{report}"
    );
    assert!(
        instance["busy_functions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "lswloop_v1_queue_rq"),
        "{report}"
    );
    let holders = instance["holders"].as_array().unwrap();
    assert!(
        holders.iter().any(|h| h["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().contains("lswloop_v1_queue_rq"))),
        "{report}"
    );
    assert_eq!(swap[1], "status=1");
    let stderr = section(out, "stderr");
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    assert!(
        stderr[0].contains("swap of lswloop0 aborted, lswloop_v1 resumed"),
        "{stderr:?}"
    );
    assert_eq!(section(out, "held"), ["ok"], "the held request must complete");
    let status = json_in(out, "status");
    let instance = &status["instances"][0];
    assert_eq!(instance["implementation"], "lswloop_v1");
    assert_eq!(instance["gate"], "open");
    assert_eq!(instance["swap"], Value::Null);
    assert_eq!(
        section(out, "modules"),
        ["lswloop_v1"],
        "the swap unloads what it loaded"
    );
    assert_eq!(section(out, "readback"), ["same"]);
    assert_committed(&json_in(out, "swap2"));
}

#[test]
fn a_controller_killed_mid_swap_is_aborted_by_the_core() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
fio --filename=/dev/lswloop0 --size=32M --bs=4k --rw=randwrite --verify=crc32c --verify_backlog=64 \
    --verify_fatal=1 --direct=1 --ioengine=psync --time_based --runtime=15 --name=load > /tmp/fio.txt 2>&1 &
fio=$!
sleep 1
loopswap swap lswloop0 --to /modules/lswloop_v2.ko --test-pause-after gate > /tmp/swap.txt 2>&1 &
swap=$!
until loopswap status | grep -q 'gated:lswloop_v2'; do sleep 0.2; done
echo "== during"; loopswap status --json
kill -9 $swap
wait $swap || true
echo "== after"; loopswap status --json
sleep 2
echo "== swap2"; loopswap swap lswloop0 --to lswloop_v2 --json
echo "== fio"; if wait $fio; then echo ok; else echo failed; cat /tmp/fio.txt; fi
echo "== end"
"#
    ));
    let out = &outcome.output;
    let during = &json_in(out, "during")["instances"][0];
    assert_eq!(during["gate"], "closed");
    assert_eq!(during["swap"], "gated:lswloop_v2");
    let after = &json_in(out, "after")["instances"][0];
    assert_eq!(after["gate"], "open");
    assert_eq!(after["swap"], Value::Null);
    assert_eq!(after["implementation"], "lswloop_v1");
    assert_committed(&json_in(out, "swap2"));
    assert_eq!(section(out, "fio"), ["ok"]);
}

#[test]
fn the_gate_is_held_at_real_time_priority_and_only_while_closed() {
    // The policy (field 41 of /proc/PID/stat: 0 ordinary, 1 SCHED_FIFO)
    // and real-time priority (field 40) of the swap's thread, paused after
    // attach (gate open), after closing the gate, and after the commit
    // (gate open again); and, closed, with the benchmarks' control switch
    // that keeps the ordinary priority.
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
insmod /modules/lswloop_v2.ko
policy() {{ awk '{{ print "policy=" $41 " priority=" $40 }}' /proc/$1/task/$1/stat; }}
paused() {{
    loopswap swap lswloop0 --to $1 --keep-old --json --test-pause-after $2:2s $3 > /tmp/out 2> /tmp/err &
    swap=$!
    until grep -q "pausing after $2" /tmp/err; do usleep 20000; done
    echo "== $2$3"; policy $swap
    wait $swap
    echo "== $2$3 report"; cat /tmp/out
}}
paused lswloop_v2 attach
paused lswloop_v1 gate
paused lswloop_v2 gate --ordinary-priority
paused lswloop_v1 commit
echo "== end"
"#
    ));
    let out = &outcome.output;
    assert_eq!(section(out, "attach"), ["policy=0 priority=0"], "{out}");
    assert_eq!(section(out, "gate"), ["policy=1 priority=1"], "{out}");
    assert_eq!(
        section(out, "gate--ordinary-priority"),
        ["policy=0 priority=0"],
        "{out}"
    );
    // After the commit opened the gate: ordinary again.
    assert_eq!(section(out, "commit"), ["policy=0 priority=0"], "{out}");
    for (name, realtime) in [
        ("attach", true),
        ("gate", true),
        ("gate--ordinary-priority", false),
        ("commit", true),
    ] {
        let report = json_in(out, &format!("{name} report"));
        assert_committed(&report);
        assert_eq!(report["instances"][0]["realtime_gate"], realtime, "{report}");
    }
}

#[test]
fn runs_the_kernel_skipped_are_absorbed_without_a_new_attach() {
    // lswloop_v2's sampler timer calls into the module every 100 ms. While
    // the swap pauses after attaching, `loopswap test-busy-bpf` keeps every
    // CPU in BPF map syscalls, during which the kernel skips the counting
    // program when the timer fires on top of one: probe misses, as under
    // load. The first attempt is refused for them; the next absorbs them
    // (a grace period and a stack scan) with the same probes, and commits.
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/lswloop0 bs=1M oflag=direct 2>/dev/null
insmod /modules/lswloop_v2.ko
loopswap swap lswloop0 --to lswloop_v2 --keep-old > /dev/null
set +e
loopswap swap lswloop0 --to lswloop_v1 --keep-old --json --test-pause-after attach:5s > /tmp/out 2> /tmp/err &
swap=$!
until grep -q 'pausing after attach' /tmp/err; do usleep 20000; done
loopswap test-busy-bpf 2s
echo "== busy"; echo "status=$?"
wait $swap; status=$?
echo "== status"; echo "status=$status"
echo "== report"; cat /tmp/out
echo "== after"; loopswap status --json
echo "== readback"; dd if=/dev/lswloop0 bs=1M count=4 iflag=direct 2>/dev/null | cmp - /tmp/pattern && echo same
echo "== end"
"#
    ));
    let out = &outcome.output;
    assert_eq!(section(out, "busy"), ["status=0"], "{out}");
    assert_eq!(section(out, "status"), ["status=0"], "{out}");
    let report = json_in(out, "report");
    assert_committed(&report);
    let instance = &report["instances"][0];
    assert!(
        instance["attempts"].as_u64().unwrap() >= 2,
        "no attempt was refused for misses: {report}"
    );
    assert!(
        instance["skipped_runs_absorbed"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert!(
        !has_phase(instance, "attach"),
        "the committing attempt attached probes again: {report}"
    );
    let after = json_in(out, "after");
    assert_eq!(after["instances"][0]["implementation"], "lswloop_v1");
    assert_eq!(section(out, "readback"), ["same"]);
}

#[test]
fn a_transfer_refused_after_quiescence_blames_no_thread_and_resumes_the_old_implementation() {
    // lswloop_v2 refuses the state (its `fail_import` knob). While the
    // swap of lswloop0 pauses after attaching, a read of lswloop1 enters
    // lswloop_v1 and stalls there: a frame serving another instance,
    // which the swap of lswloop0 does not wait for. Once quiescence of
    // lswloop0 is proven, nothing held the swap up, so its abort names no
    // function in flight and no thread (it used to list that read, after
    // reading every task's stack with the gate closed).
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
add disk1 64
dd if=/dev/urandom of=/tmp/pattern bs=1M count=4 2>/dev/null
dd if=/tmp/pattern of=/dev/lswloop0 bs=1M oflag=direct 2>/dev/null
insmod /modules/lswloop_v2.ko
echo 1 > /sys/module/lswloop_v2/parameters/fail_import
set +e
loopswap swap lswloop0 --to lswloop_v2 --json --test-pause-after attach:2s > /tmp/out 2> /tmp/err &
swap=$!
until grep -q 'pausing after attach' /tmp/err; do usleep 50000; done
echo 10000 > /sys/module/lswloop_v1/parameters/stall_ms
dd if=/dev/lswloop1 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
held=$!
# The read takes the stall when it enters: once it is inside, the knob
# goes back to 0 for every later request.
for i in $(seq 200); do grep -q lswloop_v1 /proc/$held/stack 2>/dev/null && break; usleep 20000; done
echo 0 > /sys/module/lswloop_v1/parameters/stall_ms
wait $swap; status=$?
echo "== inside"; grep -q lswloop_v1_queue_rq /proc/$held/stack && echo "still inside"
echo "== status"; echo "status=$status"
echo "== report"; cat /tmp/out
echo "== stderr"; grep -v pausing /tmp/err
echo "== after"; loopswap status --json
echo "== readback"; dd if=/dev/lswloop0 bs=1M count=4 iflag=direct 2>/dev/null | cmp - /tmp/pattern && echo same
echo "== held"; if wait $held; then echo ok; else echo failed; fi
echo "== end"
"#
    ));
    let out = &outcome.output;
    assert_eq!(
        section(out, "inside"),
        ["still inside"],
        "the read of lswloop1 was inside throughout the swap: {out}"
    );
    assert_eq!(section(out, "status"), ["status=1"], "{out}");
    let report = json_in(out, "report");
    let instance = &report["instances"][0];
    assert_eq!(instance["gated"], true, "{report}");
    assert_eq!(instance["committed"], false, "{report}");
    let error = instance["error"].as_str().unwrap();
    assert!(error.contains("could not import state"), "{error}");
    assert!(
        has_phase(instance, "wait+confirm"),
        "quiescence was proven before the transfer: {report}"
    );
    assert_eq!(instance["busy_functions"], serde_json::json!([]), "{report}");
    assert_eq!(instance["holders"], serde_json::json!([]), "{report}");
    let stderr = section(out, "stderr").join("\n");
    assert!(stderr.contains("aborted, lswloop_v1 resumed"), "{stderr}");
    let after = json_in(out, "after");
    assert_eq!(after["instances"][0]["implementation"], "lswloop_v1");
    assert_eq!(after["instances"][0]["gate"], "open");
    assert_eq!(section(out, "readback"), ["same"]);
    assert_eq!(section(out, "held"), ["ok"]);
}

#[test]
fn a_swap_estimated_to_outlast_its_timeout_is_refused_before_the_gate_closes() {
    // The swap pauses 4 s after attaching its counters; meanwhile a read
    // enters lswloop_v1 and stalls there for 8 s. Before the gate closes
    // the swap sees a thread inside for about 3.5 s with no call of that
    // function ever returning sooner: quiescence within 1 s is unlikely.
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
set +e
loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 1s --json \
    --test-pause-after attach:4s > /tmp/out 2> /tmp/err &
swap=$!
until grep -q 'pausing after attach' /tmp/err; do usleep 50000; done
echo 8000 > /sys/module/lswloop_v1/parameters/stall_ms
dd if=/dev/lswloop0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
held=$!
wait $swap; status=$?
echo "== status"; echo "status=$status"
echo "== report"; cat /tmp/out
echo "== stderr"; grep -v pausing /tmp/err
echo "== after"; loopswap status --json
echo "== modules"; cut -d' ' -f1 /proc/modules | grep lswloop_ | sort
echo 0 > /sys/module/lswloop_v1/parameters/stall_ms
echo "== held"; if wait $held; then echo ok; else echo failed; fi
echo "== end"
"#
    ));
    let out = &outcome.output;
    assert_eq!(section(out, "status"), ["status=1"], "{out}");
    let report = json_in(out, "report");
    let instance = &report["instances"][0];
    assert_eq!(instance["gated"], false, "the gate never closed: {report}");
    let estimate = &instance["quiescent_in"];
    assert!(estimate["ns"].as_u64().unwrap() > 1_000_000_000, "{report}");
    assert!(
        estimate["held_by"]
            .as_str()
            .unwrap()
            .starts_with("lswloop_v1_queue_rq: thread "),
        "{report}"
    );
    let error = instance["error"].as_str().unwrap();
    assert!(error.contains("beyond --timeout 1s"), "{error}");
    assert!(error.contains("--force-wait"), "{error}");
    let stderr = section(out, "stderr").join("\n");
    assert!(
        stderr.contains("swap of lswloop0 not started, nothing changed"),
        "{stderr}"
    );
    let after = json_in(out, "after");
    assert_eq!(after["instances"][0]["implementation"], "lswloop_v1");
    assert_eq!(after["instances"][0]["gate"], "open");
    assert_eq!(section(out, "modules"), ["lswloop_v1"], "NEW unloaded: {out}");
    assert_eq!(section(out, "held"), ["ok"]);
}

#[test]
fn a_thread_stalled_inside_is_waited_out_with_the_gate_open() {
    // A read of lswloop0 sleeps 8 s (twice) inside lswloop_v1 from
    // before the counters attach, while reads of lswloop1 keep calls of
    // the same function returning in microseconds: the stalled thread is
    // overdue, so the swap waits for it with the gate open, and the
    // blackout does not include its stall. First SIGINT during that wait
    // (nothing changed), then the wait to its end.
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
add disk1 64
set +e
stall=/sys/module/lswloop_v1/parameters/stall_ms
# The stall knob is the module's: the reads of lswloop1 pause meanwhile.
stalled_read() {{
    if [ -n "$reader" ]; then touch /tmp/stop; wait $reader; rm /tmp/stop; fi
    echo $1 > $stall
    dd if=/dev/lswloop0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
    held=$!
    # Inside the stall (dispatched from dd's own context), however slow
    # the machine: only then may later reads go on unstalled.
    n=0
    until grep -q lswloop_v1_queue_rq /proc/$held/stack 2>/dev/null || [ $n -ge 250 ]; do
        usleep 20000; n=$((n + 1))
    done
    echo 0 > $stall
    (while [ ! -e /tmp/stop ]; do dd if=/dev/lswloop1 of=/dev/null bs=4k count=256 iflag=direct 2>/dev/null; done) &
    reader=$!
    sleep 0.2
}}
reader=
stalled_read 8000
loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 20s > /tmp/swap.txt 2>&1 &
swap=$!
until grep -q 'waiting with the gate open' /tmp/swap.txt || ! kill -0 $swap 2>/dev/null; do usleep 50000; done
echo "== gate"; loopswap status --json
kill -INT $swap
wait $swap; rc=$?; echo "== interrupted"; echo "status=$rc"
echo "== report"; cat /tmp/swap.txt
echo "== modules"; cut -d' ' -f1 /proc/modules | grep lswloop_ | sort
echo "== refused"
loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 1s --json 2> /tmp/err; echo "status=$?"
cat /tmp/err
wait $held; rc=$?; echo "== held"; echo "status=$rc"
stalled_read 8000
echo "== stalled"; echo "thread $held"
echo "== swap"; loopswap swap lswloop0 --to /modules/lswloop_v2.ko --timeout 20s --json
echo "status=$?"
wait $held; rc=$?; echo "== held2"; echo "status=$rc"
touch /tmp/stop; wait $reader
echo "== end"
"#
    ));
    let out = &outcome.output;
    // SIGINT while waiting it out: the gate never closed, nothing changed.
    let gate = json_in(out, "gate");
    assert_eq!(gate["instances"][0]["gate"], "open", "{gate}");
    assert_eq!(gate["instances"][0]["swap"], Value::Null, "{gate}");
    assert_eq!(section(out, "interrupted"), ["status=1"], "{out}");
    let report = section(out, "report").join("\n");
    assert!(report.contains("waiting with the gate open"), "{report}");
    assert!(report.contains("interrupted before the gate closed"), "{report}");
    assert!(
        report.contains("REFUSED before the gate closed, nothing changed"),
        "{report}"
    );
    assert_eq!(
        section(out, "modules"),
        ["lswloop_v1"],
        "the swap unloads what it loaded: {out}"
    );
    // Still inside after --timeout with the gate open: refused, unchanged.
    let refused = section(out, "refused");
    let report: Value = serde_json::from_str(refused[0]).unwrap();
    assert_eq!(refused[1], "status=1", "{report}");
    assert_eq!(report["instances"][0]["gated"], false, "{report}");
    assert!(
        refused[2].contains("not started, nothing changed")
            && refused[2].contains("was still inside after waiting 1s with the gate open"),
        "{refused:?}"
    );
    assert_eq!(section(out, "held"), ["status=0"], "{out}");

    // The stalled read's own thread, not a reader of lswloop1.
    let report = committed_after_waiting_out_the_stalled_read(out);
    let instance = &report["instances"][0];
    assert!(has_phase(instance, "wait out"), "{report}");
    // Had the gate closed at once, the blackout would include the rest of
    // the 8 s stall (over 5 s): the gate closed after the thread left.
    assert!(instance["blackout_us"].as_u64().unwrap() < 1_000_000, "{report}");
    assert_eq!(section(out, "held2"), ["status=0"], "{out}");
}

#[test]
fn a_call_inside_since_before_attach_is_waited_out_even_when_no_call_of_its_function_returns() {
    // A read of lswloop0 sleeps 4 s inside lswloop_v1 from before the
    // counters attach, and no other call of that function runs: nothing
    // is known of how long its calls take, but the wait inside the gate
    // would wait for this one anyway (its instance is unknown), so the
    // swap of lswloop1 waits for it with the gate open. Before this was
    // so, the gate closed at once and the blackout took the rest of the
    // stall (1.5 s of a 3 s stall in the VM).
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 16
add disk1 16
set +e
echo 4000 > /sys/module/lswloop_v1/parameters/stall_ms
dd if=/dev/lswloop0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
held=$!
n=0
until grep -q lswloop_v1_queue_rq /proc/$held/stack 2>/dev/null || [ $n -ge 250 ]; do
    usleep 20000; n=$((n + 1))
done
echo 0 > /sys/module/lswloop_v1/parameters/stall_ms
echo "== stalled"; echo "thread $held"
echo "== swap"; loopswap swap lswloop1 --to /modules/lswloop_v2.ko --timeout 20s --json
echo "status=$?"
wait $held; rc=$?; echo "== held"; echo "status=$rc"
"#
    ));
    let out = &outcome.output;
    let report = committed_after_waiting_out_the_stalled_read(out);
    let instance = &report["instances"][0];
    assert!(instance["blackout_us"].as_u64().unwrap() < 1_000_000, "{report}");
    assert_eq!(section(out, "held"), ["status=0"], "{out}");
}

/// The report in section `swap` (followed by `status=0`): committed, after
/// waiting with the gate open for the thread named in section `stalled`
/// (`thread PID`), inside `lswloop_v1_queue_rq` since before attach.
fn committed_after_waiting_out_the_stalled_read(out: &str) -> Value {
    let swap = section(out, "swap");
    let report: Value = serde_json::from_str(swap[0]).unwrap();
    assert_eq!(swap[1], "status=0", "{report}");
    assert_committed(&report);
    let stalled = section(out, "stalled");
    let waited = report["instances"][0]["waited_out"].as_str().unwrap_or_default();
    assert!(
        waited.starts_with(&format!(
            "lswloop_v1_queue_rq: {} inside since before attach",
            stalled[0]
        )),
        "{stalled:?} {report}"
    );
    report
}
