//! `cargo xtask bench`: measurements taken side by side in one VM run.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use xtask::vm;

#[derive(Debug, Subcommand)]
pub enum Which {
    /// Calls per second of an empty module function called in a tight loop
    /// from kernel threads: with no probes, with loopswap's counters
    /// (`loopswap watch`, every function of the module probed) with and
    /// without the time-in-flight timestamps and histograms, with a plain
    /// kprobe+kretprobe pair running empty programs, with an empty
    /// kprobe.multi pair, and with an empty kprobe.session link (the
    /// counters' mechanism). Rounds alternate between the six so drift
    /// hits all of them alike.
    Probes {
        /// Rounds per configuration (the median is reported).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Milliseconds per measurement.
        #[arg(long, default_value_t = 2000)]
        millis: u32,
        /// Kernel threads calling the function (the VM has 2 CPUs).
        #[arg(long, default_value_t = 2)]
        threads: u32,
    },
    /// Blackout (gate closed -> open) of `loopswap swap` on lswloop0 while
    /// fio writes to ext4 on it (direct and buffered jobs), alternating
    /// v1 -> v2 -> v1, against fio's own latency without swaps, the slowest
    /// I/O in gate windows against control windows, IOPS while probes
    /// attach and detach against before, against a busy process and
    /// against an empty kprobe.session link on the same functions (the
    /// floor), IOPS with the counters attached against after, a livepatch
    /// transition of
    /// lswloop_v1_queue_rq idle and under the same load, a naive module
    /// reload, and idle swaps with 0 / 250 / 2,000 extra threads. Writes
    /// target/bench/swap.json and two SVG pictures beside it.
    Swap {
        /// Number of swaps.
        #[arg(long, default_value_t = 20)]
        swaps: u32,
    },
}

fn probes_script(rounds: u32, millis: u32, threads: u32) -> String {
    format!(
        r#"set -e
insmod /modules/lsw_fixture.ko
ctl=/sys/kernel/debug/lsw_fixture/control
measure() {{
    echo "bench {threads} {millis}" > $ctl
    echo "BENCH $1 $(grep bench_calls /sys/kernel/debug/lsw_fixture/status | cut -d' ' -f2) $(grep bench_ns /sys/kernel/debug/lsw_fixture/status | cut -d' ' -f2)"
}}
wait_for_line() {{ while [ ! -s "$1" ]; do sleep 0.1; done; }}
for round in $(seq {rounds}); do
    measure none
    loopswap watch --json --interval 1h lsw_fixture > /tmp/watch.json &
    pid=$!
    wait_for_line /tmp/watch.json
    measure loopswap
    kill -TERM $pid; wait $pid
    grep -q '"missed":0' /tmp/watch.json
    rm /tmp/watch.json
    loopswap watch --json --interval 1h --no-time-in-flight lsw_fixture > /tmp/watch.json &
    pid=$!
    wait_for_line /tmp/watch.json
    measure loopswap-untimed
    kill -TERM $pid; wait $pid
    grep -q '"missed":0' /tmp/watch.json
    rm /tmp/watch.json
    loopswap bench-probe lsw_fixture lsw_fixture_nop > /tmp/probe.txt &
    pid=$!
    wait_for_line /tmp/probe.txt
    measure kprobe-pair
    kill -TERM $pid; wait $pid
    rm /tmp/probe.txt
    loopswap bench-probe --multi lsw_fixture lsw_fixture_nop > /tmp/probe.txt &
    pid=$!
    wait_for_line /tmp/probe.txt
    measure multi-pair
    kill -TERM $pid; wait $pid
    rm /tmp/probe.txt
    loopswap bench-probe --session lsw_fixture lsw_fixture_nop > /tmp/probe.txt &
    pid=$!
    wait_for_line /tmp/probe.txt
    measure session
    kill -TERM $pid; wait $pid
    rm /tmp/probe.txt
done
rmmod lsw_fixture
"#
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

pub fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Probes {
            rounds,
            millis,
            threads,
        } => probes(rounds, millis, threads),
        Which::Swap { swaps } => swap(swaps),
    }
}

fn swap_script(swaps: u32) -> String {
    format!(
        r#"{setup}
add disk0 256
insmod /modules/lswloop_v2.ko
mkfs.ext4 -q /dev/lswloop0
mount -t ext4 /dev/lswloop0 /mnt
jobs="--directory=/mnt --size=16M --bs=4k --rw=randwrite --ioengine=psync --time_based"
now() {{ sed -n 's/^now at \([0-9]*\) nsecs$/\1/p' /proc/timer_list | head -1; }}
# The workload's own latency, without swaps.
fio $jobs --runtime={quiet} --name=direct --direct=1 --name=buffered --direct=0 \
    --output-format=json > /tmp/quiet.json
echo "QUIET $(tr -d '\n' < /tmp/quiet.json)"
# A livepatch of lswloop_v1_queue_rq (the device runs lswloop_v1): its
# transition, from insmod until every task runs the new function, then
# back (disabled) until no task runs it; $2 rounds.
lp=/sys/kernel/livepatch/lswloop_v1_livepatch
livepatch() {{
    for round in $(seq $2); do
        t0=$(now)
        insmod /modules/lswloop_v1_livepatch.ko
        while [ "$(cat $lp/transition)" != 0 ]; do sleep 0.01; done
        t1=$(now)
        echo 0 > $lp/enabled
        while [ -e $lp/transition ] && [ "$(cat $lp/transition)" != 0 ]; do sleep 0.01; done
        t2=$(now)
        rmmod lswloop_v1_livepatch
        echo "LIVEPATCH $1 $((t1 - t0)) $((t2 - t1))"
    done
}}
livepatch idle 3
# The same workload with swaps: the direct job logs its worst I/O latency
# per 10 ms (Unix epoch ms), first {control} s without swaps (the control
# windows), then across the swaps.
fio $jobs --runtime=3600 --name=direct --direct=1 --write_lat_log=/tmp/lat --log_avg_msec=10 \
    --log_max_value=1 --log_unix_epoch=1 --write_iops_log=/tmp/iops \
    --name=buffered --direct=0 > /tmp/fio.txt 2>&1 &
fio=$!
sleep {control}
for i in $(seq {swaps}); do
    if [ $((i % 2)) = 1 ]; then to=lswloop_v2; else to=lswloop_v1; fi
    kill -0 $fio
    # The report, and the process's whole life (with --keep-old the probes
    # detach after the report).
    t0=$(now)
    report=$(loopswap swap lswloop0 --to $to --keep-old --json)
    t1=$(now)
    echo "SWAP $((t1 - t0)) $report"
done
# The control for the IOPS while probes attach: one CPU-bound process for
# about as long as an attach under this load, 5 times (this VM's vCPUs
# share one host thread, so any busy process takes from fio).
epoch_us() {{ adjtimex | awk '/tv_sec/ {{ s = $2 }} /tv_usec/ {{ u = $2 }} END {{ printf "%d%06d\n", s, u }}'; }}
for i in 1 2 3 4 5; do
    sleep 1
    from=$(epoch_us)
    timeout 1 sh -c 'while :; do :; done' || true
    echo "BUSY $from $(epoch_us)"
done
# The floor of the probes' collateral cost: an empty kprobe.session link
# on every function of the module the next swap would probe (the device's
# implementation), attached and detached 5 times by a process that does
# nothing else (no counting, no stack scans, no gate).
impl=$(sed -n 's/^lswloop0 .*impl=\([a-z0-9_]*\).*/\1/p' /sys/kernel/lswloop/devices)
for i in 1 2 3 4 5; do
    sleep 1
    from=$(epoch_us)
    rm -f /tmp/probe.txt
    loopswap bench-probe --session $impl > /tmp/probe.txt &
    probe=$!
    until grep -q attached /tmp/probe.txt; do usleep 10000; done
    kill -TERM $probe
    wait $probe
    echo "EMPTYLINK $from $(epoch_us)"
done
# The counters' steady cost: 4 s with `loopswap watch` attached (from 1 s
# after its first snapshot) against the 4 s that follow its detach (from
# 1 s after it), and the same with the empty link held instead (the
# mechanism alone), 3 times in turn.
for i in 1 2 3; do
    rm -f /tmp/probe.txt
    loopswap bench-probe --session $impl > /tmp/probe.txt &
    probe=$!
    until grep -q attached /tmp/probe.txt; do usleep 10000; done
    sleep 1
    from=$(epoch_us)
    sleep 4
    echo "LINKHELD $from $(epoch_us)"
    kill -TERM $probe
    wait $probe
    sleep 1
    rm -f /tmp/watch.json
    loopswap watch --json --interval 1h $impl > /tmp/watch.json &
    watch=$!
    while [ ! -s /tmp/watch.json ]; do usleep 10000; done
    sleep 1
    from=$(epoch_us)
    sleep 4
    echo "WATCHED $from $(epoch_us)"
    kill -TERM $watch
    wait $watch
    sleep 1
    from=$(epoch_us)
    sleep 4
    echo "UNWATCHED $from $(epoch_us)"
done
kill -INT $fio
wait $fio || true
sed 's/^/LAT /' /tmp/lat_clat.1.log
sed 's/^/IOPS /' /tmp/iops_iops.1.log
# The livepatch again, under the same load, with the device on lswloop_v1.
if ! grep -q '^lswloop0 .*impl=lswloop_v1 ' /sys/kernel/lswloop/devices; then
    loopswap swap lswloop0 --to lswloop_v1 --keep-old > /dev/null
fi
fio $jobs --runtime=3600 --name=direct --direct=1 --name=buffered --direct=0 > /dev/null 2>&1 &
fio=$!
sleep 3
livepatch load 2
kill -INT $fio
wait $fio || true
# The alternative without loopswap: stop using the device, unload and load
# the module, set the device up again (fio would restart after this).
impl=$(sed -n 's/^lswloop0 .*impl=\([a-z0-9_]*\).*/\1/p' /sys/kernel/lswloop/devices)
t0=$(now)
umount /mnt
echo lswloop0 > /sys/kernel/lswloop/remove
rmmod $impl
insmod /modules/$impl.ko
echo /tmp/disk0.img > /sys/kernel/lswloop/add
dev=$(tail -1 /sys/kernel/lswloop/devices | cut -d' ' -f1)
mount -t ext4 /dev/$dev /mnt
t1=$(now)
echo "RELOAD $((t1 - t0))"
umount /mnt
fsck.ext4 -fn /dev/$dev > /dev/null
# Idle swaps with more and more idle threads in the system: the blackout
# must not grow with the task count.
v=$(sed -n "s/^$dev .*impl=lswloop_v\([12]\).*/\1/p" /sys/kernel/lswloop/devices); started=0
for extra in 0 250 2000; do
    while [ $started -lt $extra ]; do sleep 1000 & started=$((started + 1)); done
    for i in 1 2 3 4 5 6; do
        if [ $v = 1 ]; then v=2; else v=1; fi
        t0=$(now)
        report=$(loopswap swap $dev --to lswloop_v$v --keep-old --json)
        t1=$(now)
        echo "SCALE $extra,$((t1 - t0)) $report"
    done
    # Swaps aborted after quiescence: the next implementation refuses the
    # state (its fail_import knob), and the gate reopens on the old one.
    if [ $v = 1 ]; then next=2; else next=1; fi
    for i in 1 2 3; do
        echo 1 > /sys/module/lswloop_v$next/parameters/fail_import
        report=$(loopswap swap $dev --to lswloop_v$next --keep-old --json) || true
        echo 0 > /sys/module/lswloop_v$next/parameters/fail_import
        echo "ABORTED $extra $report"
    done
    # Swaps whose wait times out: a read stalled inside for longer than
    # --timeout, and the report names who held it up, read with the gate
    # closed.
    for i in 1 2 3; do
        echo 4000 > /sys/module/lswloop_v$v/parameters/stall_ms
        dd if=/dev/$dev of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
        held=$!
        for j in $(seq 100); do grep -q lswloop_v /proc/$held/stack 2>/dev/null && break; usleep 20000; done
        echo 0 > /sys/module/lswloop_v$v/parameters/stall_ms
        report=$(loopswap swap $dev --to lswloop_v$next --keep-old --timeout 1s --force-wait --json) || true
        wait $held
        echo "TIMEDOUT $extra $report"
    done
done
"#,
        setup = vm::LSWLOOP_SETUP,
        quiet = QUIET_SECONDS,
        control = CONTROL_SECONDS,
    )
}

/// Seconds of fio alone, for the workload's own latency percentiles.
const QUIET_SECONDS: u32 = 15;
/// Seconds of the logged fio run before the first swap: the control windows.
const CONTROL_SECONDS: u32 = 10;

/// (Unix ms, value) of the lines starting with `prefix`: a fio log
/// (`time, value, direction, ...`) printed by the guest, one line each.
fn fio_log(output: &str, prefix: &str) -> anyhow::Result<Vec<(u64, f64)>> {
    let mut samples = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let mut fields = rest.split(',').map(str::trim);
        let (Some(ms), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        samples.push((
            ms.parse().context("a log time")?,
            value.parse().context("a logged value")?,
        ));
    }
    Ok(samples)
}

/// The committed swap reports of the lines starting with `prefix`.
fn reports<'a>(output: &'a str, prefix: &str) -> anyhow::Result<Vec<(&'a str, serde_json::Value)>> {
    let found = any_reports(output, prefix)?;
    if let Some((_, report)) = found
        .iter()
        .find(|(_, report)| report["instances"][0]["committed"] != true)
    {
        bail!("a swap did not commit: {report}");
    }
    Ok(found)
}

/// The swap reports of the lines starting with `prefix`, committed or not.
fn any_reports<'a>(output: &'a str, prefix: &str) -> anyhow::Result<Vec<(&'a str, serde_json::Value)>> {
    let mut found = Vec::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix(prefix) else {
            continue;
        };
        let (tag, json) = match rest.split_once(' ') {
            Some((tag, json)) if !tag.starts_with('{') => (tag, json),
            _ => ("", rest),
        };
        let report: serde_json::Value =
            serde_json::from_str(json).with_context(|| format!("a swap report in {line:.300}"))?;
        found.push((tag, report));
    }
    Ok(found)
}

/// The blackouts of the aborted swaps reported on the lines starting with
/// `prefix` (tagged with the extra threads), by that number; fails with
/// `unexpected` unless each swap was aborted with an error containing
/// `error` and, if `names_holders`, named the threads that held it up.
fn aborted_blackouts(
    output: &str,
    prefix: &str,
    error: &str,
    names_holders: bool,
    unexpected: &str,
) -> anyhow::Result<BTreeMap<u32, Vec<f64>>> {
    let mut by_extra: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for (extra, report) in any_reports(output, prefix)? {
        let instance = &report["instances"][0];
        let said = instance["error"].as_str().unwrap_or_default();
        let named = instance["holders"]
            .as_array()
            .is_some_and(|holders| !holders.is_empty());
        if instance["committed"] != false || !said.contains(error) || (names_holders && !named) {
            bail!("{unexpected}: {report}");
        }
        by_extra
            .entry(extra.parse().context("extra threads")?)
            .or_default()
            .push(instance["blackout_us"].as_f64().context("blackout_us")?);
    }
    Ok(by_extra)
}

/// The nearest-rank percentile: the smallest value with at least `q` of
/// the values at or below it (with 20 values, p99 is the largest).
/// The (from, to) spans of the lines starting with `prefix`, given in µs
/// since the epoch, in ms.
fn spans_ms(output: &str, prefix: &str) -> Vec<(f64, f64)> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|span| {
            let (from, to) = span.trim().split_once(' ')?;
            Some((
                from.parse::<f64>().ok()? / 1000.0,
                to.parse::<f64>().ok()? / 1000.0,
            ))
        })
        .collect()
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = (values.len() as f64 * q).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

fn swap(swaps: u32) -> anyhow::Result<()> {
    if swaps == 0 {
        bail!("--swaps 0: measure at least one swap");
    }
    let mut request = vm::VmRequest::new(swap_script(swaps));
    request.timeout = std::time::Duration::from_secs(600 + 30 * u64::from(swaps));
    let outcome = vm::run(&request)?;
    let folder = xtask::paths::target().join("bench");
    std::fs::create_dir_all(&folder)?;
    std::fs::write(folder.join("swap-output.txt"), &outcome.output)?;
    outcome.check()?;
    let output = &outcome.output;

    // The workload alone: the direct job's completion latency percentiles.
    let quiet_line = output
        .lines()
        .find_map(|line| line.strip_prefix("QUIET "))
        .context("no quiet fio run in the output")?;
    // fio may print notes before its JSON.
    let quiet: serde_json::Value = serde_json::from_str(&quiet_line[quiet_line.find('{').unwrap_or(0)..])
        .with_context(|| format!("fio's JSON: {:.200}", quiet_line))?;
    let direct = quiet["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|job| job["jobname"] == "direct"))
        .context("the direct job in fio's JSON")?;
    let clat = |q: &str| {
        direct["write"]["clat_ns"]["percentile"][q]
            .as_f64()
            .unwrap_or(f64::NAN)
            / 1000.0
    };
    let (quiet_p99_us, quiet_p999_us) = (clat("99.000000"), clat("99.900000"));

    // Worst I/O latency (µs) and IOPS of the direct job per 10 ms window
    // of the logged run.
    let latency: Vec<(u64, f64)> = fio_log(output, "LAT ")
        .context("fio's latency log")?
        .into_iter()
        .map(|(ms, ns)| (ms, ns / 1000.0))
        .collect();
    let iops = fio_log(output, "IOPS ").context("fio's IOPS log")?;
    if latency.is_empty() || iops.is_empty() {
        bail!("fio wrote no latency or no IOPS log\n{}", outcome.tail());
    }
    let first_ms = latency.iter().map(|(ms, _)| *ms).min().unwrap_or(0);
    // Livepatch transitions, enable and disable, idle and under load.
    let mut livepatch: BTreeMap<&str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("LIVEPATCH ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let [load, enable, disable] = fields[..] else {
            bail!("a livepatch line: {line}");
        };
        let (enables, disables) = livepatch.entry(load).or_default();
        enables.push(enable.parse::<f64>().context("a livepatch time")? / 1e6);
        disables.push(disable.parse::<f64>().context("a livepatch time")? / 1e6);
    }
    if livepatch.len() != 2 {
        bail!(
            "the livepatch was not timed idle and under load\n{}",
            outcome.tail()
        );
    }

    let swapped = reports(output, "SWAP ")?;
    if swapped.len() != swaps as usize {
        bail!(
            "{} of {swaps} swap reports found\n{}",
            swapped.len(),
            outcome.tail()
        );
    }
    let mut blackouts = Vec::new();
    let mut held = Vec::new();
    let mut whole = Vec::new();
    let mut process = Vec::new();
    // Each swap's start, gate closing, gate opening and process end.
    let mut swap_spans_ms: Vec<(f64, f64, f64, f64)> = Vec::new();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (process_ns, report) in &swapped {
        let process_ms = process_ns.parse::<f64>().context("a swap's process time")? / 1e6;
        process.push(process_ms);
        let instance = &report["instances"][0];
        let blackout = instance["blackout_us"].as_f64().context("blackout_us")?;
        blackouts.push(blackout);
        held.push(instance["held_calls"].as_f64().unwrap_or(0.0));
        whole.push(report["micros"].as_f64().unwrap_or(0.0) / 1000.0);
        let closed_ms = instance["gate_closed_unix_us"]
            .as_f64()
            .context("gate_closed_unix_us")?
            / 1000.0;
        let started_ms = report["started_unix_us"].as_f64().context("started_unix_us")? / 1000.0;
        // The process's end, detach included (timed from just before it
        // started, so a little late: the window errs wide).
        let ended_ms = started_ms + (report["micros"].as_f64().context("micros")? / 1000.0).max(process_ms);
        swap_spans_ms.push((started_ms, closed_ms, closed_ms + blackout / 1000.0, ended_ms));
        for phase in instance["phases"].as_array().context("phases")? {
            let name = phase["phase"].as_str().unwrap_or("?").to_owned();
            phases
                .entry(name)
                .or_default()
                .push(phase["micros"].as_f64().unwrap_or(0.0));
        }
    }
    // The gate windows; and before each gate closes (attach, seed,
    // estimate) and after it opens (detach): when the probes come and go.
    let windows_ms: Vec<(f64, f64)> = swap_spans_ms
        .iter()
        .map(|&(_, closed, opened, _)| (closed, opened))
        .collect();
    let probe_windows_ms: Vec<(f64, f64)> = swap_spans_ms
        .iter()
        .flat_map(|&(started, closed, opened, ended)| [(started, closed), (opened, ended)])
        .collect();
    // While one CPU-bound process ran, after the swaps (`BUSY` lines: its
    // start and end in µs since the epoch): the control for what any busy
    // process costs the workload in this VM.
    let busy_windows_ms = spans_ms(output, "BUSY ");
    if busy_windows_ms.len() != 5 || busy_windows_ms.iter().any(|(from, to)| to - from < 500.0) {
        bail!("the CPU-bound control did not run 5 times for about a second each: {busy_windows_ms:?}");
    }
    // While an empty kprobe.session link on the same functions was
    // attached and detached by a process doing nothing else (`EMPTYLINK`
    // lines): the floor of what the probes cost the workload here.
    let empty_link_windows_ms = spans_ms(output, "EMPTYLINK ");
    if empty_link_windows_ms.len() != 5 {
        bail!("the empty link was not attached and detached 5 times: {empty_link_windows_ms:?}");
    }
    // With the counters attached and counting, and in the seconds after.
    let (watched_ms, unwatched_ms) = (spans_ms(output, "WATCHED "), spans_ms(output, "UNWATCHED "));
    let link_held_ms = spans_ms(output, "LINKHELD ");
    if watched_ms.len() != 3 || unwatched_ms.len() != 3 || link_held_ms.len() != 3 {
        bail!(
            "the counters' steady cost was not measured 3 times: {watched_ms:?} {unwatched_ms:?} {link_held_ms:?}"
        );
    }
    // The slowest I/O completing in each gate window (a log entry whose
    // 10 ms, which end at its time, overlap it), against the same-length
    // window at the same offset in the control seconds before the first
    // swap.
    let worst_in = |from: f64, to: f64| -> f64 {
        latency
            .iter()
            .filter(|(ms, _)| (*ms as f64) >= from && (*ms as f64) <= to + 10.0)
            .map(|(_, us)| *us)
            .fold(0.0, f64::max)
    };
    // The first swap's start (its attach is not "before the first swap")
    // and the last one's end (the CPU-bound control comes after it).
    let first_swap_ms = swap_spans_ms.first().map_or(0.0, |span| span.0);
    let last_swap_ms = swap_spans_ms.last().map_or(0.0, |span| span.3);
    let during_swaps = |ms: f64| ms >= first_swap_ms && ms <= last_swap_ms + 10.0;
    let mut gate_worst: Vec<f64> = windows_ms.iter().map(|(from, to)| worst_in(*from, *to)).collect();
    let mut control_worst: Vec<f64> = windows_ms
        .iter()
        .enumerate()
        .map(|(i, (from, to))| {
            // Spread over the control seconds, clear of the first swap.
            let span = (first_swap_ms - first_ms as f64 - 1000.0).max(1000.0);
            let start = first_ms as f64 + 500.0 + span * (i as f64 / windows_ms.len() as f64);
            worst_in(start, start + (to - from))
        })
        .collect();
    // The same-length windows inside those of the CPU-bound process,
    // clear of its start and end.
    let rounds = windows_ms.len().div_ceil(busy_windows_ms.len()) as f64;
    let mut busy_worst: Vec<f64> = windows_ms
        .iter()
        .enumerate()
        .map(|(i, (from, to))| {
            let (busy_from, busy_to) = busy_windows_ms[i % busy_windows_ms.len()];
            let span = (busy_to - busy_from - 200.0 - (to - from)).max(0.0);
            let start = busy_from + 100.0 + span * ((i / busy_windows_ms.len()) as f64 / rounds);
            worst_in(start, start + (to - from))
        })
        .collect();
    // The worst I/O with swaps, and where it completed (a log entry covers
    // the 10 ms before its time).
    let (worst_at, worst_with) = latency
        .iter()
        .filter(|(ms, _)| during_swaps(*ms as f64))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or((0.0, 0.0), |(ms, us)| (*ms as f64, *us));
    let in_span = |from: f64, to: f64| worst_at >= from && worst_at <= to + 10.0;
    let worst_where = swap_spans_ms
        .iter()
        .enumerate()
        .find_map(|(i, &(started, closed, opened, ended))| {
            let n = i + 1;
            if in_span(closed, opened) {
                Some(format!("the gate window of swap {n}"))
            } else if in_span(started, closed) {
                Some(format!(
                    "swap {n} before its gate, {:.0} ms after its start (the gate closed at {:.0}: attach, estimate, scan)",
                    worst_at - started,
                    closed - started
                ))
            } else if in_span(opened, ended) {
                Some(format!(
                    "swap {n} after its gate, {:.0} ms after it opened (the process ended at {:.0}: report, detach)",
                    worst_at - opened,
                    ended - opened
                ))
            } else {
                None
            }
        })
        .unwrap_or_else(|| "between swaps".to_owned());
    let worst_without: f64 = latency
        .iter()
        .filter(|(ms, _)| (*ms as f64) < first_swap_ms - 100.0)
        .map(|(_, us)| *us)
        .fold(0.0, f64::max);

    // Mean IOPS of the log windows ending in the given spans, against the
    // control seconds before the first swap.
    let mean_iops = |spans: &[(f64, f64)]| -> f64 {
        let values: Vec<f64> = iops
            .iter()
            .filter(|(ms, _)| {
                let ms = *ms as f64;
                spans.iter().any(|(from, to)| ms >= *from && ms <= to + 10.0)
            })
            .map(|(_, value)| *value)
            .collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    let iops_probes = mean_iops(&probe_windows_ms);
    let iops_empty_link = mean_iops(&empty_link_windows_ms);
    let (iops_watched, iops_unwatched) = (mean_iops(&watched_ms), mean_iops(&unwatched_ms));
    let iops_link_held = mean_iops(&link_held_ms);
    // The slowest I/O of each swap's life outside its gate window, and of
    // each empty link's process.
    let mut probe_worst: Vec<f64> = swap_spans_ms
        .iter()
        .map(|&(started, closed, opened, ended)| worst_in(started, closed).max(worst_in(opened, ended)))
        .collect();
    let mut empty_link_worst: Vec<f64> = empty_link_windows_ms
        .iter()
        .map(|(from, to)| worst_in(*from, *to))
        .collect();
    let iops_busy = mean_iops(&busy_windows_ms);
    let iops_quiet = mean_iops(&[(first_ms as f64 + 500.0, first_swap_ms - 500.0)]);

    let reload_ms = output
        .lines()
        .find_map(|line| line.strip_prefix("RELOAD "))
        .and_then(|ns| ns.trim().parse::<f64>().ok())
        .map(|ns| ns / 1e6);

    let mut scaling: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut idle_whole = Vec::new();
    let mut idle_process = Vec::new();
    for (tag, report) in reports(output, "SCALE ")? {
        let (extra, process_ns) = tag.split_once(',').context("a SCALE line's extra,ns")?;
        let extra: u32 = extra.parse().context("extra threads")?;
        if extra == 0 {
            idle_whole.push(report["micros"].as_f64().unwrap_or(0.0) / 1000.0);
            idle_process.push(process_ns.parse::<f64>().context("a swap's process time")? / 1e6);
        }
        scaling.entry(extra).or_default().push(
            report["instances"][0]["blackout_us"]
                .as_f64()
                .context("blackout_us")?,
        );
    }

    let mut aborted_scaling = aborted_blackouts(
        output,
        "ABORTED ",
        "could not import state",
        false,
        "a swap meant to be refused at its transfer was not",
    )?;
    let mut timed_out_scaling = aborted_blackouts(
        output,
        "TIMEDOUT ",
        "did not become quiescent",
        true,
        "a swap meant to time out naming the stalled read did not",
    )?;

    let blackout_median = median(&mut blackouts);
    let blackout_p99 = percentile(&mut blackouts, 0.99);
    let blackout_max = blackouts.iter().copied().fold(0.0, f64::max);
    println!("\nswap bench: {swaps} swaps of lswloop0 (v1 <-> v2) under fio on ext4 (qemu TCG)");
    println!("{:<58} {:>12}", "figure", "value");
    let row = |name: &str, value: String| println!("{name:<58} {value:>12}");
    row(
        "blackout (gate closed -> open) median",
        format!("{:.1} ms", blackout_median / 1000.0),
    );
    row("blackout p99", format!("{:.1} ms", blackout_p99 / 1000.0));
    row("blackout max", format!("{:.1} ms", blackout_max / 1000.0));
    row(
        "fio direct job clat p99, no swaps",
        format!("{:.2} ms", quiet_p99_us / 1000.0),
    );
    row(
        "fio direct job clat p99.9, no swaps",
        format!("{:.2} ms", quiet_p999_us / 1000.0),
    );
    row(
        "blackout median / p99.9 without swaps",
        format!("{:.2}x", blackout_median / quiet_p999_us),
    );
    let gate_median = median(&mut gate_worst);
    let control_median = median(&mut control_worst);
    row(
        "slowest I/O in a gate window, median over swaps",
        format!("{:.1} ms", gate_median / 1000.0),
    );
    row(
        "slowest I/O in the same windows without swaps",
        format!("{:.1} ms", control_median / 1000.0),
    );
    row("  ratio", format!("{:.2}x", gate_median / control_median));
    let busy_median = median(&mut busy_worst);
    row(
        "  the same while a busy process runs (control), ratio to without",
        format!(
            "{:.1} ms ({:.2}x)",
            busy_median / 1000.0,
            busy_median / control_median
        ),
    );
    row(
        "worst I/O of the run, with swaps",
        format!("{:.1} ms", worst_with / 1000.0),
    );
    row("  it completed in", worst_where.clone());
    row(
        "worst I/O of the run, before the first swap",
        format!("{:.1} ms", worst_without / 1000.0),
    );
    row(
        "whole swap (report to report), median",
        format!("{:.0} ms", median(&mut whole)),
    );
    row(
        "whole swap, idle (no extra threads), median",
        format!("{:.0} ms", median(&mut idle_whole)),
    );
    row(
        "  the process, start to exit (detach after the report), under fio / idle",
        format!(
            "{:.0} / {:.0} ms",
            median(&mut process),
            median(&mut idle_process)
        ),
    );
    row(
        "direct-job IOPS while probes attach or detach",
        format!("{iops_probes:.0}"),
    );
    row(
        "direct-job IOPS before the first swap",
        format!("{iops_quiet:.0}"),
    );
    row("  ratio", format!("{:.2}x", iops_probes / iops_quiet));
    // Against the two controls: any busy process, and the probes' floor.
    for (while_it, that, iops) in [
        ("a busy process runs (control)", "while it runs", iops_busy),
        (
            "an empty link on the same functions comes and goes (floor)",
            "the floor",
            iops_empty_link,
        ),
    ] {
        row(
            &format!("  IOPS while {while_it}, ratio to before"),
            format!("{iops:.0} ({:.2}x)", iops / iops_quiet),
        );
        row(
            &format!("  IOPS while probes attach or detach / {that}"),
            format!("{:.2}x", iops_probes / iops),
        );
    }
    row(
        "direct-job IOPS with the counters attached (watch) / in the seconds after",
        format!(
            "{iops_watched:.0} / {iops_unwatched:.0} ({:.2}x)",
            iops_watched / iops_unwatched
        ),
    );
    row(
        "  with the empty link held instead (the mechanism alone) / the same seconds after",
        format!("{iops_link_held:.0} ({:.2}x)", iops_link_held / iops_unwatched),
    );
    let (probe_worst_median, empty_link_worst_median) =
        (median(&mut probe_worst), median(&mut empty_link_worst));
    row(
        "slowest I/O in a swap's life outside its gate, median over swaps",
        format!("{:.1} ms", probe_worst_median / 1000.0),
    );
    row(
        "  in an empty link's process life (floor), median of 5",
        format!(
            "{:.1} ms ({:.2}x)",
            empty_link_worst_median / 1000.0,
            probe_worst_median / empty_link_worst_median
        ),
    );
    let whole_median = median(&mut whole);
    let idle_whole_median = median(&mut idle_whole);
    let mut enable_median = |load: &str| -> anyhow::Result<f64> {
        let (enables, _) = livepatch
            .get_mut(load)
            .with_context(|| format!("no livepatch timed {load}"))?;
        Ok(median(&mut enables.clone()))
    };
    let (lp_idle, lp_load) = (enable_median("idle")?, enable_median("load")?);
    row(
        "livepatch transition of lswloop_v1_queue_rq, idle, median",
        format!("{lp_idle:.0} ms"),
    );
    row(
        "livepatch transition, under the same fio, median",
        format!("{lp_load:.0} ms"),
    );
    row(
        "  whole swap idle / livepatch idle",
        format!("{:.2}x", idle_whole_median / lp_idle),
    );
    row(
        "  whole swap under fio / livepatch under fio",
        format!("{:.2}x", whole_median / lp_load),
    );
    row(
        "calls held at the gate per swap, median",
        format!("{:.0}", median(&mut held)),
    );
    if let Some(reload) = reload_ms {
        row(
            "naive reload: umount .. rmmod, insmod .. mount",
            format!("{reload:.1} ms"),
        );
    }
    println!("\n{:<14} {:>12}", "phase", "median ms");
    let mut phase_medians = BTreeMap::new();
    for (name, mut values) in phases {
        let value = median(&mut values) / 1000.0;
        println!("{name:<14} {value:>12.3}");
        phase_medians.insert(name, value);
    }
    println!(
        "\nidle swaps, blackout median against extra idle threads (3 to 6 swaps each): committed, \
         aborted at the transfer (NEW refuses the state), aborted after a 1 s wait (a read stalled inside)"
    );
    println!(
        "{:<14} {:>12} {:>8} {:>12} {:>8} {:>12} {:>8}",
        "extra threads", "committed us", "vs 0", "aborted us", "vs 0", "timed out us", "vs 0"
    );
    let medians = |scaling: &mut BTreeMap<u32, Vec<f64>>| -> BTreeMap<u32, f64> {
        scaling
            .iter_mut()
            .map(|(extra, values)| (*extra, median(values)))
            .collect()
    };
    let scale_medians = medians(&mut scaling);
    let aborted_medians = medians(&mut aborted_scaling);
    let timed_out_medians = medians(&mut timed_out_scaling);
    for (extra, value) in &scale_medians {
        let mut line = format!("{extra:<14}");
        for (medians, this) in [
            (&scale_medians, Some(*value)),
            (&aborted_medians, aborted_medians.get(extra).copied()),
            (&timed_out_medians, timed_out_medians.get(extra).copied()),
        ] {
            let this = this.unwrap_or(f64::NAN);
            let base = medians.get(&0).copied().unwrap_or(f64::NAN);
            line.push_str(&format!(" {this:>12.0} {:>7.2}x", this / base));
        }
        println!("{line}");
    }

    let samples: Vec<(f64, f64)> = latency
        .iter()
        .map(|(ms, us)| ((ms - first_ms) as f64 / 1000.0, *us))
        .collect();
    let windows: Vec<(f64, f64)> = windows_ms
        .iter()
        .map(|(from, to)| ((from - first_ms as f64) / 1000.0, (to - first_ms as f64) / 1000.0))
        .collect();
    let mut bars = vec![
        (
            "loopswap blackout, median under fio".to_owned(),
            blackout_median / 1000.0,
        ),
        (
            "loopswap blackout, max under fio".to_owned(),
            blackout_max / 1000.0,
        ),
        (
            "loopswap blackout, idle, 2,000 extra threads".to_owned(),
            scale_medians.get(&2000).copied().unwrap_or(f64::NAN) / 1000.0,
        ),
        (
            "fio's own p99.9 I/O latency, no swaps".to_owned(),
            quiet_p999_us / 1000.0,
        ),
    ];
    if let Some(reload) = reload_ms {
        bars.push(("naive reload (umount .. mount), fio stopped".to_owned(), reload));
    }
    let pictures = crate::plot::write_swap_pictures(&folder, &samples, &windows, &bars)?;
    let json = serde_json::json!({
        "swaps": swaps,
        "blackout_us": { "median": blackout_median, "p99": blackout_p99, "max": blackout_max },
        "fio_direct_no_swaps_clat_us": { "p99": quiet_p99_us, "p99.9": quiet_p999_us },
        "slowest_io_us": {
            "gate_windows_median": gate_median,
            "control_windows_median": control_median,
            "one_cpu_bound_process_windows_median": busy_median,
            "swap_outside_gate_median": probe_worst_median,
            "empty_session_link_process_median": empty_link_worst_median,
            "run_with_swaps": worst_with,
            "run_with_swaps_completed_in": worst_where,
            "before_first_swap": worst_without,
        },
        "whole_swap_median_ms": whole_median,
        "whole_swap_idle_median_ms": idle_whole_median,
        "swap_process_median_ms": { "under_fio": median(&mut process), "idle": median(&mut idle_process) },
        "direct_iops": {
            "probes_attaching_or_detaching": iops_probes,
            "before_first_swap": iops_quiet,
            "one_cpu_bound_process": iops_busy,
            "empty_session_link_attaching_or_detaching": iops_empty_link,
            "counters_attached": iops_watched,
            "empty_session_link_held": iops_link_held,
            "after_counters_detached": iops_unwatched,
        },
        "livepatch_transition_ms": livepatch.iter().map(|(load, (enables, disables))| {
            (load.to_string(), serde_json::json!({ "enable": enables, "disable": disables }))
        }).collect::<BTreeMap<_, _>>(),
        "naive_reload_ms": reload_ms,
        "phase_median_ms": phase_medians,
        "idle_blackout_median_us_by_extra_threads": scale_medians,
        "idle_aborted_at_transfer_blackout_median_us_by_extra_threads": aborted_medians,
        "idle_timed_out_after_1s_blackout_median_us_by_extra_threads": timed_out_medians,
    });
    let path = folder.join("swap.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!(
        "written to {}, {} and {}",
        path.display(),
        pictures[0].display(),
        pictures[1].display()
    );
    Ok(())
}

fn probes(rounds: u32, millis: u32, threads: u32) -> anyhow::Result<()> {
    if rounds == 0 {
        bail!("--rounds 0: measure at least one round");
    }
    let mut request = vm::VmRequest::new(probes_script(rounds, millis, threads));
    request.echo = true;
    let outcome = vm::run(&request)?;
    outcome.check()?;
    let mut rates: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for line in outcome.output.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() != Some("BENCH") {
            continue;
        }
        let (Some(mode), Some(calls), Some(ns)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let calls: f64 = calls.parse().context("bench calls")?;
        let ns: f64 = ns.parse().context("bench ns")?;
        let mode = match mode {
            "none" => "none",
            "loopswap" => "loopswap",
            "loopswap-untimed" => "loopswap-untimed",
            "multi-pair" => "multi-pair",
            "session" => "session",
            _ => "kprobe-pair",
        };
        rates.entry(mode).or_default().push(calls / (ns / 1e9));
    }
    let base = median(rates.get_mut("none").context("no baseline measured")?);
    println!(
        "\nprobe cost: {threads} kthreads calling lsw_fixture_nop() for {millis} ms, median of {rounds} rounds (qemu TCG)"
    );
    println!("{:<58} {:>14} {:>10}", "configuration", "calls/s", "vs none");
    let mut medians = BTreeMap::new();
    for (mode, label) in [
        ("none", "no probes"),
        ("loopswap", "loopswap watch (kprobe.session, counting + time)"),
        (
            "loopswap-untimed",
            "loopswap watch --no-time-in-flight (counting only)",
        ),
        ("kprobe-pair", "plain kprobe+kretprobe (empty programs)"),
        ("multi-pair", "kprobe.multi entry+return links (empty programs)"),
        ("session", "kprobe.session link (empty program, entry+return)"),
    ] {
        let rate = median(
            rates
                .get_mut(mode)
                .with_context(|| format!("no {mode} measurement"))?,
        );
        println!("{label:<58} {rate:>14.0} {:>9.3}x", rate / base);
        medians.insert(mode, rate);
    }
    // Cost per call relative to the bare pair, and what time in flight adds.
    let cost = |mode: &str| 1.0 / medians[mode] - 1.0 / base;
    println!(
        "\ncounting + time costs {:.2}x the bare pair per call; counting alone {:.2}x; \
         time in flight adds {:+.1}% to the cost of counting",
        cost("loopswap") / cost("kprobe-pair"),
        cost("loopswap-untimed") / cost("kprobe-pair"),
        (cost("loopswap") / cost("loopswap-untimed") - 1.0) * 100.0
    );
    println!(
        "against the same mechanism (an empty kprobe.session link): counting + time {:.2}x, \
         counting alone {:.2}x; the empty session link itself {:.2}x and the kprobe.multi pair \
         {:.2}x the kprobe pair",
        cost("loopswap") / cost("session"),
        cost("loopswap-untimed") / cost("session"),
        cost("session") / cost("kprobe-pair"),
        cost("multi-pair") / cost("kprobe-pair"),
    );
    let json = serde_json::json!({
        "rounds": rounds,
        "millis": millis,
        "threads": threads,
        "calls_per_second_median": medians,
    });
    let path = xtask::paths::target().join("bench").join("probes.json");
    std::fs::create_dir_all(path.parent().context("a folder")?)?;
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("written to {}", path.display());
    Ok(())
}
