//! `cargo xtask bench`: measurements taken side by side in one VM run.

use std::collections::BTreeMap;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use xtask::vm;

#[derive(Debug, Subcommand)]
pub enum Which {
    /// Calls per second of an empty module function called in a tight loop
    /// from kernel threads: with no probes, with loopswap's counters
    /// (`loopswap watch`, every function of the module probed), and with a
    /// plain kprobe+kretprobe pair running empty programs. Rounds alternate
    /// between the three so drift hits all of them alike.
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
    let Which::Probes {
        rounds,
        millis,
        threads,
    } = which;
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
            _ => "kprobe-pair",
        };
        rates.entry(mode).or_default().push(calls / (ns / 1e9));
    }
    let base = median(rates.get_mut("none").context("no baseline measured")?);
    println!(
        "\nprobe cost: {threads} kthreads calling lsw_fixture_nop() for {millis} ms, median of {rounds} rounds (qemu TCG)"
    );
    println!("{:<44} {:>14} {:>10}", "configuration", "calls/s", "vs none");
    for (mode, label) in [
        ("none", "no probes"),
        ("loopswap", "loopswap watch (kprobe+kretprobe, counting)"),
        ("kprobe-pair", "plain kprobe+kretprobe (empty programs)"),
    ] {
        let rate = median(
            rates
                .get_mut(mode)
                .with_context(|| format!("no {mode} measurement"))?,
        );
        println!("{label:<44} {rate:>14.0} {:>9.3}x", rate / base);
    }
    Ok(())
}
