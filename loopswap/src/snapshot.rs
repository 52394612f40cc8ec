//! What a watch reports, as JSON (one object per line) or a table.

use std::fmt::Write as _;

use serde::Serialize;

/// Counts for one function.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FunctionCount {
    pub name: String,
    /// Frames of this function on threads' stacks now.
    pub inflight: u64,
    /// Calls seen since attach.
    pub calls: u64,
}

/// Frames in flight serving one lsw instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceCount {
    pub id: u32,
    pub inflight: u64,
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
        let _ = writeln!(out, "{:<width$}  {:>9}  {:>12}", "FUNCTION", "IN FLIGHT", "CALLS");
        for function in &busy {
            let _ = writeln!(
                out,
                "{:<width$}  {:>9}  {:>12}",
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
        let _ = writeln!(
            out,
            "{}: {} frames in flight ({} seen on stacks at attach), {} threads inside, {} missed",
            self.module, self.inflight, self.seeded, self.threads, self.missed
        );
        out
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
                },
                FunctionCount {
                    name: "b".into(),
                    inflight: 0,
                    calls: 0,
                },
            ],
            unprobed: vec!["m_exit".into()],
            unknown: vec![],
            instances: vec![InstanceCount { id: 3, inflight: 1 }],
            unattributed: 1,
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
        assert!(!sample().to_json_line().contains('\n'));
    }

    #[test]
    fn table_lists_busy_functions_and_totals() {
        let table = sample().to_table();
        assert!(table.contains("a "));
        assert!(!table.contains("\nb "));
        assert!(table.contains("(1 more functions idle since attach)"));
        assert!(table.contains("2 frames in flight"));
        assert!(table.contains("not probed (only frames found on stacks count): m_exit"));
    }
}
