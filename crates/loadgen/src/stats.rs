//! Latency histograms and the counters a worker reports, in a form that crosses a process
//! boundary as one JSON line and merges exactly on the other side.
//!
//! ```
//! use sluice_loadgen::stats::Latency;
//!
//! let mut worker = Latency::new();
//! worker.record_micros(1_500);
//! let mut total = Latency::new();
//! total.merge_buckets(&worker.buckets());
//! assert_eq!(total.count(), 1);
//! assert_eq!(total.quantile_micros(0.99), worker.quantile_micros(0.99));
//! ```

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The largest latency recorded as itself, in microseconds (60 s); larger ones saturate.
pub const MAX_LATENCY_MICROS: u64 = 60_000_000;

/// A latency histogram in microseconds, three significant digits.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram from 1 µs to [`MAX_LATENCY_MICROS`].
    pub fn new() -> Self {
        Latency {
            histogram: Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3)
                .expect("constant bounds are valid"),
        }
    }

    /// Records one latency (0 counts as 1 µs, more than the maximum as the maximum).
    pub fn record_micros(&mut self, micros: u64) {
        self.histogram.saturating_record(micros.max(1));
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The latency at quantile `q` (0.0 to 1.0), in microseconds; 0 when empty.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        if self.histogram.is_empty() { 0 } else { self.histogram.value_at_quantile(q) }
    }

    /// The largest latency recorded, in microseconds; 0 when empty.
    pub fn max_micros(&self) -> u64 {
        self.histogram.max()
    }

    /// The non-empty buckets as `(value, count)` pairs, each value standing for its bucket.
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.histogram
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect()
    }

    /// Adds buckets taken with [`Latency::buckets`] from a histogram of the same bounds: the
    /// result is what one histogram would hold had it recorded both.
    pub fn merge_buckets(&mut self, buckets: &[(u64, u64)]) {
        for &(value, count) in buckets {
            self.histogram.saturating_record_n(value.max(1), count);
        }
    }

    /// Adds another histogram.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.histogram.add(&other.histogram);
    }

    /// Empties the histogram.
    pub fn clear(&mut self) {
        self.histogram.reset();
    }
}

/// Deliveries of the messages published in one step (they carry the step's number).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepDelta {
    /// The step the messages were published in.
    pub step: u32,
    /// Deliveries since the previous report.
    pub count: u64,
    /// Their publish→receive latency buckets (see [`Latency::buckets`]).
    pub buckets: Vec<(u64, u64)>,
}

/// One line a worker writes on its stdout, about every second, and once more when stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerReport {
    /// Subscribers connected now (response head received, 200, stream open).
    pub connected: u64,
    /// Subscribers still trying to connect.
    pub pending: u64,
    /// Connection attempts that failed (refused, non-200, timeout), retries included.
    pub connect_errors: u64,
    /// Subscribers that gave up connecting after their last retry.
    pub gave_up: u64,
    /// Streams that ended or failed after they were open (not those closed on request).
    pub disconnects: u64,
    /// Subscribers connected again after a `reconnect` (a connect storm).
    #[serde(default)]
    pub reconnected: u64,
    /// Durable stream reads that the server ended before the stream, read again from their
    /// offset.
    #[serde(default)]
    pub resumed: u64,
    /// Events received since the start (all steps, plus events without a timestamp).
    pub received: u64,
    /// Events that carried no load-generator timestamp.
    pub untimed: u64,
    /// Per-step deliveries since the previous report.
    pub steps: Vec<StepDelta>,
    /// When the latest subscriber connected, in ns since the Unix epoch (0: none yet).
    pub last_connected_ns: u64,
    /// The first error seen, as an example.
    pub first_error: Option<String>,
    /// Whether this is the worker's last report.
    pub last: bool,
}

/// The sum of the workers' latest reports, and the per-step histograms merged from all of
/// their deltas.
#[derive(Debug, Clone, Default)]
pub struct Aggregate {
    workers: Vec<WorkerReport>,
    heard: Vec<bool>,
    steps: std::collections::BTreeMap<u32, (u64, Latency)>,
}

impl Aggregate {
    /// An aggregate of `workers` workers, none heard from yet.
    pub fn new(workers: usize) -> Self {
        Aggregate {
            workers: vec![WorkerReport::default(); workers],
            heard: vec![false; workers],
            steps: Default::default(),
        }
    }

    /// Takes in a report of worker `index`: its counters replace the previous ones, its step
    /// deltas are added.
    pub fn apply(&mut self, index: usize, mut report: WorkerReport) {
        for delta in report.steps.drain(..) {
            let (count, latency) = self.steps.entry(delta.step).or_default();
            *count += delta.count;
            latency.merge_buckets(&delta.buckets);
        }
        if let Some(slot) = self.workers.get_mut(index) {
            *slot = report;
            self.heard[index] = true;
        }
    }

    /// The workers' counters summed (the `steps` field is left empty).
    pub fn totals(&self) -> WorkerReport {
        let mut total = WorkerReport::default();
        for w in &self.workers {
            total.connected += w.connected;
            total.pending += w.pending;
            total.connect_errors += w.connect_errors;
            total.gave_up += w.gave_up;
            total.disconnects += w.disconnects;
            total.reconnected += w.reconnected;
            total.resumed += w.resumed;
            total.received += w.received;
            total.untimed += w.untimed;
            total.last_connected_ns = total.last_connected_ns.max(w.last_connected_ns);
            if total.first_error.is_none() {
                total.first_error.clone_from(&w.first_error);
            }
        }
        total.last = self.workers.iter().all(|w| w.last);
        total
    }

    /// Whether every worker has reported at least once.
    pub fn heard_from_all(&self) -> bool {
        self.heard.iter().all(|&h| h)
    }

    /// Deliveries of step `step` so far, and their latencies.
    pub fn step(&self, step: u32) -> Option<&(u64, Latency)> {
        self.steps.get(&step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_buckets_give_the_same_quantiles() {
        let mut whole = Latency::new();
        let mut parts = [Latency::new(), Latency::new(), Latency::new()];
        for i in 0..30_000u64 {
            let micros = (i * 7919) % 250_000 + 1;
            whole.record_micros(micros);
            parts[(i % 3) as usize].record_micros(micros);
        }
        let mut merged = Latency::new();
        for part in &parts {
            merged.merge_buckets(&part.buckets());
        }
        assert_eq!(merged.count(), 30_000);
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.quantile_micros(q), whole.quantile_micros(q), "q = {q}");
        }
        assert_eq!(merged.max_micros(), whole.max_micros());
    }

    #[test]
    fn aggregate_sums_counters_and_merges_steps_across_reports() {
        let mut aggregate = Aggregate::new(2);
        let mut latency = Latency::new();
        latency.record_micros(1_000);
        latency.record_micros(3_000);
        let delta = StepDelta { step: 1, count: 2, buckets: latency.buckets() };
        let report = |connected, received| WorkerReport {
            connected,
            received,
            steps: vec![delta.clone()],
            ..WorkerReport::default()
        };
        aggregate.apply(0, report(10, 2));
        aggregate.apply(1, report(5, 2));
        // A later report replaces worker 0's counters and adds its deltas.
        aggregate.apply(0, report(12, 4));
        let totals = aggregate.totals();
        assert_eq!(totals.connected, 17);
        assert_eq!(totals.received, 6);
        let (count, merged) = aggregate.step(1).unwrap();
        assert_eq!(*count, 6);
        assert_eq!(merged.count(), 6);
        assert!(merged.quantile_micros(0.5) >= 999 && merged.quantile_micros(0.5) <= 1_001);
        assert!(merged.max_micros() >= 2_999 && merged.max_micros() <= 3_003);
        assert!(aggregate.step(2).is_none());
        assert!(!totals.last);
        assert!(aggregate.heard_from_all());
        assert!(!Aggregate::new(1).heard_from_all());
    }

    #[test]
    fn reports_cross_as_json() {
        let report = WorkerReport {
            connected: 3,
            steps: vec![StepDelta { step: 0, count: 1, buckets: vec![(1_023, 1)] }],
            first_error: Some("refused".into()),
            ..WorkerReport::default()
        };
        let line = serde_json::to_string(&report).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<WorkerReport>(&line).unwrap(), report);
    }
}
