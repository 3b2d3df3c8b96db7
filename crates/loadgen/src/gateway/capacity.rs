//! How many requests a second a gateway carries on its core: requests sent at fixed rates,
//! rising step by step (open loop: each starts on its schedule whether or not the earlier ones
//! have finished, as independent users arrive), non-streamed or streamed, each step's latency
//! beside the same rate sent straight to the upstream in the same run. What a gateway adds at
//! a rate is the difference; a gateway's capacity is the highest rate at which it added under
//! the bound at p99 (1 ms by default), with every request answered and sent on time. This is
//! how TensorZero measures gateways (added latency at fixed request rates).
//!
//! Latency is from a request's start to its response's last byte (for a streamed answer, the
//! end of its event stream).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::task::JoinSet;

use super::{GatewayBench, PeerGateway, Quantiles, gateway_args, sample, start};
use crate::Error;
use crate::stats::Latency;

/// The rates to try and how.
#[derive(Debug, Clone)]
pub struct RatePlan {
    /// Requests per second, one step each, in rising order.
    pub rates: Vec<u32>,
    /// How long each step sends.
    pub step: Duration,
    /// Whether requests ask for a streamed answer.
    pub streamed: bool,
    /// A gateway's run stops after the first step whose added p99 passes this.
    pub bound: Duration,
}

/// One step at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct RateStep {
    /// The rate asked for, requests per second.
    pub rate: u32,
    /// Requests answered with a complete 200.
    pub answered: u64,
    /// Requests that failed (a status other than 200, a broken connection, a timeout).
    pub errors: u64,
    /// The rate the requests were actually started at: below `rate` when the load generator
    /// could not keep up, and the step does not count.
    pub sent_rate: f64,
    /// Start → last byte, microseconds.
    pub latency: Quantiles,
    /// The gateway's CPU over the step, % of one core (none straight to the upstream).
    pub cpu_percent: Option<f64>,
    /// 2 when the first attempt at this rate passed the bound and this is the second.
    pub attempts: u32,
}

impl RateStep {
    /// Whether every request was answered and sent on schedule (within 2%).
    pub fn held(&self) -> bool {
        self.errors == 0 && self.sent_rate >= f64::from(self.rate) * 0.98
    }
}

/// One gateway's steps.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityRun {
    /// `sluice`, or the peer's name.
    pub name: String,
    /// The steps run, up to the first past the bound.
    pub steps: Vec<RateStep>,
    /// The highest rate at which it held with its added p99 under the bound (straight to the
    /// upstream: with its p99 under the bound, the highest rate a gateway can be measured at).
    pub capacity: Option<u32>,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityResults {
    /// Whether answers were streamed.
    pub streamed: bool,
    /// Tokens per answer.
    pub tokens: usize,
    /// The bound on added p99, microseconds.
    pub bound_micros: u64,
    /// Straight to the upstream, at every rate it held.
    pub direct: Vec<RateStep>,
    /// Through Sluice, then each peer.
    pub gateways: Vec<CapacityRun>,
}

impl CapacityResults {
    /// The latency straight to the upstream at `rate`, if measured.
    pub fn direct_at(&self, rate: u32) -> Option<&RateStep> {
        self.direct.iter().find(|s| s.rate == rate)
    }
}

/// A request's deadline: past it, it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// One request: POST `body` to `endpoint`, read the whole answer; whether it was a 200.
async fn one(client: &reqwest::Client, endpoint: &super::Endpoint, body: &[u8]) -> bool {
    let mut request = client
        .post(endpoint.url.clone())
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(token) = &endpoint.bearer {
        request = request.bearer_auth(token);
    }
    let Ok(response) = request.send().await else { return false };
    if response.status() != reqwest::StatusCode::OK {
        return false;
    }
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        if chunk.is_err() {
            return false;
        }
    }
    true
}

/// A request's turn, `total` times at `rate` a second from `started`, told by a thread of
/// its own that sleeps between turns. The runtime's timer counts whole milliseconds, so at
/// 4,000 a second it would send four requests at once every millisecond, and the last of
/// each four would wait behind the others in any gateway: a burst a fixed rate does not have.
fn pace(started: Instant, rate: u32, total: u64) -> tokio::sync::mpsc::UnboundedReceiver<()> {
    let (turns, receiver) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for i in 0..total {
            let due = started + Duration::from_secs_f64(i as f64 / f64::from(rate));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if turns.send(()).is_err() {
                return;
            }
        }
    });
    receiver
}

/// Sends requests to `endpoint` at `rate` a second for `plan.step`; the step's figures.
async fn step(
    client: &reqwest::Client,
    endpoint: &super::Endpoint,
    body: &Arc<Vec<u8>>,
    rate: u32,
    plan: &RatePlan,
    pids: &[u32],
) -> RateStep {
    let total = (f64::from(rate) * plan.step.as_secs_f64()).round().max(1.0) as u64;
    let before = sample(pids).ok();
    let started = Instant::now();
    let mut requests = JoinSet::new();
    let mut due = pace(started, rate, total);
    while due.recv().await.is_some() {
        let (client, endpoint, body) = (client.clone(), endpoint.clone(), Arc::clone(body));
        requests.spawn(async move {
            let begun = Instant::now();
            let ok = tokio::time::timeout(REQUEST_TIMEOUT, one(&client, &endpoint, &body))
                .await
                .unwrap_or(false);
            (ok, begun.elapsed())
        });
    }
    let sending = started.elapsed().as_secs_f64();
    let (mut latency, mut answered, mut errors) = (Latency::new(), 0, 0);
    while let Some(done) = requests.join_next().await {
        match done {
            Ok((true, took)) => {
                answered += 1;
                latency.record_micros(took.as_micros() as u64);
            }
            _ => errors += 1,
        }
    }
    // None straight to the upstream: no pids, no sample.
    let cpu_percent = before.and_then(|b| Some(sample(pids).ok()?.cpu_percent_since(&b)));
    // The last request is due (total − 1) / rate after the first.
    let sent_rate =
        if total > 1 { (total - 1) as f64 / sending.max(1e-9) } else { f64::from(rate) };
    RateStep {
        rate,
        answered,
        errors,
        sent_rate,
        latency: Quantiles::of(&latency),
        cpu_percent,
        attempts: 1,
    }
}

impl GatewayBench {
    /// The rate steps straight to the upstream, then through Sluice's gateway and each peer;
    /// stops what it started.
    pub async fn run_capacity(&self, plan: &RatePlan) -> Result<CapacityResults, Error> {
        let cpus = |i: usize| self.pinning.as_ref().map(|p| p[i].as_str());
        if let Some(own) = cpus(2) {
            crate::process::pin_self(own).await?;
        }
        let envs = [
            ("SLUICE_SCRIPTED_TEXT", super::scripted_text(self.tokens)),
            ("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "0".to_owned()),
            ("SLUICE_SCRIPTED_TTFT_MS", "0".to_owned()),
        ];
        let upstream_args = ["serve", "--store", "memory", "--provider", "scripted"];
        let (_upstream, url) = start(self, &upstream_args, &envs, cpus(1)).await?;
        let direct_endpoint = super::Endpoint::chat(url.clone(), None);
        let body = Arc::new(
            serde_json::to_vec(&serde_json::json!({"model": "scripted", "stream": plan.streamed,
                "max_tokens": self.tokens, "messages": [{"role": "user", "content": "bench"}]}))
            .expect("a JSON body"),
        );
        let rates = Runner { plan, body, progress: self.progress };
        let direct = rates.steps("direct", &direct_endpoint, &[], None).await;

        let args = gateway_args(self, "gateway", &url, None)?;
        let (gateway, through) = start(self, &args, &[], cpus(0)).await?;
        let pid = gateway.id().ok_or_else(|| Error::Server("no gateway pid".into()))?;
        let sluice = super::Endpoint::chat(through, None);
        let mut gateways = vec![rates.steps("sluice", &sluice, &[pid], Some(&direct)).await];
        drop(gateway);
        for peer in &self.peers {
            let PeerGateway { name, .. } = peer;
            let (group, endpoint) = self.start_peer(peer, &url).await?;
            gateways.push(rates.steps(name, &endpoint, &group.pids(), Some(&direct)).await);
            group.stop(Duration::from_secs(5)).await;
        }
        let direct = direct.steps;
        Ok(CapacityResults {
            streamed: plan.streamed,
            tokens: self.tokens,
            bound_micros: plan.bound.as_micros() as u64,
            direct,
            gateways,
        })
    }
}

/// Runs the plan's steps against one endpoint.
struct Runner<'a> {
    plan: &'a RatePlan,
    body: Arc<Vec<u8>>,
    progress: bool,
}

impl Runner<'_> {
    /// Whether a step straight to the upstream can be a baseline: it held, with its own p99
    /// within the bound. Past that the upstream's and the load generator's core is saturated,
    /// and what a gateway adds there is not the gateway's.
    fn usable(&self, direct: &RateStep) -> bool {
        direct.held() && direct.latency.p99 <= self.plan.bound.as_micros() as u64
    }

    /// The steps through `name` (processes `pids`), rising until one does not hold or, with
    /// `direct` to compare with, adds more than the bound at p99, or the direct step at that
    /// rate is no baseline ([`usable`](Self::usable)). Without `direct` (the direct path
    /// itself), until a step is no baseline.
    async fn steps(
        &self,
        name: &str,
        endpoint: &super::Endpoint,
        pids: &[u32],
        direct: Option<&CapacityRun>,
    ) -> CapacityRun {
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a client");
        // A few requests first, so that connections and lazily made state are in place.
        for _ in 0..20 {
            one(&client, endpoint, &self.body).await;
        }
        let mut run = CapacityRun { name: name.to_owned(), steps: Vec::new(), capacity: None };
        for &rate in &self.plan.rates {
            let baseline = match direct {
                Some(direct) => match direct.steps.iter().find(|s| s.rate == rate) {
                    Some(baseline) if self.usable(baseline) => Some(baseline.latency.p99),
                    _ => break,
                },
                None => None,
            };
            // A step past the bound is run once more, and the second counts: on this shared
            // machine a stall of tens of milliseconds now and then (seen through nginx as
            // much as through Sluice) would otherwise end a run at a rate it holds.
            let mut attempts = 0;
            let (result, passed) = loop {
                attempts += 1;
                let mut result = step(&client, endpoint, &self.body, rate, self.plan, pids).await;
                result.attempts = attempts;
                let added = baseline.map(|b| result.latency.p99 as i64 - b as i64);
                if self.progress {
                    let added = added
                        .map_or(String::new(), |a| format!(", added {:+.2} ms", a as f64 / 1e3));
                    eprintln!(
                        "  {name} at {rate}/s: p99 {:.2} ms{added}, {} answered, {} errors, sent at {:.0}/s",
                        result.latency.p99 as f64 / 1e3,
                        result.answered,
                        result.errors,
                        result.sent_rate
                    );
                }
                let within = match added {
                    Some(added) => added <= self.plan.bound.as_micros() as i64,
                    None => self.usable(&result),
                };
                let passed = result.held() && within;
                if passed || attempts == 2 {
                    break (result, passed);
                }
            };
            run.steps.push(result);
            if !passed {
                break;
            }
            run.capacity = Some(rate);
        }
        run
    }
}

/// The results as Markdown: each rate's p99 straight and what each gateway added.
pub fn summary(results: &CapacityResults) -> String {
    let mode = if results.streamed { "streamed" } else { "non-streamed" };
    let mut out = format!(
        "Capacity, {mode} answers of {} tokens (added p99 bound {:.2} ms):\n\n\
         | gateway | rate/s | p50 ms | p99 ms | added p99 ms | errors | sent/s | CPU % |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        results.tokens,
        results.bound_micros as f64 / 1e3
    );
    let rows = std::iter::once(("direct", &results.direct))
        .chain(results.gateways.iter().map(|g| (g.name.as_str(), &g.steps)));
    for (name, steps) in rows {
        for s in steps {
            let added = match (name, results.direct_at(s.rate)) {
                ("direct", _) | (_, None) => String::new(),
                (_, Some(d)) => {
                    format!("{:+.2}", (s.latency.p99 as f64 - d.latency.p99 as f64) / 1e3)
                }
            };
            out.push_str(&format!(
                "| {name} | {} | {:.2} | {:.2} | {added} | {} | {:.0} | {} |\n",
                s.rate,
                s.latency.p50 as f64 / 1e3,
                s.latency.p99 as f64 / 1e3,
                s.errors,
                s.sent_rate,
                s.cpu_percent.map_or(String::new(), |c| format!("{c:.0}"))
            ));
        }
    }
    out.push('\n');
    for g in &results.gateways {
        let line = match g.capacity {
            Some(rate) => format!("{}: {rate} requests/s within the bound.\n", g.name),
            None => format!("{}: not within the bound at any rate tried.\n", g.name),
        };
        out.push_str(&line);
    }
    out
}
