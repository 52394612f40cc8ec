//! Time in flight and the live view of `loopswap watch`, in the VM: the
//! histograms the probes keep, the quiescence estimate, and the full-screen
//! view driven through a pseudo-terminal (tests/pty-run) and read back with
//! a terminal emulator (vt100).

use serde_json::Value;
use tests::{LSWLOOP_SETUP, run_ok, section, snapshots};

/// The function's entry in a snapshot.
fn function<'a>(snapshot: &'a Value, name: &str) -> &'a Value {
    snapshot["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {snapshot}"))
}

/// The bytes `od -An -v -tx1` printed.
fn bytes_of(hex: &[&str]) -> Vec<u8> {
    hex.iter()
        .flat_map(|line| line.split_whitespace())
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

/// What the terminal (120x40, as pty-run opens it) shows after `output`.
fn screen_after(output: &[u8]) -> String {
    let mut parser = vt100::Parser::new(40, 120, 0);
    parser.process(output);
    parser.screen().contents()
}

/// Where `needle` first (or, with `last`, last) occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8], last: bool) -> Option<usize> {
    let mut hits = haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle);
    if last { hits.next_back() } else { hits.next() }.map(|(at, _)| at)
}

#[test]
fn time_in_flight_is_measured_per_function_and_instance_and_estimates_quiescence() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
stall=/sys/module/lswloop_v1/parameters/stall_ms
loopswap watch --json --interval 300ms lswloop_v1 > /tmp/watch.json &
watch=$!
until [ -s /tmp/watch.json ]; do usleep 100000; done
echo 200 > $stall
dd if=/dev/lswloop0 of=/dev/null bs=4k count=5 iflag=direct 2>/dev/null
echo 2500 > $stall
dd if=/dev/lswloop0 of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
held=$!
sleep 1.5
: > /tmp/watch.json
sleep 0.7
echo "== during"; cat /tmp/watch.json
wait $held
echo 0 > $stall
sleep 0.7
kill -TERM $watch; wait $watch
echo "== after"; tail -1 /tmp/watch.json
echo "== end"
"#
    ));
    let out = &outcome.output;
    // While a read is stalled inside: the estimate names it.
    let during = snapshots(out, "during");
    let last = during
        .last()
        .unwrap_or_else(|| panic!("no snapshot while stalled: {out}"));
    let estimate = &last["quiescent_in"];
    assert!(estimate["ns"].as_u64().unwrap() > 0, "{last}");
    assert!(
        estimate["held_by"]
            .as_str()
            .unwrap()
            .starts_with("lswloop_v1_queue_rq: thread "),
        "{last}"
    );
    let instance = &last["instances"][0];
    assert_eq!(instance["id"], 0, "{last}");
    assert!(instance["quiescent_in"]["ns"].as_u64().unwrap() > 0, "{last}");

    // Afterwards: five reads of at least 200 ms and one of 2.5 s.
    let after = &snapshots(out, "after")[0];
    let times = &function(after, "lswloop_v1_queue_rq")["time_in_flight"];
    assert!(times["calls"].as_u64().unwrap() >= 6, "{after}");
    let slow_bucket = 27; // 200 ms is in [2^27, 2^28) ns
    assert!(
        times["histogram_log2_ns"][slow_bucket].as_u64().unwrap() >= 5,
        "{after}"
    );
    assert!(
        times["histogram_log2_ns"][31].as_u64().unwrap() >= 1,
        "2.5 s: {after}"
    );
    assert!(times["p50_ns"].as_u64().unwrap() >= 1 << 27, "{after}");
    let max = times["max_ns"].as_u64().unwrap();
    assert!((2_500_000_000..10_000_000_000).contains(&max), "{after}");
    let served = &after["instances"][0]["time_in_flight"];
    assert!(served["calls"].as_u64().unwrap() >= 6, "{after}");
    assert_eq!(after["quiescent_in"]["ns"], 0, "nothing inside any more: {after}");
    assert_eq!(after["quiescent_in"]["held_by"], Value::Null, "{after}");
}

#[test]
fn the_live_view_draws_updates_sorts_pauses_and_quits_detaching_every_probe() {
    let outcome = run_ok(&format!(
        r#"{LSWLOOP_SETUP}
add disk0 64
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
refs() {{ grep '^lswloop_v1 ' /proc/modules | cut -d' ' -f3; }}
echo "== refs-before"; refs
(sleep 4; refs > /tmp/refs.during) &
(while true; do dd if=/dev/lswloop0 of=/dev/null bs=4k count=16 iflag=direct 2>/dev/null; done) &
load=$!
echo "== pty"; pty-run /tmp/tty.out "until=detaches,2s:s,1s:p,2s:p,2s:q" loopswap watch --interval 300ms lswloop_v1
kill $load
echo "== refs-during"; cat /tmp/refs.during
echo "== refs-after"; refs
echo "== events"; grep -c . /sys/kernel/tracing/kprobe_events || true
echo "== screen"; od -An -v -tx1 /tmp/tty.out
echo "== end"
"#
    ));
    let out = &outcome.output;
    assert_eq!(section(out, "pty"), ["pty-run: loopswap exited with 0"], "{out}");
    let before: u32 = section(out, "refs-before")[0].parse().unwrap();
    let during: u32 = section(out, "refs-during")[0].parse().unwrap();
    assert!(
        during > before,
        "the links hold the module while it is watched: {out}"
    );
    assert_eq!(
        section(out, "refs-after"),
        [before.to_string()],
        "every probe detached: {out}"
    );
    assert_eq!(section(out, "events"), ["0"], "{out}");

    let recording = bytes_of(&section(out, "screen"));
    let text = || String::from_utf8_lossy(&recording).into_owned();
    // The first frame: everything up to the last word of its last line
    // (words, not lines: cells that stay blank are skipped, not written).
    let footer = b"column";
    let first_end = find(&recording, footer, false).unwrap_or_else(|| panic!("never drew: {:?}", text()));
    let first = screen_after(&recording[..first_end + footer.len()]);
    assert!(first.contains("loopswap watch lswloop_v1"), "{first}");
    assert!(first.contains("sorted by in flight"), "{first}");
    assert!(first.contains("FUNCTION"), "{first}");
    assert!(first.contains("QUIESCENT IN"), "the instance table: {first}");
    assert!(first.contains("lswloop0"), "instances by name: {first}");
    // The last frame: everything before it left the alternate screen.
    let leave = find(&recording, b"\x1b[?1049l", true).unwrap_or_else(|| panic!("never left: {:?}", text()));
    assert!(leave > first_end, "{:?}", text());
    let last = screen_after(&recording[..leave]);
    assert!(last.contains("sorted by calls/s"), "s changed the sort: {last}");
    assert!(last.contains("lswloop_v1_queue_rq"), "{last}");
    assert!(!last.contains("PAUSED"), "p again resumed: {last}");
    assert!(
        (first_end..leave)
            .step_by(64)
            .any(|at| screen_after(&recording[..at]).contains("PAUSED")),
        "p paused: {:?}",
        text()
    );
    // The header counts refreshes: it updated several times (every
    // 300 ms for about 7 s, less the 2 s paused).
    let refreshes = |screen: &str| -> u32 {
        let at = screen.find("refresh ").expect("a refresh count") + "refresh ".len();
        screen[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(refreshes(&last) >= refreshes(&first) + 5, "{first}\n---\n{last}");
}
