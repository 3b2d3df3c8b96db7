//! `sluice bench soak`: a server under a long, varied, churning load, watched for leaks.
//!
//! For the whole run, at once: subscribers that connect, read for a few seconds and leave
//! (and come back, with and without a `Last-Event-ID`); a publisher at a steady rate; chat
//! streams read to the end; answers started, followed, cancelled halfway. Every
//! [`SoakBench::sample_every`] the server's resident memory and open files are read from
//! `/proc`, with the counters of what the load did and what failed, and a line of progress is
//! printed. The result says how memory and files moved: after a warm-up, a server that leaks
//! shows a slope, one that does not stays flat.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;
use sluice_sse::EventStream;

use crate::Error;
use crate::procfs::ProcSample;

/// The fraction of the run, from its start, left out of the slopes: caches and pools fill.
const WARM_UP: f64 = 0.2;

/// What to run and for how long.
#[derive(Debug, Clone)]
pub struct SoakBench {
    /// The `sluice` binary: `serve` is started from it.
    pub program: PathBuf,
    /// A directory for the server's store (SQLite, as in production).
    pub data_dir: PathBuf,
    /// How long the load runs.
    pub duration: Duration,
    /// How often the server is sampled.
    pub sample_every: Duration,
    /// Subscribers connected at any moment (each reconnects as it leaves).
    pub subscribers: usize,
    /// Updates published per second.
    pub publish_rate: f64,
    /// Chat loops running at once.
    pub chats: usize,
    /// The HS256 key the server is started with; the publisher's token is minted from it.
    pub jwt_secret: String,
    /// A publisher token for `*`.
    pub publish_token: String,
    /// Print progress lines.
    pub verbose: bool,
    /// Environment variables for the server only (not this process), e.g. a heap profiler's
    /// `LD_PRELOAD` and output (bench/soak-heap.sh).
    pub server_env: Vec<(String, String)>,
}

/// The load's counters, shared by its tasks.
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_errors: AtomicU64,
    subscriptions: AtomicU64,
    subscription_errors: AtomicU64,
    deliveries: AtomicU64,
    chats: AtomicU64,
    answers_cancelled: AtomicU64,
    chat_errors: AtomicU64,
}

/// One reading of the server and of the load.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// The server's resident memory, in KiB.
    pub rss_kib: u64,
    /// The server's open file descriptors.
    pub fds: u64,
    /// Updates published so far.
    pub published: u64,
    /// Publications refused or failed so far.
    pub publish_errors: u64,
    /// Subscriptions opened so far.
    pub subscriptions: u64,
    /// Subscriptions that failed to open, or broke, so far.
    pub subscription_errors: u64,
    /// Events received by subscribers so far.
    pub deliveries: u64,
    /// Chat streams read to their end, and answers cancelled, so far.
    pub chats: u64,
    /// Chat streams that failed so far.
    pub chat_errors: u64,
}

/// What a soak found.
#[derive(Debug, Clone, Serialize)]
pub struct SoakResults {
    /// The settings, for the record.
    pub settings: serde_json::Value,
    /// Every sample, in order.
    pub samples: Vec<SoakSample>,
    /// RSS change per minute after the warm-up (least squares), in KiB.
    pub rss_slope_kib_per_min: f64,
    /// Open-file change per minute after the warm-up (least squares).
    pub fd_slope_per_min: f64,
}

impl SoakBench {
    /// Starts the server, runs the load, samples until the time is up; returns the samples.
    pub async fn run(&self) -> Result<SoakResults, Error> {
        let args: Vec<String> = [
            "serve",
            "--provider",
            "scripted",
            "--jwt-secret",
            &self.jwt_secret,
            "--anonymous",
            "--store",
            &format!("sqlite:{}", self.data_dir.join("soak.db").display()),
            "--history-max-updates",
            "100000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut command = crate::process::pinned(&self.program, None);
        command.env("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "200");
        command.envs(self.server_env.iter().map(|(name, value)| (name, value)));
        let (server, hub) =
            crate::process::spawn_server_with(command, &args, "/.well-known/mercure").await?;
        let pid = server.id().ok_or_else(|| Error::Server("exited at start".into()))?;
        let base = hub.as_str().trim_end_matches("/.well-known/mercure").to_owned();

        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
        let mut tasks = Vec::new();
        for n in 0..self.subscribers {
            let (client, hub, counters, stop) =
                (client.clone(), hub.to_string(), Arc::clone(&counters), Arc::clone(&stop));
            tasks.push(tokio::spawn(subscriber(client, hub, n, counters, stop)));
        }
        {
            let (client, hub, counters, stop) =
                (client.clone(), hub.to_string(), Arc::clone(&counters), Arc::clone(&stop));
            let (rate, token) = (self.publish_rate, self.publish_token.clone());
            tasks.push(tokio::spawn(publisher(client, hub, token, rate, counters, stop)));
        }
        for n in 0..self.chats {
            let (client, base, counters, stop) =
                (client.clone(), base.clone(), Arc::clone(&counters), Arc::clone(&stop));
            tasks.push(tokio::spawn(chatter(client, base, n, counters, stop)));
        }

        let started = Instant::now();
        let mut samples = Vec::new();
        let mut next = started;
        while started.elapsed() < self.duration {
            next += self.sample_every;
            tokio::time::sleep_until(next.into()).await;
            let sample = sample(pid, started, &counters)
                .ok_or_else(|| Error::Server("the server is gone".into()))?;
            if self.verbose {
                eprintln!(
                    "soak {:>5.0}s  rss {:>7.1} MiB  fds {:>5}  published {:>7} ({} failed)  \
                     subscriptions {:>6} ({} failed)  deliveries {:>8}  chats {:>5} ({} failed)",
                    sample.t_s,
                    sample.rss_kib as f64 / 1024.0,
                    sample.fds,
                    sample.published,
                    sample.publish_errors,
                    sample.subscriptions,
                    sample.subscription_errors,
                    sample.deliveries,
                    sample.chats,
                    sample.chat_errors,
                );
            }
            samples.push(sample);
        }
        stop.store(true, Ordering::Relaxed);
        for task in tasks {
            task.abort();
        }
        crate::process::terminate(server, Duration::from_secs(30)).await;
        let settled: Vec<&SoakSample> =
            samples.iter().filter(|s| s.t_s >= WARM_UP * self.duration.as_secs_f64()).collect();
        let per_minute = |value: fn(&SoakSample) -> u64| {
            slope(&settled.iter().map(|s| (s.t_s, value(s) as f64)).collect::<Vec<_>>()) * 60.0
        };
        Ok(SoakResults {
            settings: json!({
                "duration_s": self.duration.as_secs(),
                "sample_every_s": self.sample_every.as_secs(),
                "subscribers": self.subscribers,
                "publish_rate": self.publish_rate,
                "chats": self.chats,
                "store": "sqlite",
            }),
            rss_slope_kib_per_min: per_minute(|s| s.rss_kib),
            fd_slope_per_min: per_minute(|s| s.fds),
            samples,
        })
    }
}

fn sample(pid: u32, started: Instant, counters: &Counters) -> Option<SoakSample> {
    let proc = ProcSample::read(pid)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    Some(SoakSample {
        t_s: started.elapsed().as_secs_f64(),
        rss_kib: proc.rss_kib,
        fds,
        published: get(&counters.published),
        publish_errors: get(&counters.publish_errors),
        subscriptions: get(&counters.subscriptions),
        subscription_errors: get(&counters.subscription_errors),
        deliveries: get(&counters.deliveries),
        chats: get(&counters.chats) + get(&counters.answers_cancelled),
        chat_errors: get(&counters.chat_errors),
    })
}

/// The least-squares slope of `points` (x, y); 0 for fewer than two.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

/// A pseudo-random duration in `[lo, hi)` ms, from `seed` (which it advances).
fn jitter(seed: &mut u64, lo: u64, hi: u64) -> Duration {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    Duration::from_millis(lo + (*seed >> 33) % (hi - lo))
}

/// Subscribes to one of ten topics, reads for 1–10 s, leaves, and again; every third time it
/// comes back with the last id it saw.
async fn subscriber(
    client: reqwest::Client,
    hub: String,
    n: usize,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut seed = n as u64 + 1;
    let mut last_id = String::new();
    for round in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let mut request = client.get(format!("{hub}?topic=/soak/{}", n % 10));
        if round % 3 == 2 && !last_id.is_empty() {
            request = request.header("last-event-id", &last_id);
        }
        counters.subscriptions.fetch_add(1, Ordering::Relaxed);
        let stay = jitter(&mut seed, 1_000, 10_000);
        let read = async {
            let response = request.send().await.ok().filter(|r| r.status().is_success())?;
            let mut events = EventStream::new(response.bytes_stream());
            while let Some(event) = events.next().await {
                let event = event.ok()?;
                counters.deliveries.fetch_add(1, Ordering::Relaxed);
                last_id = event.last_event_id;
            }
            Some(())
        };
        if let Ok(None) = tokio::time::timeout(stay, read).await {
            counters.subscription_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Publishes to the ten topics in turn, `rate` times a second.
async fn publisher(
    client: reqwest::Client,
    hub: String,
    token: String,
    rate: f64,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.001)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tick.tick().await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let topic = format!("/soak/{}", n % 10);
        let data = format!("update {n} {}", "x".repeat(200));
        let sent = client
            .post(&hub)
            .bearer_auth(&token)
            .form(&[("topic", topic.as_str()), ("data", data.as_str())])
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                counters.published.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counters.publish_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Streams chat completions to their end; every fourth round starts an answer, follows it
/// briefly and cancels it instead.
async fn chatter(
    client: reqwest::Client,
    base: String,
    n: usize,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let body = json!({"model": "scripted", "stream": true,
        "messages": [{"role": "user", "content": format!("soak {n}")}]});
    for round in 0u64.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let outcome = if round % 4 == 3 {
            cancel_an_answer(&client, &base, &body).await
        } else {
            stream_a_completion(&client, &base, &body).await
        };
        match outcome {
            Some(true) => counters.answers_cancelled.fetch_add(1, Ordering::Relaxed),
            Some(false) => counters.chats.fetch_add(1, Ordering::Relaxed),
            None => counters.chat_errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// `Some(false)` once the stream reached `[DONE]`.
async fn stream_a_completion(
    client: &reqwest::Client,
    base: &str,
    body: &serde_json::Value,
) -> Option<bool> {
    let response =
        client.post(format!("{base}/v1/chat/completions")).json(body).send().await.ok()?;
    let mut events = EventStream::new(response.error_for_status().ok()?.bytes_stream());
    while let Some(event) = events.next().await {
        if event.ok()?.data == "[DONE]" {
            return Some(false);
        }
    }
    None
}

/// `Some(true)` once an answer, followed for a moment and cancelled, has ended.
async fn cancel_an_answer(
    client: &reqwest::Client,
    base: &str,
    body: &serde_json::Value,
) -> Option<bool> {
    let created: serde_json::Value = client
        .post(format!("{base}/api/generations"))
        .json(body)
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let events_url = format!("{base}{}", created["events_url"].as_str()?);
    let cancel_url = format!("{base}{}", created["cancel_url"].as_str()?);
    let response = client.get(&events_url).send().await.ok()?.error_for_status().ok()?;
    let mut events = EventStream::new(response.bytes_stream());
    events.next().await?.ok()?;
    let _ = client.post(&cancel_url).send().await;
    while let Some(event) = events.next().await {
        if event.ok()?.event_type == "end" {
            return Some(true);
        }
    }
    None
}

/// The Markdown summary of a soak.
pub fn summary(results: &SoakResults) -> String {
    let (Some(first), Some(last)) = (results.samples.first(), results.samples.last()) else {
        return "no samples".to_owned();
    };
    let max_fds = results.samples.iter().map(|s| s.fds).max().unwrap_or(0);
    format!(
        "| figure | value |\n|---|---|\n\
         | duration | {:.0} s |\n\
         | RSS first → last sample | {:.1} → {:.1} MiB |\n\
         | RSS slope after warm-up | {:+.1} KiB/min |\n\
         | open files first → last (max) | {} → {} ({max_fds}) |\n\
         | open-file slope after warm-up | {:+.2} /min |\n\
         | updates published (failed) | {} ({}) |\n\
         | subscriptions opened (failed) | {} ({}) |\n\
         | events delivered | {} |\n\
         | chat streams and cancelled answers (failed) | {} ({}) |\n",
        last.t_s,
        first.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        results.rss_slope_kib_per_min,
        first.fds,
        last.fds,
        results.fd_slope_per_min,
        last.published,
        last.publish_errors,
        last.subscriptions,
        last.subscription_errors,
        last.deliveries,
        last.chats,
        last.chat_errors,
    )
}

#[cfg(test)]
mod tests {
    use super::slope;

    #[test]
    fn slope_of_a_line_and_of_nothing() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 1.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), 0.0);
    }
}
