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
    /// without the time-in-flight timestamps and histograms, and with a
    /// plain kprobe+kretprobe pair running empty programs. Rounds alternate
    /// between the four so drift hits all of them alike.
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
    /// v1 -> v2 -> v1; median and max over all swaps, with the median of
    /// each phase.
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
fio --directory=/mnt --size=16M --bs=4k --rw=randwrite --ioengine=psync --time_based --runtime=3600 \
    --name=direct --direct=1 --name=buffered --direct=0 > /tmp/fio.txt 2>&1 &
fio=$!
sleep 2
for i in $(seq {swaps}); do
    if [ $((i % 2)) = 1 ]; then to=lswloop_v2; else to=lswloop_v1; fi
    kill -0 $fio
    echo "SWAP $(loopswap swap lswloop0 --to $to --keep-old --json)"
done
kill -INT $fio
wait $fio || true
umount /mnt
fsck.ext4 -fn /dev/lswloop0 > /dev/null
# Idle swaps with more and more idle threads in the system: the blackout
# must not grow with the task count.
v=1; started=0
for extra in 0 250 2000; do
    while [ $started -lt $extra ]; do sleep 1000 & started=$((started + 1)); done
    for i in 1 2 3 4 5 6; do
        if [ $v = 1 ]; then v=2; else v=1; fi
        echo "SCALE $extra $(loopswap swap lswloop0 --to lswloop_v$v --keep-old --json)"
    done
done
"#,
        setup = vm::LSWLOOP_SETUP
    )
}

fn swap(swaps: u32) -> anyhow::Result<()> {
    if swaps == 0 {
        bail!("--swaps 0: measure at least one swap");
    }
    let mut request = vm::VmRequest::new(swap_script(swaps));
    request.timeout = std::time::Duration::from_secs(600 + 30 * u64::from(swaps));
    let outcome = vm::run(&request)?;
    outcome.check()?;
    let mut scaling: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for line in outcome.output.lines() {
        let Some(rest) = line.strip_prefix("SCALE ") else {
            continue;
        };
        let (extra, json) = rest.split_once(' ').context("a SCALE line")?;
        let report: serde_json::Value = serde_json::from_str(json).context("a swap report")?;
        let instance = &report["instances"][0];
        if instance["committed"] != true {
            bail!("an idle swap did not commit: {report}");
        }
        scaling
            .entry(extra.parse().context("extra threads")?)
            .or_default()
            .push(instance["blackout_us"].as_f64().context("blackout_us")?);
    }
    let mut blackouts = Vec::new();
    let mut held = Vec::new();
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in outcome.output.lines() {
        let Some(json) = line.strip_prefix("SWAP ") else {
            continue;
        };
        let report: serde_json::Value = serde_json::from_str(json).context("a swap report")?;
        let instance = &report["instances"][0];
        if instance["committed"] != true {
            bail!("a swap did not commit: {report}");
        }
        blackouts.push(instance["blackout_us"].as_f64().context("blackout_us")?);
        held.push(instance["held_calls"].as_f64().unwrap_or(0.0));
        for phase in instance["phases"].as_array().context("phases")? {
            let name = phase["phase"].as_str().unwrap_or("?").to_owned();
            phases
                .entry(name)
                .or_default()
                .push(phase["micros"].as_f64().unwrap_or(0.0));
        }
    }
    if blackouts.len() != swaps as usize {
        bail!(
            "{} of {swaps} swap reports found\n{}",
            blackouts.len(),
            outcome.tail()
        );
    }
    let max = blackouts.iter().copied().fold(0.0, f64::max);
    println!("\nswap blackout: {swaps} swaps of lswloop0 (v1 <-> v2) under fio on ext4 (qemu TCG)");
    println!(
        "blackout (gate closed -> open): median {:.0} us, max {max:.0} us",
        median(&mut blackouts)
    );
    println!("calls held at the gate per swap: median {:.0}", median(&mut held));
    println!("{:<14} {:>12}", "phase", "median ms");
    let mut phase_medians = BTreeMap::new();
    for (name, mut values) in phases {
        let value = median(&mut values) / 1000.0;
        println!("{name:<14} {value:>12.3}");
        phase_medians.insert(name, value);
    }
    println!("\nidle swaps, blackout median against extra idle threads (6 swaps each)");
    println!("{:<14} {:>12} {:>10}", "extra threads", "median us", "vs 0");
    let mut scale_medians = BTreeMap::new();
    for (extra, values) in &mut scaling {
        scale_medians.insert(*extra, median(values));
    }
    let base = scale_medians.get(&0).copied().unwrap_or(f64::NAN);
    for (extra, value) in &scale_medians {
        println!("{extra:<14} {value:>12.0} {:>9.2}x", value / base);
    }
    let json = serde_json::json!({
        "swaps": swaps,
        "blackout_us": { "median": median(&mut blackouts), "max": max },
        "phase_median_ms": phase_medians,
        "idle_blackout_median_us_by_extra_threads": scale_medians,
    });
    let path = xtask::paths::target().join("bench").join("swap.json");
    std::fs::create_dir_all(path.parent().context("a folder")?)?;
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("written to {}", path.display());
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
        ("loopswap", "loopswap watch (kprobe.multi pair, counting + time)"),
        (
            "loopswap-untimed",
            "loopswap watch --no-time-in-flight (counting only)",
        ),
        ("kprobe-pair", "plain kprobe+kretprobe (empty programs)"),
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
