//! The short soak: 40 v1<->v2 swaps under ext4 and raw fio with every fault
//! kind at least once (controller SIGKILL after a phase, SIGSTOP past the
//! core's deadline, a transformer and an allocation that fail, an init that
//! fails, device removal mid-swap, requests stalled past `--timeout`).
//! `cargo xtask soak` runs the long one.

use xtask::soak::{Fault, SoakOptions, run};

#[test]
fn forty_swaps_with_every_fault_lose_nothing_and_leak_nothing() {
    // A fixed plan, so a red run replays; LOOPSWAP_SOAK_SEED explores others.
    let seed = std::env::var("LOOPSWAP_SOAK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(1);
    // `run` fails on any lost or corrupted data, fsck error, leaked module
    // reference or probe, instance not serving, kernel WARN/BUG/Oops/hung
    // task, or a round whose outcome its fault does not allow.
    let summary = run(&SoakOptions {
        swaps: 40,
        devices: 4,
        seed,
    })
    .unwrap_or_else(|err| panic!("{err:#}"));
    eprintln!("{}", summary.table);
    assert!(summary.rounds >= 40, "{}", summary.table);
    for fault in Fault::ALL {
        assert!(
            summary.by_fault.get(fault.name()).copied().unwrap_or(0) >= 1,
            "{} never ran:\n{}",
            fault.name(),
            summary.table
        );
    }
    // Plain swaps under load commit (an abort would be safe, but a soak
    // where they do not is no soak).
    let plain = summary.by_fault["none"];
    let plain_aborted = summary.not_committed.get("none").copied().unwrap_or(0);
    assert!(plain_aborted * 5 <= plain, "{}", summary.table);
    assert!(summary.fio_runs >= 3, "{}", summary.table);
}
