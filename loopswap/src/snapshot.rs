//! What a watch reports, as JSON (one object per line) or a table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::time_in_flight::{Estimate, TimeSummary, format_ns};

/// Counts for one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FunctionCount {
    pub name: String,
    /// Frames of this function on threads' stacks now.
    pub inflight: u64,
    /// Calls seen since attach.
    pub calls: u64,
    /// How long its calls stayed inside (outermost frames that returned
    /// since attach); null before the first returns.
    pub time_in_flight: Option<TimeSummary>,
}

/// Frames in flight serving one lsw instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceCount {
    pub id: u32,
    pub inflight: u64,
    /// How long calls through its entry points stayed inside.
    pub time_in_flight: Option<TimeSummary>,
    /// When it will likely be quiescent (frames serving it or any instance).
    pub quiescent_in: Estimate,
}

/// Counts for the whole module at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub module: String,
    /// Frames of the module's functions in flight, summed over threads.
    pub inflight: u64,
    /// Distinct threads (or interrupt contexts) with at least one frame.
    pub threads: u64,
    /// Events that could not be accounted for. Any non-zero value means
    /// the counts may be too high or too low.
    pub missed: u64,
    /// Of `inflight`, frames found on kernel stacks at attach time (the
    /// threads were inside before the probes) that have not left yet.
    pub seeded: u64,
    pub functions: Vec<FunctionCount>,
    /// Functions of the module the kernel refused a probe on: only their
    /// frames found on stacks are counted, not later entries.
    pub unprobed: Vec<String>,
    /// Threads whose kernel stacks could not be read since attach (they
    /// were on a CPU at every read): whether they are inside is unknown.
    pub unknown: Vec<i32>,
    /// With instance attribution (swap): frames per lsw instance.
    pub instances: Vec<InstanceCount>,
    /// Frames of threads serving no known instance (kthreads, timers,
    /// threads found on stacks at attach): they could serve any instance.
    pub unattributed: u64,
    /// When the whole module will likely be quiescent.
    pub quiescent_in: Estimate,
}

impl Snapshot {
    /// One line of JSON.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a snapshot always serialises")
    }

    /// A table of the busy functions (in flight or called), then totals.
    pub fn to_table(&self) -> String {
        let busy: Vec<_> = self
            .functions
            .iter()
            .filter(|function| function.inflight > 0 || function.calls > 0)
            .collect();
        let width = busy.iter().map(|f| f.name.len()).max().unwrap_or(0).max(8);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>12}  {:>9}  {:>9}  {:>9}",
            "FUNCTION", "IN FLIGHT", "CALLS", "P50", "P99", "MAX"
        );
        for function in &busy {
            let [p50, p99, max] = times(function.time_in_flight.as_ref());
            let _ = writeln!(
                out,
                "{:<width$}  {:>9}  {:>12}  {p50:>9}  {p99:>9}  {max:>9}",
                function.name, function.inflight, function.calls
            );
        }
        let idle = self.functions.len() - busy.len();
        if idle > 0 {
            let _ = writeln!(out, "({idle} more functions idle since attach)");
        }
        if !self.unprobed.is_empty() {
            let _ = writeln!(
                out,
                "not probed (only frames found on stacks count): {}",
                self.unprobed.join(", ")
            );
        }
        if !self.unknown.is_empty() {
            let _ = writeln!(
                out,
                "unknown (on a CPU at every stack read, may be inside): threads {:?}",
                self.unknown
            );
        }
        for instance in &self.instances {
            let [p50, p99, max] = times(instance.time_in_flight.as_ref());
            let _ = writeln!(
                out,
                "instance {}: {} in flight, time in flight p50 {p50} p99 {p99} max {max}, quiescent in {}",
                instance.id,
                instance.inflight,
                instance.quiescent_in.describe()
            );
        }
        let _ = writeln!(
            out,
            "{}: {} frames in flight ({} seen on stacks at attach), {} threads inside, {} missed; quiescent in {}",
            self.module,
            self.inflight,
            self.seeded,
            self.threads,
            self.missed,
            self.quiescent_in.describe()
        );
        out
    }
}

/// p50, p99 and max for a table ("-" before any call returned).
pub fn times(summary: Option<&TimeSummary>) -> [String; 3] {
    match summary {
        Some(summary) => [summary.p50_ns, summary.p99_ns, summary.max_ns].map(format_ns),
        None => ["-".into(), "-".into(), "-".into()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            module: "m".into(),
            inflight: 2,
            threads: 1,
            missed: 0,
            seeded: 1,
            functions: vec![
                FunctionCount {
                    name: "a".into(),
                    inflight: 2,
                    calls: 5,
                    time_in_flight: Some(TimeSummary {
                        calls: 5,
                        p50_ns: 1024,
                        p99_ns: 4096,
                        max_ns: 3000,
                        histogram_log2_ns: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1],
                    }),
                },
                FunctionCount {
                    name: "b".into(),
                    inflight: 0,
                    calls: 0,
                    time_in_flight: None,
                },
            ],
            unprobed: vec!["m_exit".into()],
            unknown: vec![],
            instances: vec![InstanceCount {
                id: 3,
                inflight: 1,
                time_in_flight: None,
                quiescent_in: Estimate::default(),
            }],
            unattributed: 1,
            quiescent_in: Estimate {
                ns: 2_000,
                unknown: false,
                held_by: Some("a: thread 7 inside for 1.0 µs".into()),
                overdue: None,
                inside_since_attach: None,
            },
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value: serde_json::Value = serde_json::from_str(&sample().to_json_line()).unwrap();
        assert_eq!(value["module"], "m");
        assert_eq!(value["inflight"], 2);
        assert_eq!(value["threads"], 1);
        assert_eq!(value["missed"], 0);
        assert_eq!(value["functions"][0]["name"], "a");
        assert_eq!(value["functions"][0]["inflight"], 2);
        assert_eq!(value["functions"][0]["calls"], 5);
        assert_eq!(value["functions"].as_array().unwrap().len(), 2);
        assert_eq!(value["functions"][0]["time_in_flight"]["p99_ns"], 4096);
        assert_eq!(
            value["functions"][0]["time_in_flight"]["histogram_log2_ns"][10],
            4
        );
        assert_eq!(value["functions"][1]["time_in_flight"], serde_json::Value::Null);
        assert_eq!(value["quiescent_in"]["ns"], 2000);
        assert_eq!(
            value["instances"][0]["quiescent_in"]["held_by"],
            serde_json::Value::Null
        );
        assert!(!sample().to_json_line().contains('\n'));
    }

    #[test]
    fn table_lists_busy_functions_and_totals() {
        let table = sample().to_table();
        assert!(table.contains("a "));
        assert!(!table.contains("\nb "));
        assert!(table.contains("(1 more functions idle since attach)"));
        assert!(table.contains("2 frames in flight"));
        assert!(table.contains("quiescent in 2.0 µs (a: thread 7"));
        assert!(table.contains("4.1 µs"));
        assert!(table.contains("not probed (only frames found on stacks count): m_exit"));
    }
}
