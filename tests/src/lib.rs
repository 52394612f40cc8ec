//! Helpers for the VM tests: run a script in the guest and pick its output
//! apart. The VM's pieces are built by `cargo xtask test`; a missing piece
//! fails the test (a VM test is never skipped).

use serde_json::Value;
pub use xtask::vm::{VmOutcome, VmRequest, section};

/// Runs `script` in the VM and fails unless it exits 0 with a clean kernel log.
pub fn run_ok(script: &str) -> VmOutcome {
    let outcome = run(script);
    if let Err(err) = outcome.check() {
        panic!("{err:#}");
    }
    outcome
}

/// Runs `script` in the VM; the caller checks the outcome.
pub fn run(script: &str) -> VmOutcome {
    xtask::vm::run(&VmRequest::new(script)).unwrap_or_else(|err| panic!("{err:#}"))
}

/// The JSON snapshots in a section.
pub fn snapshots(output: &str, name: &str) -> Vec<Value> {
    section(output, name)
        .into_iter()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("bad JSON {line:?}: {err}")))
        .collect()
}

/// The `inflight` count of one function in a snapshot.
pub fn inflight(snapshot: &Value, function: &str) -> u64 {
    field(snapshot, function, "inflight")
}

/// The `calls` count of one function in a snapshot.
pub fn calls(snapshot: &Value, function: &str) -> u64 {
    field(snapshot, function, "calls")
}

fn field(snapshot: &Value, function: &str, name: &str) -> u64 {
    snapshot["functions"]
        .as_array()
        .expect("functions is an array")
        .iter()
        .find(|f| f["name"] == function)
        .unwrap_or_else(|| panic!("{function} missing from {snapshot}"))[name]
        .as_u64()
        .expect("a count")
}

/// A snapshot's module-wide total.
pub fn total(snapshot: &Value, name: &str) -> u64 {
    snapshot[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} missing from {snapshot}"))
}

pub use xtask::vm::LSWLOOP_SETUP;

/// The `key=value` facts of one device line of /sys/kernel/lswloop/devices.
pub fn device_facts(line: &str) -> std::collections::HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// The first line of a section, parsed as JSON.
pub fn json_in(output: &str, name: &str) -> Value {
    let line = section(output, name)
        .into_iter()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in section {name}:\n{output}"));
    serde_json::from_str(line).unwrap_or_else(|err| panic!("bad JSON {line:?}: {err}"))
}
