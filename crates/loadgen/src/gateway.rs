//! The gateway benchmark: K concurrent streamed answers from a scripted upstream (a `sluice
//! serve --provider scripted`), read straight from the upstream and through a Sluice gateway
//! in front of it, in one run, so what the gateway adds is the difference.
//!
//! Measured per path: time to first token and the gaps between consecutive content chunks
//! (HDR histograms); for the gateway: its RSS with every stream open against idle (memory per
//! open stream) and its CPU; and how long after a client disconnects the upstream sees its
//! request cancelled (polling the upstream's `sluice_upstream_cancelled_total`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_sse::EventStream;
use tokio::process::Child;

use crate::Error;
use crate::process;
use crate::procfs::ProcSample;
use crate::stats::Latency;

/// What to run.
#[derive(Debug, Clone)]
pub struct GatewayBench {
    /// The `sluice` binary, for the upstream and the gateway.
    pub program: PathBuf,
    /// Concurrent streams.
    pub streams: usize,
    /// Answers each stream asks for, one after the other.
    pub rounds: usize,
    /// Tokens per answer.
    pub tokens: usize,
    /// The upstream's pace.
    pub tokens_per_second: f64,
    /// The upstream's time to first token.
    pub time_to_first_token: Duration,
    /// Disconnects to time, for the cancellation figure.
    pub cancels: usize,
    /// CPUs for the gateway, the upstream and this process (`taskset -c` lists), if pinned.
    pub pinning: Option<[String; 3]>,
    /// A directory for the gateway's settings file.
    pub work_dir: PathBuf,
}

/// Quantiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

impl Quantiles {
    fn of(latency: &Latency) -> Self {
        Quantiles {
            count: latency.count(),
            p50: latency.quantile_micros(0.5),
            p99: latency.quantile_micros(0.99),
            max: latency.max_micros(),
        }
    }
}

/// One path's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// Time to first content chunk.
    pub ttft: Quantiles,
    /// Gaps between consecutive content chunks.
    pub gap: Quantiles,
    /// Answers completed.
    pub answers: u64,
    /// Answers that failed.
    pub errors: u64,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayResults {
    /// Straight to the upstream.
    pub direct: PathResult,
    /// Through the gateway.
    pub through: PathResult,
    /// The gateway's RSS before any stream, in KiB.
    pub gateway_rss_idle_kib: u64,
    /// The gateway's RSS with every stream open, in KiB.
    pub gateway_rss_open_kib: u64,
    /// The gateway's CPU over the run through it, in % of one core.
    pub gateway_cpu_percent: f64,
    /// Client disconnect → upstream cancelled, through the gateway (microseconds).
    pub cancel_through: Quantiles,
    /// Client disconnect → upstream cancelled, straight to the upstream (microseconds).
    pub cancel_direct: Quantiles,
    /// Streams.
    pub streams: usize,
}

impl GatewayResults {
    /// Memory per open stream in the gateway, in KiB.
    pub fn rss_per_stream_kib(&self) -> f64 {
        self.gateway_rss_open_kib.saturating_sub(self.gateway_rss_idle_kib) as f64
            / self.streams.max(1) as f64
    }
}

fn body(tokens: usize) -> Value {
    json!({"model": "scripted", "stream": true, "max_tokens": tokens,
           "messages": [{"role": "user", "content": "bench"}]})
}

/// Reads one streamed answer, recording time to first token and gaps.
async fn answer(
    client: &reqwest::Client,
    url: &Url,
    body: &Value,
    ttft: &mut Latency,
    gaps: &mut Latency,
) -> Result<(), String> {
    let started = Instant::now();
    let response = client.post(url.clone()).json(body).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    let mut events = EventStream::new(response.bytes_stream());
    let mut last: Option<Instant> = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| e.to_string())?;
        if event.data == "[DONE]" {
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
        if chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|c| !c.is_empty()) {
            let now = Instant::now();
            match last {
                None => ttft.record_micros(now.duration_since(started).as_micros() as u64),
                Some(previous) => {
                    gaps.record_micros(now.duration_since(previous).as_micros() as u64);
                }
            }
            last = Some(now);
        }
    }
    Err("the stream ended without [DONE]".into())
}

/// K streams × rounds against `url`.
async fn run_path(url: &Url, bench: &GatewayBench) -> PathResult {
    let started = Instant::now();
    let tasks: Vec<_> = (0..bench.streams)
        .map(|_| {
            let (url, body, rounds) = (url.clone(), body(bench.tokens), bench.rounds);
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut ttft, mut gaps, mut ok, mut failed) =
                    (Latency::new(), Latency::new(), 0, 0);
                for _ in 0..rounds {
                    match answer(&client, &url, &body, &mut ttft, &mut gaps).await {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ttft, gaps, ok, failed)
            })
        })
        .collect();
    let (mut ttft, mut gaps, mut answers, mut errors) = (Latency::new(), Latency::new(), 0, 0);
    for task in tasks {
        if let Ok((t, g, ok, failed)) = task.await {
            ttft.merge(&t);
            gaps.merge(&g);
            answers += ok;
            errors += failed;
        }
    }
    PathResult {
        ttft: Quantiles::of(&ttft),
        gap: Quantiles::of(&gaps),
        answers,
        errors,
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// The value of a counter in a Prometheus text page.
async fn counter(client: &reqwest::Client, metrics: &Url, name: &str) -> Result<f64, Error> {
    let text = client
        .get(metrics.clone())
        .send()
        .await
        .map_err(|e| Error::Server(e.to_string()))?
        .text()
        .await
        .map_err(|e| Error::Server(e.to_string()))?;
    Ok(text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0))
}

/// Starts answers through `url`, drops each after its first chunk, and times how long the
/// upstream takes to count the cancellation.
async fn time_cancels(url: &Url, upstream_metrics: &Url, n: usize) -> Result<Quantiles, Error> {
    let client = reqwest::Client::new();
    let name = "sluice_upstream_cancelled_total";
    let mut latency = Latency::new();
    for _ in 0..n {
        let before = counter(&client, upstream_metrics, name).await?;
        let response = client
            .post(url.clone())
            .json(&body(10_000))
            .send()
            .await
            .map_err(|e| Error::Server(e.to_string()))?;
        let mut bytes = response.bytes_stream();
        let _ = bytes.next().await;
        let dropped = Instant::now();
        drop(bytes);
        let deadline = dropped + Duration::from_secs(10);
        while counter(&client, upstream_metrics, name).await? <= before {
            if Instant::now() > deadline {
                return Err(Error::Server("the upstream never saw the cancellation".into()));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latency.record_micros(dropped.elapsed().as_micros() as u64);
    }
    Ok(Quantiles::of(&latency))
}

fn scripted_text(tokens: usize) -> String {
    (0..tokens).map(|n| format!("w{n} ")).collect()
}

async fn start(
    bench: &GatewayBench,
    args: &[&str],
    envs: &[(&str, String)],
    cpus: Option<&str>,
) -> Result<(Child, Url), Error> {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let mut command = process::pinned(&bench.program, cpus);
    command.envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
    process::spawn_server_with(command, &args, "/v1/chat/completions").await
}

fn write_gateway_settings(dir: &Path, upstream: &Url) -> Result<PathBuf, Error> {
    let path = dir.join("gateway.toml");
    let base = format!("http://{}/v1", upstream.authority());
    let text = format!(
        "[[providers]]\nname = \"upstream\"\nkind = \"openai\"\nbase_url = \"{base}\"\nmodels = [\"scripted\"]\nretries = 0\n"
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

impl GatewayBench {
    /// Runs the benchmark and stops what it started.
    pub async fn run(&self) -> Result<GatewayResults, Error> {
        let cpus = |i: usize| self.pinning.as_ref().map(|p| p[i].as_str());
        if let Some(own) = cpus(2) {
            process::pin_self(own).await?;
        }
        let envs = [
            ("SLUICE_SCRIPTED_TEXT", scripted_text(self.tokens.max(10_000))),
            ("SLUICE_SCRIPTED_TOKENS_PER_SECOND", self.tokens_per_second.to_string()),
            ("SLUICE_SCRIPTED_TTFT_MS", self.time_to_first_token.as_millis().to_string()),
        ];
        let upstream_args = ["serve", "--store", "memory", "--provider", "scripted"];
        let (_upstream, direct) = start(self, &upstream_args, &envs, cpus(1)).await?;
        let settings = write_gateway_settings(&self.work_dir, &direct)?;
        let settings = settings.to_string_lossy().into_owned();
        let gateway_args = ["serve", "--store", "memory", "--config", settings.as_str()];
        let (gateway, through) = start(self, &gateway_args, &[], cpus(0)).await?;
        let gateway_pid = gateway.id().ok_or_else(|| Error::Server("no gateway pid".into()))?;
        let metrics = direct.join("/metrics").map_err(|e| Error::Config(e.to_string()))?;

        let direct_result = run_path(&direct, self).await;
        let idle = ProcSample::read(gateway_pid).ok_or_else(|| Error::Server("no /proc".into()))?;
        // Sample the gateway's memory while every stream is open: a quarter into the run.
        let answer_time = self.time_to_first_token.as_secs_f64()
            + self.tokens as f64 / self.tokens_per_second.max(1.0);
        let sampler = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(answer_time / 4.0)).await;
            ProcSample::read(gateway_pid)
        });
        let through_result = run_path(&through, self).await;
        let open = sampler.await.ok().flatten().unwrap_or(idle);
        let after = ProcSample::read(gateway_pid).unwrap_or(open);
        let cancel_through = time_cancels(&through, &metrics, self.cancels).await?;
        let cancel_direct = time_cancels(&direct, &metrics, self.cancels).await?;
        Ok(GatewayResults {
            direct: direct_result,
            through: through_result,
            gateway_rss_idle_kib: idle.rss_kib,
            gateway_rss_open_kib: open.rss_kib,
            gateway_cpu_percent: after.cpu_percent_since(&idle),
            cancel_through,
            cancel_direct,
            streams: self.streams,
        })
    }
}

/// The results as Markdown.
pub fn summary(results: &GatewayResults) -> String {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let added =
        |through: u64, direct: u64| format!("{:+.2}", (through as f64 - direct as f64) / 1000.0);
    let (d, t) = (&results.direct, &results.through);
    let mut out = format!(
        "| {} streams | TTFT p50 ms | TTFT p99 ms | gap p50 ms | gap p99 ms | answers | errors |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        results.streams
    );
    for (name, p) in [("direct to upstream", d), ("through the gateway", t)] {
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            ms(p.ttft.p50),
            ms(p.ttft.p99),
            ms(p.gap.p50),
            ms(p.gap.p99),
            p.answers,
            p.errors
        ));
    }
    out.push_str(&format!(
        "| **added by the gateway** | {} | {} | {} | {} | | |\n\n",
        added(t.ttft.p50, d.ttft.p50),
        added(t.ttft.p99, d.ttft.p99),
        added(t.gap.p50, d.gap.p50),
        added(t.gap.p99, d.gap.p99)
    ));
    out.push_str(&format!(
        "Gateway RSS: {} KiB idle, {} KiB with {} streams open: {:.1} KiB per open stream; \
         gateway CPU {:.1}% of a core.\n\n",
        results.gateway_rss_idle_kib,
        results.gateway_rss_open_kib,
        results.streams,
        results.rss_per_stream_kib(),
        results.gateway_cpu_percent
    ));
    out.push_str(&format!(
        "Client disconnect → upstream cancelled: through the gateway p50 {} ms, max {} ms; \
         straight to the upstream p50 {} ms, max {} ms ({} disconnects each).\n",
        ms(results.cancel_through.p50),
        ms(results.cancel_through.max),
        ms(results.cancel_direct.p50),
        ms(results.cancel_direct.max),
        results.cancel_through.count
    ));
    out
}
