//! A hub benchmark's results as Markdown, for BENCHMARKS.md and the terminal.

use super::results::HubResults;

/// The results as Markdown: a header, then a table of the steps.
pub fn summary(results: &HubResults) -> String {
    let mut out = String::new();
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let mib = |kib: Option<u64>| opt(kib.map(|k| k as f64 / 1024.0), 1);
    let topics = match results.topics {
        1 => "one topic".to_owned(),
        n => format!("{n} topics"),
    };
    out.push_str(&format!(
        "{} ({}): {} subscribers on {topics} over {} node(s), {}-byte messages, {} worker \
         process(es); server CPUs {}, load generator CPUs {}; {} CPUs ({}), load average at \
         start {}\n\n",
        results.url,
        results.protocol,
        results.subscribers,
        results.nodes,
        results.message_size,
        results.processes,
        results.server_cpus.as_deref().unwrap_or("?"),
        results.loadgen_cpus.as_deref().unwrap_or("?"),
        results.machine.cpus,
        results.machine.cpu_model,
        results.machine.loadavg_start,
    ));
    let c = &results.connect;
    out.push_str(&format!(
        "connect: {} connected in {:.2} s ({:.0}/s), {} failed attempts, {} gave up, \
         {} accept-queue overflows\n",
        c.connected,
        c.seconds,
        c.per_second,
        c.errors,
        c.gave_up,
        c.listen_overflows.map_or("?".to_owned(), |n| n.to_string()),
    ));
    let i = &results.idle;
    out.push_str(&format!(
        "idle: server RSS {} MiB before, {} MiB with {} idle subscribers: {} bytes per subscriber\n\n",
        mib(i.server_rss_before_kib),
        mib(i.server_rss_idle_kib),
        i.subscribers,
        opt(i.bytes_per_subscriber, 0),
    ));
    if let Some(s) = &results.storm {
        out.push_str(&format!(
            "storm: {} of {} reconnected at once in {:.2} s ({:.0}/s), {} failed attempts, {} \
             gave up, {} accept-queue overflows; {} of {} missed updates replayed{} (reconnect \
             order → replayed update p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)\n\n",
            s.reconnected,
            s.subscribers,
            s.reconnect_seconds,
            s.reconnects_per_second,
            s.connect_errors,
            s.gave_up,
            s.listen_overflows.map_or("?".to_owned(), |n| n.to_string()),
            s.replayed,
            s.replay_expected,
            s.replay_seconds.map_or(String::new(), |t| format!(", all within {t:.2} s")),
            s.replay_p50_ms,
            s.replay_p99_ms,
            s.replay_max_ms,
        ));
    }
    out.push_str(
        "| publish/s | published | deliveries/s | delivered | p50 ms | p99 ms | p99.9 ms | max ms \
         | server CPU | loadgen CPU | watched CPU | server writes/s | events/write | server RSS MiB \
         | errors |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in &results.steps {
        let delivered = if s.expected > 0 {
            format!("{:.2}%", s.delivered as f64 * 100.0 / s.expected as f64)
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {}% | {}% | {}% | {} | {} | {} | {} |\n",
            s.rate,
            s.published,
            s.deliveries_per_second,
            delivered,
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            opt(s.server_cpu_percent, 0),
            opt(s.loadgen_cpu_percent, 0),
            opt(s.watched_cpu_percent, 0),
            opt(s.server_writes_per_second, 0),
            opt(
                s.server_writes_per_second
                    .filter(|w| *w > 0.0)
                    .map(|w| s.received_per_second / w),
                1
            ),
            mib(s.server_rss_kib),
            s.publish_errors + s.publish_behind + s.disconnects,
        ));
    }
    if let Some(rate) = results.saturated_at {
        out.push_str(&format!("\nsaturated at {rate} updates/s: higher rates skipped"));
    }
    out.push_str(&format!("\nstreams ended early: {}", results.disconnects));
    if results.resumed > 0 {
        out.push_str(&format!(", reads resumed from their offset: {}", results.resumed));
    }
    if let Some(error) = &results.first_error {
        out.push_str(&format!(" (first: {error})"));
    }
    out.push('\n');
    out
}
