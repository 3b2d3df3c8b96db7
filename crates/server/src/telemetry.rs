//! The metrics every part of the server reports with, registered at start so that each one
//! is in `/metrics` (at 0) before anything has happened: a dashboard or an alert on
//! `sluice_upstream_cancelled_total` must not see "no data" until the first cancel.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// The waits bounded by a timeout, as labels of `sluice_timeouts_total{wait=…}`.
pub(crate) const WAITS: &[&str] = &[
    "request_head",
    "request_body",
    "idle_connection",
    "write",
    "upstream_connect",
    "upstream_first_token",
    "upstream_gap",
];

const COUNTERS: &[(&str, &str)] = &[
    ("sluice_updates_published_total", "Updates committed and fanned out."),
    ("sluice_updates_delivered_total", "Updates written to subscribers."),
    (
        "sluice_updates_written_directly_total",
        "Of those, updates the fan-out wrote to an idle subscriber's socket itself.",
    ),
    ("sluice_slow_consumer_disconnects_total", "Subscribers cut off for reading too slowly."),
    ("sluice_replay_failures_total", "Subscriptions ended because history could not be read."),
    (
        "sluice_replay_pages_from_memory_total",
        "Pages of a resuming subscriber's replay read from the window of recent updates.",
    ),
    (
        "sluice_replay_pages_from_store_total",
        "Pages of a resuming subscriber's replay read from the store (older than the window).",
    ),
    (
        "sluice_upstream_cancelled_total",
        "Upstream requests stopped because the reader left or asked.",
    ),
    ("sluice_connections_refused_total", "Connections answered 503 at the connection limit."),
    ("sluice_accept_errors_total", "Failed accepts (out of files, say)."),
    ("sluice_bytes_out_total", "Bytes of event streams written."),
    (
        "sluice_auth_failures_total",
        "Requests refused for a missing, invalid or insufficient credential.",
    ),
    ("sluice_store_failures_total", "Store operations that failed (publish answered 503)."),
];

/// Counters labelled by an API key's name (`key=…`): described here, each key's series
/// appearing with its first request, since keys are made at run time.
const KEY_COUNTERS: &[(&str, &str)] = &[
    ("sluice_key_requests_total", "Gateway requests admitted, by API key name."),
    ("sluice_key_rejected_total", "Gateway requests refused past a key's limit or budget."),
    ("sluice_key_prompt_tokens_total", "Prompt tokens of answers, by API key name."),
    ("sluice_key_completion_tokens_total", "Tokens answers generated, by API key name."),
    ("sluice_key_cancelled_total", "Answers stopped before their end, by API key name."),
];

const GAUGES: &[(&str, &str)] = &[
    ("sluice_subscribers_connected", "Subscribers connected now."),
    ("sluice_generations_active", "Answers being generated now."),
    ("sluice_connections_open", "Open connections."),
];

/// How often the recorder folds histogram samples into their summaries. It keeps every sample
/// it is given until then, or until `/metrics` is read: a server nobody scrapes kept each
/// `sluice_store_append_seconds` it ever recorded (the hour-long soak of issue 16: its heap
/// grew by 0.2 MiB a minute). A second's samples are a few kilobytes.
pub(crate) const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process-wide Prometheus recorder, installed on first use with every metric registered,
/// and a thread that runs its upkeep every [`UPKEEP_EVERY`] (the recorder has no task of its
/// own for it when built without its HTTP listener). Metrics are global (the `metrics`
/// facade), so every server in a process shares both.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        let upkeep = handle.clone();
        let thread = std::thread::Builder::new().name("sluice-metrics".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
        if let Err(error) = thread {
            tracing::warn!(%error, "no metrics upkeep thread: histograms grow until /metrics is read");
        }
        for (name, help) in COUNTERS {
            metrics::describe_counter!(*name, *help);
            metrics::counter!(*name).increment(0);
        }
        for (name, help) in KEY_COUNTERS {
            metrics::describe_counter!(*name, *help);
        }
        for (name, help) in GAUGES {
            metrics::describe_gauge!(*name, *help);
            metrics::gauge!(*name).increment(0.0);
        }
        metrics::describe_counter!("sluice_timeouts_total", "Waits cut short by their bound.");
        for wait in WAITS {
            metrics::counter!("sluice_timeouts_total", "wait" => *wait).increment(0);
        }
        handle
    })
}

/// Counts a wait that hit its bound.
pub(crate) fn count_timeout(wait: &'static str) {
    debug_assert!(WAITS.contains(&wait), "{wait} is not a registered wait");
    metrics::counter!("sluice_timeouts_total", "wait" => wait).increment(1);
}
