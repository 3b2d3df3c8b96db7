//! What a hub benchmark measured, as it is written to JSON: the machine, connecting, idle
//! memory, the storm and each publish step.

use std::time::Duration;

use serde::Serialize;

use super::monitor::Snapshot;
use crate::procfs::ProcSample;
use crate::publisher::PublishStats;

/// What the machine is.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs online.
    pub cpus: usize,
    /// The CPU model.
    pub cpu_model: String,
    /// `/proc/loadavg` when the run started.
    pub loadavg_start: String,
}

impl Machine {
    pub(crate) fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(String::new, |(_, m)| m.trim().to_owned()),
            loadavg_start: read_loadavg(),
        }
    }
}

pub(crate) fn read_loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// How connecting went.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult {
    /// Subscribers connected.
    pub connected: u64,
    /// From starting the workers to the last connection.
    pub seconds: f64,
    /// Connections per second.
    pub per_second: f64,
    /// Failed attempts (retries included).
    pub errors: u64,
    /// Subscribers that never connected.
    pub gave_up: u64,
    /// Connections the kernel dropped meanwhile because the server's accept queue was full
    /// (system-wide `ListenOverflows`); each costs its client a SYN retransmission, 1 s.
    pub listen_overflows: Option<u64>,
}

/// The server's memory with idle subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Subscribers connected when the RSS was read.
    pub subscribers: u64,
    /// RSS before any subscriber connected, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// RSS with every subscriber connected and idle, KiB.
    pub server_rss_idle_kib: Option<u64>,
    /// (idle − before) / subscribers, bytes.
    pub bytes_per_subscriber: Option<f64>,
}

/// How a connect storm went.
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// Subscribers connected before the storm (all of them left, then came back).
    pub subscribers: u64,
    /// Subscribers connected again.
    pub reconnected: u64,
    /// Whether all were connected again before the deadline.
    pub all_reconnected: bool,
    /// From the reconnect order to the last subscriber connected again, seconds.
    pub reconnect_seconds: f64,
    /// Reconnections per second over that time.
    pub reconnects_per_second: f64,
    /// Updates published while the subscribers were away.
    pub missed_published: u64,
    /// Replays expected: those updates × the subscribers of their topics.
    pub replay_expected: u64,
    /// Replayed updates received (with `Last-Event-ID`).
    pub replayed: u64,
    /// From the reconnect order until every replay had arrived, seconds (none: not all did
    /// before the deadline).
    pub replay_seconds: Option<f64>,
    /// Reconnect order → replayed update received, median, ms.
    pub replay_p50_ms: f64,
    /// 99th percentile, ms.
    pub replay_p99_ms: f64,
    /// Largest, ms.
    pub replay_max_ms: f64,
    /// Failed connection attempts during the storm.
    pub connect_errors: u64,
    /// Subscribers that gave up.
    pub gave_up: u64,
    /// Connections the kernel dropped for a full accept queue during the storm.
    pub listen_overflows: Option<u64>,
}

/// One publish rate's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Target publish rate, updates/s.
    pub rate: f64,
    /// Updates the hub accepted.
    pub published: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Publishes skipped because every publisher connection was busy.
    pub publish_behind: u64,
    /// Deliveries expected: published × the subscribers of a topic.
    pub expected: u64,
    /// Deliveries of this step's updates (counted until the end of the run).
    pub delivered: u64,
    /// `delivered` over the step's duration.
    pub deliveries_per_second: f64,
    /// Events received during the step's window, per second (whatever step they were from).
    pub received_per_second: f64,
    /// Publish→receive latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Server CPU over the step, % of one core.
    pub server_cpu_percent: Option<f64>,
    /// Load generator CPU (coordinator + workers) over the step, % of one core.
    pub loadgen_cpu_percent: Option<f64>,
    /// The watched process's CPU (the nodes' Redis) over the step, % of one core.
    pub watched_cpu_percent: Option<f64>,
    /// Server RSS at the end of the step, KiB.
    pub server_rss_kib: Option<u64>,
    /// The server's write system calls per second over the step (`/proc/<pid>/io`).
    pub server_writes_per_second: Option<f64>,
    /// Streams that ended during the step.
    pub disconnects: u64,
    /// The first publish error, as an example.
    pub first_publish_error: Option<String>,
}

impl StepResult {
    /// A step's figures from the samples before and after it; the deliveries are added by
    /// [`StepResult::finish`] once every worker has reported.
    pub(super) fn measured(
        rate: f64,
        published: &PublishStats,
        before: &Snapshot,
        after: &Snapshot,
    ) -> Self {
        let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let cpu = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => Some(a.cpu_percent_since(b)),
            _ => None,
        };
        StepResult {
            rate,
            published: published.ok,
            publish_errors: published.errors,
            publish_behind: published.behind,
            expected: 0,
            delivered: 0,
            deliveries_per_second: 0.0,
            received_per_second: after.totals.received.saturating_sub(before.totals.received)
                as f64
                / seconds,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            server_cpu_percent: cpu(&after.server, &before.server),
            loadgen_cpu_percent: cpu(&after.loadgen, &before.loadgen),
            watched_cpu_percent: cpu(&after.watched, &before.watched),
            server_rss_kib: after.server.map(|s| s.rss_kib),
            server_writes_per_second: match (after.server, before.server) {
                (Some(a), Some(b)) => a
                    .write_syscalls
                    .zip(b.write_syscalls)
                    .map(|(a, b)| a.saturating_sub(b) as f64 / seconds),
                _ => None,
            },
            disconnects: after.totals.disconnects.saturating_sub(before.totals.disconnects),
            first_publish_error: published.first_error.clone(),
        }
    }

    /// Adds the deliveries of the step's updates, counted until the end of the run.
    pub(super) fn finish(
        &mut self,
        deliveries: Option<&(u64, crate::stats::Latency)>,
        subscribers: u64,
        duration: Duration,
    ) {
        self.expected = self.published * subscribers;
        if let Some((count, latency)) = deliveries {
            let ms = |q: f64| latency.quantile_micros(q) as f64 / 1e3;
            self.delivered = *count;
            self.deliveries_per_second = *count as f64 / duration.as_secs_f64().max(1e-9);
            self.p50_ms = ms(0.5);
            self.p99_ms = ms(0.99);
            self.p999_ms = ms(0.999);
            self.max_ms = latency.max_micros() as f64 / 1e3;
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HubResults {
    /// The machine.
    pub machine: Machine,
    /// `/proc/loadavg` at the end.
    pub loadavg_end: String,
    /// The hub URL.
    pub url: String,
    /// `mercure` or `nchan`.
    pub protocol: String,
    /// Nodes the subscribers were spread over (1 for a single server).
    pub nodes: usize,
    /// The load generator's open-file limit.
    pub open_file_limit: u64,
    /// Subscribers asked for.
    pub subscribers: u64,
    /// The topic (the base of their names with several).
    pub topic: String,
    /// Topics the subscribers are spread over.
    pub topics: u64,
    /// Bytes of data per update.
    pub message_size: usize,
    /// Seconds per step.
    pub step_seconds: f64,
    /// Worker processes.
    pub processes: usize,
    /// CPUs the server may run on.
    pub server_cpus: Option<String>,
    /// CPUs the coordinator may run on.
    pub loadgen_cpus: Option<String>,
    /// Connecting.
    pub connect: ConnectResult,
    /// Idle memory.
    pub idle: IdleResult,
    /// The connect storm, if one was run.
    pub storm: Option<StormResult>,
    /// One per rate run.
    pub steps: Vec<StepResult>,
    /// The rate that saturated the hub, after which the higher ones were skipped.
    pub saturated_at: Option<f64>,
    /// Streams that ended before the run did.
    pub disconnects: u64,
    /// Durable stream reads the server ended, read again from their offset.
    pub resumed: u64,
    /// The first subscriber error, as an example.
    pub first_error: Option<String>,
}
