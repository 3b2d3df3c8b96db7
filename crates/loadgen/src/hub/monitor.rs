//! Watching a run: samples of the server's, a watched process's and the load generator's CPU
//! and memory from `/proc`, with the workers' counters, and a progress line each second.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::workers::Worker;
use crate::procfs::{self, ProcSample};
use crate::stats::{Aggregate, WorkerReport};

/// Samples the server, the watched process and the load generator, and prints a line of
/// progress a second.
pub(super) struct Monitor {
    server_pids: Vec<u32>,
    watch_pid: Option<u32>,
    loadgen_pids: Vec<u32>,
    aggregate: Arc<Mutex<Aggregate>>,
    print: bool,
    started: Instant,
    last_print: Option<Snapshot>,
}

/// The counters at one moment.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    /// When it was read.
    pub(super) at: Instant,
    /// The summed sample of the server processes (one node, or every node of a hub).
    pub(super) server: Option<ProcSample>,
    /// The watched process (the nodes' Redis), if any.
    pub(super) watched: Option<ProcSample>,
    /// The coordinator and its workers, summed.
    pub(super) loadgen: Option<ProcSample>,
    /// The workers' counters, summed.
    pub(super) totals: WorkerReport,
}

impl Monitor {
    /// Watches the server's processes, `watch_pid`, and the load generator: this process and
    /// its `workers`, whose CPU counts against the figures as the server's does.
    pub(super) fn new(
        server_pids: Vec<u32>,
        watch_pid: Option<u32>,
        workers: &[Worker],
        aggregate: Arc<Mutex<Aggregate>>,
        print: bool,
    ) -> Self {
        let mut loadgen_pids = vec![std::process::id()];
        loadgen_pids.extend(workers.iter().filter_map(|w| w.child.id()));
        Monitor {
            server_pids,
            watch_pid,
            loadgen_pids,
            aggregate,
            print,
            started: Instant::now(),
            last_print: None,
        }
    }

    /// Reads every watched process now, with the workers' totals.
    pub(super) fn snapshot(&self) -> Snapshot {
        let loadgen: Vec<ProcSample> =
            self.loadgen_pids.iter().filter_map(|&pid| ProcSample::read(pid)).collect();
        Snapshot {
            at: Instant::now(),
            server: procfs::sample_all(&self.server_pids),
            watched: self.watch_pid.and_then(ProcSample::read),
            loadgen: procfs::sum(&loadgen),
            totals: self.aggregate.lock().unwrap().totals(),
        }
    }

    /// Sleeps for `duration`, with a progress line each second labelled `phase`.
    pub(super) async fn sleep(&mut self, duration: Duration, phase: &str, step: Option<u32>) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
            self.tick(phase, step);
        }
    }

    /// Waits until `done` or `deadline`, printing progress; returns `done()`.
    pub(super) async fn wait_until(
        &mut self,
        phase: &str,
        deadline: Instant,
        done: impl Fn() -> bool,
    ) -> bool {
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.tick(phase, None);
        }
        done()
    }

    /// Waits until no event has arrived for `quiet`, or `max` has passed.
    pub(super) async fn quiesce(&mut self, quiet: Duration, max: Duration) {
        let end = Instant::now() + max;
        let mut received = self.aggregate.lock().unwrap().totals().received;
        let mut since = Instant::now();
        while Instant::now() < end && since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.tick("drain", None);
            let now = self.aggregate.lock().unwrap().totals().received;
            if now != received {
                received = now;
                since = Instant::now();
            }
        }
    }

    /// Prints a line if a second has passed since the last one.
    pub(super) fn tick(&mut self, phase: &str, step: Option<u32>) {
        if !self.print {
            return;
        }
        let now = self.snapshot();
        let Some(last) = &self.last_print else {
            self.last_print = Some(now);
            return;
        };
        let seconds = now.at.duration_since(last.at).as_secs_f64();
        if seconds < 1.0 {
            return;
        }
        let deliveries =
            (now.totals.received - last.totals.received.min(now.totals.received)) as f64 / seconds;
        let p99 = step
            .and_then(|s| {
                self.aggregate.lock().unwrap().step(s).map(|(_, l)| l.quantile_micros(0.99))
            })
            .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1e3));
        let cpu = |now: &Option<ProcSample>, last: &Option<ProcSample>| match (now, last) {
            (Some(now), Some(last)) => format!("{:.0}%", now.cpu_percent_since(last)),
            _ => "-".to_owned(),
        };
        let rss =
            now.server.map_or("-".to_owned(), |s| format!("{:.1} MiB", s.rss_kib as f64 / 1024.0));
        let t = &now.totals;
        eprintln!(
            "[{:>5.1}s] {phase:<8} connected {:>6} (pending {}) deliveries/s {:>9.0} p99 {} \
             errors {}/{} | server cpu {} rss {} | loadgen cpu {}",
            self.started.elapsed().as_secs_f64(),
            t.connected,
            t.pending,
            deliveries,
            p99,
            t.connect_errors,
            t.disconnects,
            cpu(&now.server, &last.server),
            rss,
            cpu(&now.loadgen, &last.loadgen),
        );
        self.last_print = Some(now);
    }
}
