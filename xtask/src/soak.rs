//! `cargo xtask soak`: many v1↔v2 swaps under load with faults injected at
//! random phases, then proof that nothing was lost or leaked.
//!
//! The host draws the plan (which device, which fault, which phase or delay)
//! from a seed, so a failing run can be replayed with `--seed`. The guest
//! script runs it round by round and prints one `ROUND` line per swap; the
//! host checks each round's outcome against what its fault allows, then the
//! end state: fio's verification, fsck, the idle devices' data, every
//! instance serving, modules and their reference counts as at the start,
//! no loopswap probe left, and (checked by the VM runner) no WARN, BUG,
//! Oops or hung task in the kernel log.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{paths, vm};

/// The faults a round can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// A plain swap under load.
    None,
    /// SIGKILL the controller, paused after a given phase.
    Kill,
    /// SIGSTOP the controller after a delay, SIGCONT it past the kernel's
    /// deadline.
    Stop,
    /// NEW's transformer rejects the state (`fail_import` knob).
    Transform,
    /// The allocation of NEW's state fails during transfer (`fail_alloc`).
    Alloc,
    /// NEW's init fails (the core's `fail_register` knob): nothing changes.
    Init,
    /// The device is removed while it is being swapped, then another added.
    Remove,
    /// Every request stalls past `--timeout` inside the old implementation.
    Stall,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::None,
        Fault::Kill,
        Fault::Stop,
        Fault::Transform,
        Fault::Alloc,
        Fault::Init,
        Fault::Remove,
        Fault::Stall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::Transform => "transform",
            Fault::Alloc => "alloc",
            Fault::Init => "init",
            Fault::Remove => "remove",
            Fault::Stall => "stall",
        }
    }

    fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|fault| fault.name() == name)
    }
}

/// The controller's phases, as `--test-pause-after` names them.
const PHASES: [&str; 7] = [
    "attach",
    "gate",
    "drain",
    "quiesce",
    "wait+confirm",
    "transfer",
    "commit",
];

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub swaps: usize,
    /// Devices under load or holding data (at least 4); a scratch device
    /// for the removal rounds comes on top.
    pub devices: usize,
    pub seed: u64,
}

/// One planned round.
#[derive(Clone, Debug)]
struct Round {
    device: usize,
    fault: Fault,
    /// The phase to kill after, or a delay in ms for stop and remove.
    param: String,
}

/// Every fault at least once, the rest mostly plain swaps.
fn plan(options: &SoakOptions) -> Vec<Round> {
    let mut rng = fastrand::Rng::with_seed(options.seed);
    let mut faults: Vec<Fault> = Fault::ALL.to_vec();
    while faults.len() < options.swaps {
        faults.push(if rng.u8(0..2) == 0 {
            Fault::None
        } else {
            Fault::ALL[rng.usize(1..Fault::ALL.len())]
        });
    }
    rng.shuffle(&mut faults);
    faults
        .into_iter()
        .map(|fault| Round {
            device: rng.usize(0..options.devices),
            fault,
            param: match fault {
                Fault::Kill => PHASES[rng.usize(0..PHASES.len())].to_owned(),
                Fault::Stop | Fault::Remove => rng.u32(0..2500).to_string(),
                _ => "-".to_owned(),
            },
        })
        .collect()
}

/// The guest side. Rounds arrive as `round N DEVICE FAULT PARAM` lines.
const SCRIPT: &str = r#"
# Device roles: 0 ext4 + fio (buffered), 1 ext4 + fio (direct), 2 raw fio,
# 3.. idle with a known pattern; a scratch device for removal rounds.
add disk0 96; add disk1 96; add disk2 64
i=3; while [ $i -lt $DEVICES ]; do add disk$i 8; i=$((i + 1)); done
scratch=0; add scratch$scratch 4
modules() { grep '^lsw' /proc/modules | cut -d' ' -f1,3 | sort; }
# Before anything opens the devices: mounts and open files hold references.
modules > /tmp/modules.start
mkfs.ext4 -q /dev/lswloop0; mkfs.ext4 -q /dev/lswloop1
mkdir -p /mnt/a /mnt/b; mount -t ext4 /dev/lswloop0 /mnt/a; mount -t ext4 /dev/lswloop1 /mnt/b
i=3; while [ $i -lt $DEVICES ]; do
    dd if=/dev/urandom of=/tmp/pattern$i bs=1M count=8 2>/dev/null
    dd if=/tmp/pattern$i of=/dev/lswloop$i bs=1M oflag=direct 2>/dev/null
    i=$((i + 1))
done
FIO="--bs=4k --rw=randwrite --verify=crc32c --verify_backlog=64 --verify_fatal=1 --ioengine=psync --time_based --runtime=20"
load() {
    name=$1; shift; n=0
    while [ ! -e /tmp/stop ]; do
        n=$((n + 1))
        fio "$@" $FIO > /tmp/fio-$name-$n.txt 2>&1 || echo "$name run $n" >> /tmp/fio-failed
    done
    echo $n > /tmp/fio-$name.runs
}
load ext4-buffered --directory=/mnt/a --size=16M --name=buffered --direct=0 &
load ext4-direct --directory=/mnt/b --size=16M --name=direct --direct=1 &
load raw --filename=/dev/lswloop2 --size=48M --name=raw --direct=1 &
sleep 2

impl_of() { grep "^$1 " /sys/kernel/lswloop/devices | sed -n 's/.* impl=\([^ ]*\).*/\1/p'; }
loaded() { grep -q "^$1 " /proc/modules; }
users() { grep -c " impl=$1" /sys/kernel/lswloop/devices; }
knobs_off() {
    for m in lswloop_v1 lswloop_v2; do
        loaded $m || continue
        for k in stall_ms fail_import fail_alloc; do echo 0 > /sys/module/$m/parameters/$k; done
    done
    echo 0 > /sys/module/lsw_core/parameters/fail_register
}
# No swap in progress on any instance (a killed controller's is aborted
# when its handle closes; a stopped one's at the core's deadline).
settled() {
    t=0
    while grep -q ' swapping' /sys/kernel/lswloop/devices; do
        t=$((t + 1)); [ $t -lt 100 ] || { echo "ROUND-FAIL a swap is still in progress 10 s later"; return 1; }
        usleep 100000
    done
}
now() { cut -d' ' -f1 /proc/uptime; }

round() {
    n=$1; dev=$2; fault=$3; param=$4
    [ $fault = remove ] && dev=$scratchdev
    from=$(impl_of $dev)
    case $from in lswloop_v1) to=lswloop_v2 ;; *) to=lswloop_v1 ;; esac
    timeout=5s; force=
    case $fault in
    transform|alloc)
        loaded $to || insmod /modules/$to.ko
        [ $fault = transform ] && echo 1 > /sys/module/$to/parameters/fail_import
        [ $fault = alloc ] && echo 1 > /sys/module/$to/parameters/fail_alloc ;;
    init)
        if loaded $to && [ $(users $to) -gt 0 ]; then
            # Move the others off NEW first (plain swaps, reported as such).
            loopswap swap --all --to /modules/$from.ko --json > /tmp/out 2> /tmp/err; rc=$?
            after=$from; [ $(users $to) -eq 0 ] || after=$to
            echo "ROUND n=$n.0 dev=all fault=none param=- from=$to to=$from rc=$rc after=$after $(facts)"
        fi
        loaded $to && rmmod $to
        echo 1 > /sys/module/lsw_core/parameters/fail_register ;;
    stall)
        # The gate's own timeout is under test, not the estimate that
        # would refuse before the gate closes.
        timeout=1s; force=--force-wait
        echo 3000 > /sys/module/$from/parameters/stall_ms
        # A request inside the stall, whatever the device's load.
        dd if=/dev/$dev of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null &
        usleep 200000 ;;
    stop) timeout=2s ;;
    esac
    # In a subshell that execs it, so that $! is the controller itself.
    swap() { (exec loopswap swap $dev --to /modules/$to.ko --json --timeout $timeout $force "$@" > /tmp/out 2> /tmp/err); }
    swap_bg() { (exec loopswap swap $dev --to /modules/$to.ko --json --timeout $timeout $force "$@" > /tmp/out 2> /tmp/err) & pid=$!; }
    rm -f /tmp/out /tmp/err
    case $fault in
    kill)
        swap_bg --test-pause-after $param
        while kill -0 $pid 2>/dev/null && ! grep -q 'pausing after' /tmp/err 2>/dev/null; do usleep 20000; done
        kill -9 $pid 2>/dev/null; wait $pid; rc=$? ;;
    stop)
        swap_bg
        usleep $((param * 1000)); kill -STOP $pid 2>/dev/null
        sleep 4; kill -CONT $pid 2>/dev/null; wait $pid; rc=$? ;;
    remove)
        swap_bg
        usleep $((param * 1000))
        echo $dev > /sys/kernel/lswloop/remove || echo "ROUND-FAIL n=$n removing $dev failed"
        wait $pid; rc=$? ;;
    *) swap; rc=$? ;;
    esac
    knobs_off
    settled
    after=$(impl_of $dev)
    if [ $fault = remove ]; then
        # A new device may take the removed one's free id: after reading.
        scratch=$((scratch + 1)); add scratch$scratch 4
        scratch_device
    fi
    echo "ROUND n=$n dev=$dev fault=$fault param=$param from=$from to=$to rc=$rc after=${after:-gone} $(facts)"
    i=0; while [ $i -lt $DEVICES ]; do
        timeout 30 dd if=/dev/lswloop$i of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null \
            || echo "ROUND-FAIL n=$n lswloop$i does not serve"
        i=$((i + 1))
    done
}
# What the report says: committed, blackout, the first error.
facts() {
    echo "committed=$(grep -c '"committed":true' /tmp/out 2>/dev/null)" \
        "blackout_us=$(grep -o '"blackout_us":[0-9]*' /tmp/out 2>/dev/null | head -n 1 | cut -d: -f2)" \
        "says=$(tail -n 1 /tmp/err 2>/dev/null | tr ' =' '_:' | cut -c1-160)"
}
# The device backed by the newest scratch file, by its backing file's name
# (a new device may take a removed one's free id, anywhere in the list).
scratch_device() {
    scratchdev=$(grep " backing=scratch$scratch.img " /sys/kernel/lswloop/devices | cut -d' ' -f1)
    case $scratchdev in lswloop[0-9]*) ;; *)
        echo "ROUND-FAIL the device of scratch$scratch.img reads as '$scratchdev'"
        cat /sys/kernel/lswloop/devices ;;
    esac
}
scratch_device
set +e
"#;

const END: &str = r#"
touch /tmp/stop
wait
echo "== fio-runs"; cat /tmp/fio-*.runs
echo "== fio-failed"; cat /tmp/fio-failed 2>/dev/null
echo "== fio-errors"; grep -h ' err=' /tmp/fio-*-*.txt | grep -vc ' err= 0'
echo "== fio-ok"; grep -h ' err= 0' /tmp/fio-*-*.txt | wc -l
umount /mnt/a; umount /mnt/b
echo "== fsck"
for d in 0 1; do
    if fsck.ext4 -fn /dev/lswloop$d > /tmp/fsck.txt 2>&1; then echo "lswloop$d clean"; else echo "lswloop$d DIRTY"; cat /tmp/fsck.txt; fi
done
echo "== patterns"
i=3; while [ $i -lt $DEVICES ]; do
    if dd if=/dev/lswloop$i bs=1M count=8 iflag=direct 2>/dev/null | cmp -s - /tmp/pattern$i; then echo "lswloop$i ok"; else echo "lswloop$i DIFFERS"; fi
    i=$((i + 1))
done
# Back to the start: every instance on v1, v2 unloaded, one scratch device.
[ $(users lswloop_v2) -gt 0 ] && loopswap swap --all --to /modules/lswloop_v1.ko > /tmp/final.txt 2>&1
loaded lswloop_v2 && rmmod lswloop_v2
echo "== final"; grep -c ' impl=lswloop_v1' /sys/kernel/lswloop/devices; grep -c ' impl=' /sys/kernel/lswloop/devices
echo "== modules"; modules > /tmp/modules.end; if cmp -s /tmp/modules.start /tmp/modules.end; then echo same; else echo DIFFER; cat /tmp/modules.start /tmp/modules.end; fi
echo "== probes"; grep -c loopswap /sys/kernel/tracing/kprobe_events
# kprobe.multi links do not show in kprobe_events: ftrace lists what they hook.
echo "== traced"; grep -c lswloop /sys/kernel/tracing/enabled_functions
echo "== status"; loopswap status | grep -vc ' open .* -$'
echo "== end"
"#;

/// One round's outcome, from its `ROUND` line.
#[derive(Clone, Debug)]
struct Outcome {
    line: String,
    /// The round's number (`N`, or `N.0` for an init round's preparation).
    n: String,
    fault: Fault,
    param: String,
    rc: i32,
    committed: bool,
    from: String,
    to: String,
    after: String,
    blackout_us: Option<u64>,
    says: String,
}

fn parse_round(line: &str) -> Option<Outcome> {
    let facts: BTreeMap<&str, &str> = line
        .strip_prefix("ROUND ")?
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .collect();
    Some(Outcome {
        line: line.to_owned(),
        n: facts.get("n")?.to_string(),
        fault: Fault::from_name(facts.get("fault")?)?,
        param: facts.get("param")?.to_string(),
        rc: facts.get("rc")?.parse().ok()?,
        committed: facts.get("committed").is_some_and(|c| *c != "0"),
        from: facts.get("from")?.to_string(),
        to: facts.get("to")?.to_string(),
        after: facts.get("after").unwrap_or(&"-").to_string(),
        blackout_us: facts.get("blackout_us").and_then(|b| b.parse().ok()),
        says: facts.get("says").unwrap_or(&"").replace('_', " "),
    })
}

impl Outcome {
    /// What went wrong with this round, if its outcome is not one its fault
    /// allows. A plain swap may abort (quiescence not proven in time): that
    /// is counted, not failed; what it may never do is change the
    /// implementation without committing, or the reverse.
    fn violation(&self) -> Option<String> {
        let on = |module: &str| self.after == module;
        let unchanged = on(&self.from);
        let why = match self.fault {
            _ if self.after == "gone" && self.fault != Fault::Remove => "the device is gone",
            // 0 committed, 1 aborted or refused; anything else (a panic, a
            // usage error) is the controller failing, never an abort.
            Fault::None | Fault::Stop if !matches!(self.rc, 0 | 1) => {
                "the controller exited with neither 0 nor 1"
            }
            // Removed before the controller looked: refused as unknown (2).
            Fault::Remove
                if !(matches!(self.rc, 0 | 1) || self.rc == 2 && self.says.contains("no instance named")) =>
            {
                "the controller exited with neither 0, 1 nor an unknown-instance refusal"
            }
            Fault::Transform | Fault::Alloc | Fault::Init if self.rc != 1 => {
                "the swap did not fail with status 1"
            }
            // A stall aborts the swap only if a stalled request is inside
            // when the gate closes; if the gate found none, committing is
            // right, and then it must be on NEW.
            Fault::Stall if self.committed && (self.rc != 0 || !on(&self.to)) => "committed but not on NEW",
            Fault::Stall if self.committed => return None,
            Fault::Stall if self.rc != 1 => "the swap did not fail with status 1",
            Fault::None | Fault::Stop if self.committed && !on(&self.to) => "committed but not on NEW",
            Fault::None | Fault::Stop if !self.committed && !unchanged => "not committed but not on OLD",
            Fault::Kill if self.rc != 137 => "the controller was not killed",
            Fault::Kill if self.param == "commit" && !on(&self.to) => "killed after commit but not on NEW",
            Fault::Kill if self.param != "commit" && !unchanged => "killed before commit but not on OLD",
            Fault::Transform | Fault::Alloc if self.rc == 0 || !unchanged => {
                "an import failure did not abort"
            }
            Fault::Transform | Fault::Alloc if !self.says.contains("could not import") => {
                "the report does not say the import failed"
            }
            Fault::Init if self.rc == 0 || !unchanged => "a failed init did not refuse the swap",
            Fault::Init if !self.says.contains("did not load") => "the report does not say the load failed",
            Fault::Stall if !unchanged => "a stall past --timeout did not abort",
            Fault::Stall if !self.says.contains("did not become quiescent") => {
                "the report does not say quiescence was not reached"
            }
            Fault::Remove if self.after != "gone" => "the removed device is still listed",
            _ => return None,
        };
        Some(format!("{why}: {}", self.line))
    }
}

/// The summary of a soak run.
#[derive(Clone, Debug)]
pub struct SoakSummary {
    pub seed: u64,
    pub rounds: usize,
    pub committed: usize,
    /// Rounds that did not commit, by fault.
    pub not_committed: BTreeMap<String, usize>,
    /// Rounds by fault.
    pub by_fault: BTreeMap<String, usize>,
    pub blackout_us: Vec<u64>,
    /// Plain swaps that did not commit, with what they said.
    pub plain_aborts: Vec<String>,
    pub fio_runs: usize,
    pub json: serde_json::Value,
    pub table: String,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Runs the soak in the VM. Any lost data, leak, kernel problem or round
/// outcome its fault does not allow is an error naming it.
pub fn run(options: &SoakOptions) -> anyhow::Result<SoakSummary> {
    if options.devices < 4 {
        bail!(
            "--devices {}: the soak needs at least 4 (ext4 ×2, raw, idle)",
            options.devices
        );
    }
    if options.swaps < Fault::ALL.len() {
        bail!(
            "--swaps {}: at least {} so that every fault runs",
            options.swaps,
            Fault::ALL.len()
        );
    }
    let rounds = plan(options);
    let mut script = format!("{}DEVICES={}\n{SCRIPT}", vm::LSWLOOP_SETUP, options.devices);
    for (n, round) in rounds.iter().enumerate() {
        let _ = writeln!(
            script,
            "round {} lswloop{} {} {}",
            n + 1,
            round.device,
            round.fault.name(),
            round.param
        );
    }
    script.push_str(END);
    let mut request = vm::VmRequest::new(script);
    // Attach, faults and waits: about 6 s a round under TCG, plus setup.
    request.timeout = Duration::from_secs(300 + 12 * options.swaps as u64);
    let outcome = vm::run(&request)?;
    // The guest's whole output, for reading a failed run round by round.
    let log = json_path().with_file_name("soak-output.txt");
    std::fs::create_dir_all(log.parent().expect("a file in a folder"))?;
    std::fs::write(&log, &outcome.output).with_context(|| format!("writing {}", log.display()))?;
    outcome
        .check()
        .with_context(|| format!("the soak's VM run (its output: {})", log.display()))?;
    let out = &outcome.output;
    let section = |name: &str| vm::section(out, name);

    let mut problems: Vec<String> = out
        .lines()
        .filter(|line| line.starts_with("ROUND-FAIL"))
        .map(str::to_owned)
        .collect();
    let outcomes: Vec<Outcome> = out.lines().filter_map(parse_round).collect();
    // Planned rounds by number (the init rounds' preparatory swaps are n.0).
    let reported: std::collections::BTreeSet<usize> = outcomes
        .iter()
        .filter_map(|outcome| outcome.n.parse().ok())
        .collect();
    if let Some(missing) = (1..=rounds.len()).find(|n| !reported.contains(n)) {
        problems.push(format!(
            "round {missing} did not report ({} of {} did)",
            reported.len(),
            rounds.len()
        ));
    }
    problems.extend(outcomes.iter().filter_map(Outcome::violation));
    let expect = |name: &str, want: &[&str], problems: &mut Vec<String>| {
        let got = section(name);
        if got != want {
            problems.push(format!("{name}: {got:?}, expected {want:?}"));
        }
    };
    expect("fio-failed", &[], &mut problems);
    expect("fio-errors", &["0"], &mut problems);
    expect("fsck", &["lswloop0 clean", "lswloop1 clean"], &mut problems);
    let patterns: Vec<String> = (3..options.devices).map(|i| format!("lswloop{i} ok")).collect();
    let patterns: Vec<&str> = patterns.iter().map(String::as_str).collect();
    expect("patterns", &patterns, &mut problems);
    let instances = (options.devices + 1).to_string();
    expect("final", &[&instances, &instances], &mut problems);
    expect("modules", &["same"], &mut problems);
    expect("probes", &["0"], &mut problems);
    expect("traced", &["0"], &mut problems);
    // Lines of `status` not showing an open gate and no swap: the three
    // header lines and the implementation line.
    expect("status", &["4"], &mut problems);
    let fio_runs: usize = section("fio-runs")
        .iter()
        .filter_map(|n| n.parse::<usize>().ok())
        .sum();
    if fio_runs < 3 {
        problems.push(format!(
            "fio ran {fio_runs} times, expected at least once per load"
        ));
    }

    let summary = summarise(options.seed, &outcomes, fio_runs);
    if !problems.is_empty() {
        bail!(
            "the soak (seed {}) found {} problem(s) (its output: {}):\n{}\n{}",
            options.seed,
            problems.len(),
            log.display(),
            problems.join("\n"),
            summary.table
        );
    }
    Ok(summary)
}

fn summarise(seed: u64, outcomes: &[Outcome], fio_runs: usize) -> SoakSummary {
    let mut by_fault = BTreeMap::new();
    let mut not_committed = BTreeMap::new();
    for outcome in outcomes {
        *by_fault.entry(outcome.fault.name().to_owned()).or_insert(0) += 1;
        if !outcome.committed {
            *not_committed.entry(outcome.fault.name().to_owned()).or_insert(0) += 1;
        }
    }
    let mut blackout_us: Vec<u64> = outcomes
        .iter()
        .filter(|outcome| outcome.committed)
        .filter_map(|outcome| outcome.blackout_us)
        .collect();
    blackout_us.sort_unstable();
    let committed = outcomes.iter().filter(|outcome| outcome.committed).count();
    let plain_aborts: Vec<String> = outcomes
        .iter()
        .filter(|outcome| outcome.fault == Fault::None && !outcome.committed)
        .map(|outcome| outcome.says.clone())
        .collect();
    let (p50, p99, max) = (
        percentile(&blackout_us, 50.0),
        percentile(&blackout_us, 99.0),
        blackout_us.last().copied().unwrap_or(0),
    );
    let mut table = String::new();
    let _ = writeln!(
        table,
        "soak (seed {seed}): {} swaps, {committed} committed",
        outcomes.len()
    );
    let _ = writeln!(table, "{:<10} {:>7} {:>10}", "FAULT", "ROUNDS", "ABORTED");
    for (fault, rounds) in &by_fault {
        let _ = writeln!(
            table,
            "{fault:<10} {rounds:>7} {:>10}",
            not_committed.get(fault).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        table,
        "blackout of committed swaps: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        max as f64 / 1000.0
    );
    let _ = writeln!(table, "fio runs (each verified): {fio_runs}");
    for says in &plain_aborts {
        let _ = writeln!(table, "plain swap aborted: {says}");
    }
    let json = json!({
        "seed": seed,
        "swaps": outcomes.len(),
        "committed": committed,
        "rounds_by_fault": by_fault,
        "not_committed_by_fault": not_committed,
        "blackout_us": { "p50": p50, "p99": p99, "max": max, "all": blackout_us },
        "plain_aborts": plain_aborts,
        "fio_runs": fio_runs,
        "rounds": outcomes.iter().map(|outcome| &outcome.line).collect::<Vec<_>>(),
    });
    SoakSummary {
        seed,
        rounds: outcomes.len(),
        committed,
        not_committed,
        by_fault,
        blackout_us,
        plain_aborts,
        fio_runs,
        json,
        table,
    }
}

/// Where `cargo xtask soak` writes its JSON.
pub fn json_path() -> PathBuf {
    paths::target().join("soak").join("soak.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fault_is_planned_and_the_plan_follows_the_seed() {
        let options = SoakOptions {
            swaps: 40,
            devices: 4,
            seed: 7,
        };
        let rounds = plan(&options);
        assert_eq!(rounds.len(), 40);
        for fault in Fault::ALL {
            assert!(rounds.iter().any(|round| round.fault == fault), "{fault:?}");
        }
        let again: Vec<String> = plan(&options).iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(again, rounds.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>());
    }

    #[test]
    fn round_lines_parse_and_are_judged_by_their_fault() {
        let line = "ROUND n=3 dev=lswloop1 fault=transform param=- from=lswloop_v1 to=lswloop_v2 rc=1 \
                    after=lswloop_v1 committed=0 blackout_us=812 says=loopswap:_transfer:_lswloop_v2_could_not_import";
        let outcome = parse_round(line).unwrap();
        assert_eq!(outcome.fault, Fault::Transform);
        assert_eq!(outcome.blackout_us, Some(812));
        assert_eq!(outcome.violation(), None);
        let wrong = parse_round(&line.replace("after=lswloop_v1", "after=lswloop_v2")).unwrap();
        assert!(wrong.violation().is_some());
        let killed = parse_round(
            &line
                .replace("fault=transform", "fault=kill")
                .replace("rc=1", "rc=0"),
        )
        .unwrap();
        assert!(killed.violation().unwrap().contains("not killed"));
    }
}
