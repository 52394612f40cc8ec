//! How long calls stay inside a module, and from that, when it will be
//! quiescent.
//!
//! The probes stamp each outermost entry (`bpf_ktime_get_ns`) and, when the
//! thread leaves, add the time it stayed inside to a log2 histogram per
//! function and per instance (per CPU; summed here). A frame in flight now
//! has an age; the histogram of its function says how much longer calls
//! that have already lasted that long tend to stay.

use loopswap_common::TimeHistogram;
use serde::Serialize;

/// The quantile of the calls that outlived a frame's age used to estimate
/// when that frame leaves: a cautious estimate, not a typical one.
const ESTIMATE_QUANTILE: f64 = 0.99;

/// Sums one histogram's per-CPU copies.
pub fn sum(per_cpu: &[TimeHistogram]) -> TimeHistogram {
    let mut total = TimeHistogram::ZERO;
    for histogram in per_cpu {
        for (slot, count) in total.buckets.iter_mut().zip(histogram.buckets) {
            *slot += count;
        }
        total.max_ns = total.max_ns.max(histogram.max_ns);
    }
    total
}

/// The upper bound of bucket `b` (calls in it lasted less than this).
fn bucket_end(bucket: usize) -> u64 {
    if bucket + 1 >= 64 {
        u64::MAX
    } else {
        1u64 << (bucket + 1)
    }
}

/// Time in flight of the calls that returned, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TimeSummary {
    /// Calls that returned since attach (outermost frames only).
    pub calls: u64,
    /// Upper bounds of the log2 buckets that hold the median and the 99th
    /// percentile (never above the maximum), and the longest call, in ns.
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// `histogram_log2_ns[b]`: calls that stayed `[2^b, 2^(b+1))` ns; the
    /// last bucket also counts longer calls. Trailing empty buckets are cut.
    pub histogram_log2_ns: Vec<u64>,
}

impl TimeSummary {
    /// `None` when no call has returned yet.
    pub fn of(histogram: &TimeHistogram) -> Option<Self> {
        let calls: u64 = histogram.buckets.iter().sum();
        if calls == 0 {
            return None;
        }
        let used = histogram
            .buckets
            .iter()
            .rposition(|count| *count > 0)
            .map_or(0, |b| b + 1);
        Some(Self {
            calls,
            p50_ns: quantile(histogram, 0.5),
            p99_ns: quantile(histogram, 0.99),
            max_ns: histogram.max_ns,
            histogram_log2_ns: histogram.buckets[..used].to_vec(),
        })
    }
}

/// The upper bound of the bucket where `q` of the calls are reached,
/// capped at the longest call seen.
fn quantile(histogram: &TimeHistogram, q: f64) -> u64 {
    let calls: u64 = histogram.buckets.iter().sum();
    let wanted = ((calls as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (bucket, count) in histogram.buckets.iter().enumerate() {
        seen += count;
        if seen >= wanted {
            return bucket_end(bucket).min(histogram.max_ns.max(1));
        }
    }
    histogram.max_ns
}

/// How much longer a frame that has been inside for `age_ns` will likely
/// stay, from its function's histogram: the 99th percentile of the calls
/// that lasted longer than `age_ns`, minus the age. When no call seen
/// lasted that long (or none returned yet), as long again as it has been
/// inside: nothing suggests it is about to leave.
pub fn remaining_ns(histogram: &TimeHistogram, age_ns: u64) -> u64 {
    if histogram.max_ns <= age_ns {
        return age_ns;
    }
    let mut longer = TimeHistogram::ZERO;
    for (bucket, count) in histogram.buckets.iter().enumerate() {
        if bucket_end(bucket) > age_ns {
            longer.buckets[bucket] = *count;
        }
    }
    longer.max_ns = histogram.max_ns;
    if longer.buckets.iter().all(|count| *count == 0) {
        return age_ns;
    }
    quantile(&longer, ESTIMATE_QUANTILE).max(age_ns) - age_ns
}

/// When a module (or one instance of it) will likely be quiescent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Estimate {
    /// Likely time until no counted frame is left, in ns; 0 when none is in
    /// flight. With `unknown` set, only a lower bound.
    pub ns: u64,
    /// Frames whose age is unknown (found on a stack at attach, entered
    /// while time in flight was off) or threads whose stacks could not be
    /// read: the estimate is then a lower bound.
    pub unknown: bool,
    /// The frame that sets the estimate: "function (thread T, inside for
    /// at least X)".
    pub held_by: Option<String>,
    /// The frame inside longest among those inside longer than every call
    /// of their function that returned since attach: a swap waits such a
    /// thread out with its gate still open (`--wait-out`).
    #[serde(skip)]
    pub overdue: Option<Overdue>,
    /// A frame of an entry point found on a stack at attach: when it
    /// leaves is unknown, and a swap that closed its gate now would wait
    /// for it with callers held, so it waits with the gate open
    /// ("function: thread T inside since before attach, at least X").
    #[serde(skip)]
    pub inside_since_attach: Option<String>,
}

/// A frame inside longer than every call of its function seen returning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overdue {
    /// How long it has been inside.
    pub age_ns: u64,
    /// "function: thread T inside for X".
    pub who: String,
}

impl Estimate {
    /// Keeps the later of the two.
    pub fn add(&mut self, ns: u64, held_by: impl FnOnce() -> String) {
        if ns > self.ns || (self.held_by.is_none() && ns == self.ns) {
            self.ns = ns;
            self.held_by = Some(held_by());
        }
    }

    /// Keeps the older of the overdue frames.
    pub fn add_overdue(&mut self, age_ns: u64, who: impl FnOnce() -> String) {
        if self
            .overdue
            .as_ref()
            .is_none_or(|overdue| age_ns > overdue.age_ns)
        {
            self.overdue = Some(Overdue { age_ns, who: who() });
        }
    }

    /// "29.2 ms", "now", "≥ 29.2 ms" when threads are unknown: for tables.
    pub fn short(&self) -> String {
        match (&self.held_by, self.unknown) {
            (None, false) => "now".into(),
            (None, true) => "unknown".into(),
            (Some(_), false) => format_ns(self.ns),
            (Some(_), true) => format!("≥ {}", format_ns(self.ns)),
        }
    }

    /// "1.2 s (held by ...)", "now", or "unknown (...)".
    pub fn describe(&self) -> String {
        let mut text = match &self.held_by {
            None if !self.unknown => return "now (nothing inside)".into(),
            None => "unknown".into(),
            Some(held_by) => format!("{} ({held_by})", format_ns(self.ns)),
        };
        if self.unknown {
            text.push_str("; threads inside since before attach, or unreadable, may hold it longer");
        }
        text
    }
}

/// A frame inside for `age_ns` has stayed longer than every call of its
/// function seen returning. A function never seen returning (a thread's
/// main loop, or no call finished yet) says nothing about what is usual.
pub fn overdue(histogram: &TimeHistogram, age_ns: u64) -> bool {
    histogram.max_ns > 0 && age_ns > histogram.max_ns
}

/// A duration for people: 850 ns, 12.5 µs, 3.2 ms, 1.40 s.
pub fn format_ns(ns: u64) -> String {
    let value = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", value / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1} ms", value / 1e6)
    } else {
        format!("{:.2} s", value / 1e9)
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use loopswap_common::time_bucket;

    fn histogram(durations: &[u64]) -> TimeHistogram {
        let mut histogram = TimeHistogram::ZERO;
        for ns in durations {
            histogram.buckets[time_bucket(*ns)] += 1;
            histogram.max_ns = histogram.max_ns.max(*ns);
        }
        histogram
    }

    #[test]
    fn a_frame_is_overdue_only_past_every_call_seen_returning() {
        let seen = histogram(&[1_000, 40_000, 3_000_000]);
        assert!(!overdue(&seen, 3_000_000));
        assert!(overdue(&seen, 3_000_001));
        // A function never seen returning (a thread's main loop) says
        // nothing about what is usual.
        assert!(!overdue(&TimeHistogram::ZERO, u64::MAX));
        let mut estimate = Estimate::default();
        estimate.add_overdue(5, || "a".into());
        estimate.add_overdue(3, || "b".into());
        assert_eq!(
            estimate.overdue.as_ref().unwrap().who,
            "a",
            "the older one is kept"
        );
        estimate.add_overdue(9, || "c".into());
        assert_eq!(estimate.overdue.unwrap().age_ns, 9);
    }

    #[test]
    fn summaries_report_bucket_bounds_capped_at_the_maximum() {
        let summary = TimeSummary::of(&histogram(&[100, 120, 130, 5_000])).unwrap();
        assert_eq!(summary.calls, 4);
        assert_eq!(summary.p50_ns, 128);
        assert_eq!(summary.p99_ns, 5_000);
        assert_eq!(summary.max_ns, 5_000);
        assert_eq!(summary.histogram_log2_ns.len(), 13);
        assert!(TimeSummary::of(&TimeHistogram::ZERO).is_none());
    }

    #[test]
    fn per_cpu_copies_add_up() {
        let total = sum(&[histogram(&[10]), histogram(&[10, 1_000])]);
        assert_eq!(total.buckets.iter().sum::<u64>(), 3);
        assert_eq!(total.max_ns, 1_000);
    }

    #[test]
    fn a_young_frame_of_a_fast_function_leaves_soon() {
        let fast = histogram(&[1_000; 100]);
        assert!(remaining_ns(&fast, 10) <= 1_024);
    }

    #[test]
    fn a_frame_older_than_every_call_seen_is_expected_to_stay_as_long_again() {
        let fast = histogram(&[1_000; 100]);
        assert_eq!(remaining_ns(&fast, 3_000_000_000), 3_000_000_000);
        assert_eq!(remaining_ns(&TimeHistogram::ZERO, 500), 500);
    }

    #[test]
    fn only_calls_that_outlived_the_age_count() {
        // Mostly fast, a few calls of about 2 s: a frame already 1 s old
        // is one of the slow ones.
        let mut durations = vec![1_000u64; 1000];
        durations.extend([2_000_000_000; 5]);
        let mixed = histogram(&durations);
        let left = remaining_ns(&mixed, 1_000_000_000);
        assert!((900_000_000..=1_000_000_000).contains(&left), "{left}");
    }

    #[test]
    fn estimates_keep_the_latest_frame_and_say_why() {
        let mut estimate = Estimate::default();
        assert_eq!(estimate.describe(), "now (nothing inside)");
        assert_eq!(estimate.short(), "now");
        estimate.add(5, || "a".into());
        estimate.add(3, || "b".into());
        assert_eq!(estimate.ns, 5);
        assert_eq!(estimate.describe(), "5 ns (a)");
        assert_eq!(estimate.short(), "5 ns");
        estimate.unknown = true;
        assert!(estimate.describe().contains("unreadable"));
        assert_eq!(estimate.short(), "≥ 5 ns");
        assert_eq!(format_ns(1_400_000_000), "1.40 s");
        assert_eq!(format_ns(2_500), "2.5 µs");
    }
}
