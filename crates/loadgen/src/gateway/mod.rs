//! The gateway benchmark: K concurrent streamed answers from a scripted upstream (a `sluice
//! serve --provider scripted`), read straight from the upstream, through a Sluice gateway in
//! front of it and through peer gateways in front of the same upstream (the LiteLLM proxy, and
//! nginx as a plain relay: what one more HTTP hop costs when it does nothing with the bytes),
//! in one run, so what each gateway adds is the difference.
//!
//! Sluice is also measured through each of the AI clients' protocols it serves ([`Surface`]:
//! the Responses API, the Messages API, the AI SDK's UI message stream) over the same
//! upstream, so what a protocol costs beside Chat Completions is in the same run.
//!
//! With [`CallerChecks`], Sluice is measured again with the checks on who is asking: a gateway
//! that asks every caller for an API key (a record with limits, charged in the store's ledger)
//! or an end user's token (a JWT, verified and charged per subject), so that what the checks
//! add to the first token is the difference from the open gateway's row of the same run.
//!
//! [`capacity`] measures the other way: requests at fixed rising rates, until what a gateway
//! adds passes a bound.
//!
//! Measured per path: time to first token and the gaps between consecutive content chunks
//! (HDR histograms); for each gateway: its RSS with every stream open against idle (memory per
//! open stream) and its CPU; and how long after a client disconnects the upstream sees its
//! request cancelled (polling the upstream's `sluice_upstream_cancelled_total`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Url;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_sse::EventStream;
use tokio::process::Child;

use crate::Error;
use crate::process;

pub mod capacity;
use crate::procfs::{self, ProcSample};
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
    /// Spread the streams' first answers evenly over this long, so that every stream opens
    /// while the others are running (as users arrive) rather than all in the same
    /// millisecond, which measures a connect burst instead of the streams.
    pub ramp: Duration,
    /// Peer gateways measured the same way, one after the other.
    pub peers: Vec<PeerGateway>,
    /// Print the answers completed every few seconds.
    pub progress: bool,
    /// Sluice's protocols other than Chat Completions to measure it through as well.
    pub surfaces: Vec<Surface>,
    /// The paths through one gateway process (Chat Completions and the [`surfaces`], or the
    /// two kinds of checked callers) are measured in this many turns, each path a share of
    /// the rounds a turn, in an order rotated every turn. Measured one whole path after the
    /// other, the first came out ahead of the rest by more than their code explains; in turns
    /// they share the hour and the positions alike. 1: one path after the other.
    ///
    /// [`surfaces`]: GatewayBench::surfaces
    pub turns: usize,
    /// Sluice's store (`--store`): `memory`, or `sqlite` (a file in `work_dir`), where the
    /// callers' limits are charged.
    pub store: GatewayStore,
    /// Measure Sluice again with callers checked, if set.
    pub callers: Option<CallerChecks>,
}

/// Where Sluice's gateway keeps its history and its callers' counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayStore {
    /// In memory.
    Memory,
    /// A SQLite file (the server's default store).
    Sqlite,
}

/// The credentials of a gateway that checks its callers (see [`GatewayBench::callers`]).
#[derive(Debug, Clone)]
pub struct CallerChecks {
    /// An API key the gateway is given as a `[[keys]]` record with limits (models, requests
    /// and tokens per minute, a daily budget) that the run never reaches, so every request is
    /// checked and charged and none refused.
    pub api_key: String,
    /// The gateway's `--jwt-secret`.
    pub jwt_secret: String,
    /// An end-user token signed with it for the audience [`CHAT_AUDIENCE`], with limits the
    /// run never reaches.
    pub end_user_token: String,
}

/// The `--chat-audience` of the gateway that checks its callers.
pub const CHAT_AUDIENCE: &str = "sluice-chat";

/// A protocol a client reads a streamed answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// OpenAI Chat Completions, `/v1/chat/completions`: every gateway speaks it.
    ChatCompletions,
    /// The OpenAI Responses API, `/v1/responses` (kept as an answer in the hub).
    Responses,
    /// The Anthropic Messages API, `/v1/messages`.
    Messages,
    /// The AI SDK's UI message stream, `/api/chat` (an answer in the hub).
    UiMessageStream,
}

/// What one event of a streamed answer is, to a reader timing it.
enum Reading {
    /// A piece of the answer's text.
    Content,
    /// The answer is complete.
    Done,
    /// Anything else.
    Other,
}

impl Surface {
    /// Its name in results (`sluice/responses`).
    pub fn name(self) -> &'static str {
        match self {
            Surface::ChatCompletions => "chat-completions",
            Surface::Responses => "responses",
            Surface::Messages => "messages",
            Surface::UiMessageStream => "ui-message-stream",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Surface::ChatCompletions => "/v1/chat/completions",
            Surface::Responses => "/v1/responses",
            Surface::Messages => "/v1/messages",
            Surface::UiMessageStream => "/api/chat",
        }
    }

    fn body(self, tokens: usize) -> Value {
        let user = json!([{"role": "user", "content": "bench"}]);
        match self {
            Surface::ChatCompletions => {
                json!({"model": "scripted", "stream": true, "max_tokens": tokens, "messages": user})
            }
            Surface::Responses => json!({"model": "scripted", "stream": true,
                "max_output_tokens": tokens, "input": "bench"}),
            Surface::Messages => {
                json!({"model": "scripted", "stream": true, "max_tokens": tokens, "messages": user})
            }
            Surface::UiMessageStream => json!({"model": "scripted", "max_tokens": tokens,
                "id": format!("bench-{}", CHATS.fetch_add(1, Ordering::Relaxed)),
                "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "bench"}]}]}),
        }
    }

    fn read(self, event: &sluice_sse::MessageEvent) -> Result<Reading, String> {
        if event.data == "[DONE]" {
            return Ok(Reading::Done);
        }
        let data: Value = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
        let nonempty = |text: &Value| text.as_str().is_some_and(|t| !t.is_empty());
        let (content, done) = match self {
            Surface::ChatCompletions => (nonempty(&data["choices"][0]["delta"]["content"]), false),
            Surface::Responses => (
                data["type"] == "response.output_text.delta" && nonempty(&data["delta"]),
                matches!(
                    data["type"].as_str(),
                    Some("response.completed" | "response.incomplete" | "response.failed")
                ),
            ),
            Surface::Messages => (nonempty(&data["delta"]["text"]), data["type"] == "message_stop"),
            Surface::UiMessageStream => {
                (data["type"] == "text-delta" && nonempty(&data["delta"]), false)
            }
        };
        Ok(match (content, done) {
            (true, _) => Reading::Content,
            (_, true) => Reading::Done,
            _ => Reading::Other,
        })
    }
}

/// Distinct chat ids for the UI message stream's answers.
static CHATS: AtomicU64 = AtomicU64::new(0);

/// A peer gateway started by a shell command, pinned like Sluice's gateway (see
/// [`process::spawn_command`]): it listens on 127.0.0.1 at the port in [`process::PORT_VAR`]
/// and relays `/v1/chat/completions` to the OpenAI base URL in [`UPSTREAM_VAR`].
#[derive(Debug, Clone)]
pub struct PeerGateway {
    /// Its name in the results (`litellm`).
    pub name: String,
    /// The shell command (it should `exec` the server).
    pub command: String,
    /// A path that answers under 500 once it is ready.
    pub ready_path: Option<String>,
    /// A bearer token its clients must send.
    pub bearer: Option<String>,
}

/// The environment variable that tells a peer gateway its upstream's OpenAI base URL.
pub const UPSTREAM_VAR: &str = "SLUICE_BENCH_UPSTREAM";

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

/// One gateway's figures.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayRun {
    /// Its name (`sluice`, or the peer's).
    pub name: String,
    /// The answers through it.
    pub path: PathResult,
    /// Its RSS before any stream, in KiB (every process of a peer's group).
    pub rss_idle_kib: u64,
    /// Its RSS with every stream open, in KiB.
    pub rss_open_kib: u64,
    /// Its CPU over the run through it, in % of one core.
    pub cpu_percent: f64,
    /// Client disconnect → upstream cancelled (microseconds); none when the upstream did not
    /// see a cancellation within 10 s (the gateway reads the answer to its end).
    pub cancel: Option<Quantiles>,
}

impl GatewayRun {
    /// Memory per open stream, in KiB.
    pub fn rss_per_stream_kib(&self, streams: usize) -> f64 {
        self.rss_open_kib.saturating_sub(self.rss_idle_kib) as f64 / streams.max(1) as f64
    }
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayResults {
    /// Straight to the upstream.
    pub direct: PathResult,
    /// Client disconnect → upstream cancelled, straight to the upstream (microseconds).
    pub cancel_direct: Quantiles,
    /// Through Sluice's gateway, then through each peer.
    pub gateways: Vec<GatewayRun>,
    /// Streams.
    pub streams: usize,
    /// Answers each stream asked for.
    pub rounds: usize,
}

/// One way in: a streaming URL, the protocol it speaks and the bearer token it wants.
#[derive(Debug, Clone)]
struct Endpoint {
    url: Url,
    surface: Surface,
    bearer: Option<String>,
}

impl Endpoint {
    /// Chat Completions at `url` (its `/v1/chat/completions`).
    fn chat(url: Url, bearer: Option<String>) -> Self {
        Endpoint { url, surface: Surface::ChatCompletions, bearer }
    }

    fn post(&self, client: &reqwest::Client, tokens: usize) -> reqwest::RequestBuilder {
        let request = client.post(self.url.clone()).json(&self.surface.body(tokens));
        match &self.bearer {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// Reads one streamed answer, recording time to first token and gaps. A content event is
/// timed by the arrival of the bytes that completed it, not by when this reader has parsed it:
/// a protocol that sends more events around its text (Responses, the UI message stream) would
/// otherwise be charged this reader's parsing of them.
async fn answer(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    tokens: usize,
    ttft: &mut Latency,
    gaps: &mut Latency,
) -> Result<(), String> {
    let started = Instant::now();
    let response = endpoint.post(client, tokens).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()));
    }
    // Microseconds from `started` to the latest chunk: the decoder reads the next chunk only
    // once it has handed out every event the chunks before completed.
    let arrived = Arc::new(AtomicU64::new(0));
    let stamp = Arc::clone(&arrived);
    let chunks = response.bytes_stream().inspect(move |_| {
        stamp.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    });
    let mut events = EventStream::new(chunks);
    let mut last: Option<u64> = None;
    while let Some(event) = events.next().await {
        let event = event.map_err(|e| e.to_string())?;
        let reading = endpoint.surface.read(&event)?;
        if matches!(reading, Reading::Done) {
            return Ok(());
        }
        if matches!(reading, Reading::Content) {
            let at = arrived.load(Ordering::Relaxed);
            match last {
                None => ttft.record_micros(at),
                Some(previous) => gaps.record_micros(at.saturating_sub(previous)),
            }
            last = Some(at);
        }
    }
    Err("the stream ended before the answer did".into())
}

/// No answer may take longer than this, whatever the gateway does: it counts as an error.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// K streams × rounds against `endpoint`, printing the answers done every 5 s with
/// `progress`.
async fn run_path(endpoint: &Endpoint, name: &str, bench: &GatewayBench) -> PathResult {
    answers_through(endpoint, name, bench).await.result()
}

/// The raw figures of the answers through one path, which turns add up.
#[derive(Debug, Clone, Default)]
struct Answers {
    ttft: Latency,
    gaps: Latency,
    answers: u64,
    errors: u64,
    seconds: f64,
}

impl Answers {
    fn add(&mut self, other: &Answers) {
        self.ttft.merge(&other.ttft);
        self.gaps.merge(&other.gaps);
        self.answers += other.answers;
        self.errors += other.errors;
        self.seconds += other.seconds;
    }

    fn result(&self) -> PathResult {
        PathResult {
            ttft: Quantiles::of(&self.ttft),
            gap: Quantiles::of(&self.gaps),
            answers: self.answers,
            errors: self.errors,
            seconds: self.seconds,
        }
    }
}

/// `bench.streams` streams of `bench.rounds` answers each through `endpoint`.
async fn answers_through(endpoint: &Endpoint, name: &str, bench: &GatewayBench) -> Answers {
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let ticker = bench.progress.then(|| {
        let (done, name) = (Arc::clone(&done), name.to_owned());
        let total = (bench.streams * bench.rounds) as u64;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let n = done.load(Ordering::Relaxed);
                let elapsed = started.elapsed().as_secs();
                eprintln!("  {name}: {n} of {total} answers in {elapsed} s");
            }
        })
    });
    let tasks: Vec<_> = (0..bench.streams)
        .map(|i| {
            let (endpoint, tokens, rounds) = (endpoint.clone(), bench.tokens, bench.rounds);
            let done = Arc::clone(&done);
            let start_at = started + bench.ramp.mul_f64(i as f64 / bench.streams as f64);
            tokio::spawn(async move {
                tokio::time::sleep_until(start_at.into()).await;
                let client = reqwest::Client::builder()
                    .timeout(ANSWER_TIMEOUT)
                    .build()
                    .expect("a client with a timeout");
                let (mut ttft, mut gaps, mut ok, mut failed) =
                    (Latency::new(), Latency::new(), 0, 0);
                for _ in 0..rounds {
                    match answer(&client, &endpoint, tokens, &mut ttft, &mut gaps).await {
                        Ok(()) => ok += 1,
                        Err(_) => failed += 1,
                    }
                    done.fetch_add(1, Ordering::Relaxed);
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
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    Answers { ttft, gaps, answers, errors, seconds: started.elapsed().as_secs_f64() }
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

/// Starts answers through `endpoint`, drops each after its first text, and times how long
/// the upstream takes to count the cancellation.
async fn time_cancels(
    endpoint: &Endpoint,
    upstream_metrics: &Url,
    n: usize,
) -> Result<Quantiles, Error> {
    let client = reqwest::Client::new();
    let name = "sluice_upstream_cancelled_total";
    let mut latency = Latency::new();
    for _ in 0..n {
        let before = counter(&client, upstream_metrics, name).await?;
        let response = endpoint
            .post(&client, 10_000)
            .send()
            .await
            .map_err(|e| Error::Server(e.to_string()))?;
        // Dropped after the first piece of text: a gateway may open its stream before it
        // asks the upstream anything, and then there is nothing upstream to cancel yet.
        let mut events = EventStream::new(response.bytes_stream());
        while let Some(Ok(event)) = events.next().await {
            if matches!(endpoint.surface.read(&event), Ok(Reading::Content)) {
                break;
            }
        }
        let dropped = Instant::now();
        drop(events);
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

async fn start<S: AsRef<str>>(
    bench: &GatewayBench,
    args: &[S],
    envs: &[(&str, String)],
    cpus: Option<&str>,
) -> Result<(Child, Url), Error> {
    let args: Vec<String> = args.iter().map(|s| s.as_ref().to_owned()).collect();
    let mut command = process::pinned(&bench.program, cpus);
    command.envs(envs.iter().map(|(k, v)| (*k, v.as_str())));
    process::spawn_server_with(command, &args, "/v1/chat/completions").await
}

/// Writes the settings of a Sluice gateway in front of `upstream` (with `key` as a
/// `[[keys]]` record whose limits no run reaches) and returns the arguments that start it.
fn gateway_args(
    bench: &GatewayBench,
    name: &str,
    upstream: &Url,
    key: Option<&str>,
) -> Result<Vec<String>, Error> {
    let path = bench.work_dir.join(format!("{name}.toml"));
    let base = format!("http://{}/v1", upstream.authority());
    let mut text = format!(
        "[[providers]]\nname = \"upstream\"\nkind = \"openai\"\nbase_url = \"{base}\"\nmodels = [\"scripted\"]\nretries = 0\n"
    );
    if let Some(key) = key {
        text.push_str(&format!(
            "\n[[keys]]\nname = \"bench\"\nkey = \"{key}\"\nmodels = [\"scripted\"]\n\
             requests_per_minute = 100000000\ntokens_per_minute = 100000000000\n\
             token_budget = 100000000000000\nbudget_period = \"day\"\n"
        ));
    }
    std::fs::write(&path, text)?;
    let store = match bench.store {
        GatewayStore::Memory => "memory".to_owned(),
        GatewayStore::Sqlite => {
            format!("sqlite:{}", bench.work_dir.join(format!("{name}.db")).display())
        }
    };
    let settings = path.to_string_lossy().into_owned();
    Ok(["serve", "--store", &store, "--config", &settings].map(str::to_owned).to_vec())
}

/// The RSS and CPU time of a gateway's processes, summed.
fn sample(pids: &[u32]) -> Result<ProcSample, Error> {
    procfs::sample_all(pids).ok_or_else(|| Error::Server(format!("no /proc entry for {pids:?}")))
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
        let metrics = direct.join("/metrics").map_err(|e| Error::Config(e.to_string()))?;
        let direct = Endpoint::chat(direct, None);
        let direct_result = run_path(&direct, "direct", self).await;
        let cancel_direct = time_cancels(&direct, &metrics, self.cancels).await?;

        let args = gateway_args(self, "gateway", &direct.url, None)?;
        let (gateway, through) = start(self, &args, &[], cpus(0)).await?;
        let gateway_pid = gateway.id().ok_or_else(|| Error::Server("no gateway pid".into()))?;
        let mut paths = vec![("sluice".to_owned(), Endpoint::chat(through.clone(), None))];
        for &surface in &self.surfaces {
            let url = through.join(surface.path()).map_err(|e| Error::Config(e.to_string()))?;
            paths.push((
                format!("sluice/{}", surface.name()),
                Endpoint { url, surface, bearer: None },
            ));
        }
        let mut gateways = self.measure(&paths, &[gateway_pid], &metrics).await?;
        drop(gateway);

        if let Some(checks) = &self.callers {
            let mut args = gateway_args(self, "checking", &direct.url, Some(&checks.api_key))?;
            args.extend(
                ["--jwt-secret", &checks.jwt_secret, "--chat-audience", CHAT_AUDIENCE]
                    .map(str::to_owned),
            );
            let (gateway, through) = start(self, &args, &[], cpus(0)).await?;
            let pid = gateway.id().ok_or_else(|| Error::Server("no gateway pid".into()))?;
            let paths =
                [("sluice/api-key", &checks.api_key), ("sluice/end-user", &checks.end_user_token)]
                    .map(|(name, credential)| {
                        (name.to_owned(), Endpoint::chat(through.clone(), Some(credential.clone())))
                    });
            gateways.extend(self.measure(&paths, &[pid], &metrics).await?);
        }

        for peer in &self.peers {
            let (group, endpoint) = self.start_peer(peer, &direct.url).await?;
            let run = self.measure(&[(peer.name.clone(), endpoint)], &group.pids(), &metrics).await;
            group.stop(Duration::from_secs(5)).await;
            gateways.extend(run?);
        }
        Ok(GatewayResults {
            direct: direct_result,
            cancel_direct,
            gateways,
            streams: self.streams,
            rounds: self.rounds,
        })
    }

    /// Starts `peer` (pinned like Sluice's gateway) in front of the upstream at `upstream`
    /// (its Chat Completions URL), and returns it with its own Chat Completions endpoint.
    async fn start_peer(
        &self,
        peer: &PeerGateway,
        upstream: &Url,
    ) -> Result<(process::Group, Endpoint), Error> {
        let cpus = self.pinning.as_ref().map(|p| p[0].as_str());
        let base = format!("http://{}/v1", upstream.authority());
        let group = process::spawn_command(
            &peer.command,
            cpus,
            &[(UPSTREAM_VAR.to_owned(), base)],
            peer.ready_path.as_deref(),
            peer.bearer.as_deref(),
            Duration::from_secs(180),
        )
        .await?;
        let url = Url::parse(&format!("http://{}/v1/chat/completions", group.addr))
            .map_err(|e| Error::Config(e.to_string()))?;
        Ok((group, Endpoint::chat(url, peer.bearer.clone())))
    }

    /// The answers through each of `paths` into one gateway (processes `pids`), in
    /// [`turns`](GatewayBench::turns); for each, the gateway's memory and CPU while it was
    /// read, and how fast a client's disconnect reaches the upstream through it.
    async fn measure(
        &self,
        paths: &[(String, Endpoint)],
        pids: &[u32],
        upstream_metrics: &Url,
    ) -> Result<Vec<GatewayRun>, Error> {
        // One answer through each first, so that lazily made state (connection pools, a first
        // request's imports) is not counted as memory per stream.
        let warm = GatewayBench {
            streams: 1,
            rounds: 1,
            progress: false,
            ramp: Duration::ZERO,
            peers: Vec::new(),
            ..self.clone()
        };
        for (name, endpoint) in paths {
            answers_through(endpoint, name, &warm).await;
        }
        let idle = sample(pids)?;
        let turns = self.turns.clamp(1, self.rounds);
        let mut read = vec![Read::default(); paths.len()];
        for turn in 0..turns {
            let share = GatewayBench {
                rounds: self.rounds / turns + usize::from(turn < self.rounds % turns),
                ..self.clone()
            };
            for at in 0..paths.len() {
                let which = (at + turn) % paths.len();
                let (name, endpoint) = &paths[which];
                read[which].add(&share.read_sampled(endpoint, name, pids).await?);
            }
        }
        let mut runs = Vec::with_capacity(paths.len());
        for ((name, endpoint), read) in paths.iter().zip(read) {
            // A UI message stream's answer outlives its connection (that is the point): a
            // disconnect is not a cancel there.
            let cancel = match endpoint.surface {
                Surface::UiMessageStream => None,
                _ => time_cancels(endpoint, upstream_metrics, self.cancels).await.ok(),
            };
            runs.push(GatewayRun {
                name: name.clone(),
                path: read.answers.result(),
                rss_idle_kib: idle.rss_kib,
                rss_open_kib: read.rss_open_kib.max(idle.rss_kib),
                cpu_percent: read.cpu_seconds / read.wall_seconds.max(f64::MIN_POSITIVE) * 100.0,
                cancel,
            });
        }
        Ok(runs)
    }

    /// The answers through `endpoint`, with the gateway's RSS while every stream is open and
    /// the CPU it spent meanwhile.
    async fn read_sampled(
        &self,
        endpoint: &Endpoint,
        name: &str,
        pids: &[u32],
    ) -> Result<Read, Error> {
        // Sample the memory while every stream is open: a quarter into the answers that start
        // last (with a ramp, the first streams are then in their next answer).
        let answer_time = self.time_to_first_token.as_secs_f64()
            + self.tokens as f64 / self.tokens_per_second.max(1.0);
        let sample_at = self.ramp + Duration::from_secs_f64(answer_time / 4.0);
        let sampled: Vec<u32> = pids.to_vec();
        let sampler = tokio::spawn(async move {
            tokio::time::sleep(sample_at).await;
            sample(&sampled).ok()
        });
        let before = sample(pids)?;
        let answers = answers_through(endpoint, name, self).await;
        let open = sampler.await.ok().flatten().unwrap_or(before);
        let after = sample(pids).unwrap_or(open);
        let wall_seconds = after.at.duration_since(before.at).as_secs_f64();
        let cpu_seconds = after.cpu_percent_since(&before) / 100.0 * wall_seconds;
        Ok(Read { answers, rss_open_kib: open.rss_kib, cpu_seconds, wall_seconds })
    }
}

/// What reading one path measured, over its turns.
#[derive(Debug, Clone, Default)]
struct Read {
    answers: Answers,
    /// The RSS sampled with every stream open, in the path's first turn: the first path is
    /// then sampled in a gateway that has served no other path, as when measured alone.
    rss_open_kib: u64,
    /// The gateway's CPU time while it was read, and how long that was.
    cpu_seconds: f64,
    wall_seconds: f64,
}

impl Read {
    fn add(&mut self, other: &Read) {
        if self.answers.answers + self.answers.errors == 0 {
            self.rss_open_kib = other.rss_open_kib;
        }
        self.answers.add(&other.answers);
        self.cpu_seconds += other.cpu_seconds;
        self.wall_seconds += other.wall_seconds;
    }
}

/// The results as Markdown.
pub fn summary(results: &GatewayResults) -> String {
    let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
    let added =
        |through: u64, direct: u64| format!("{:+.2}", (through as f64 - direct as f64) / 1000.0);
    let d = &results.direct;
    let mut out = format!(
        "| {} streams × {} answers | TTFT p50 ms | TTFT p99 ms | gap p50 ms | gap p99 ms | answers | errors |\n\
         | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        results.streams, results.rounds
    );
    let row = |name: &str, p: &PathResult| {
        format!(
            "| {name} | {} | {} | {} | {} | {} | {} |\n",
            ms(p.ttft.p50),
            ms(p.ttft.p99),
            ms(p.gap.p50),
            ms(p.gap.p99),
            p.answers,
            p.errors
        )
    };
    out.push_str(&row("direct to upstream", d));
    for g in &results.gateways {
        let t = &g.path;
        out.push_str(&row(&format!("through {}", g.name), t));
        out.push_str(&format!(
            "| **added by {}** | {} | {} | {} | {} | | |\n",
            g.name,
            added(t.ttft.p50, d.ttft.p50),
            added(t.ttft.p99, d.ttft.p99),
            added(t.gap.p50, d.gap.p50),
            added(t.gap.p99, d.gap.p99)
        ));
    }
    out.push('\n');
    for g in &results.gateways {
        let cancel = match &g.cancel {
            Some(c) => {
                format!("p50 {} ms, max {} ms ({} disconnects)", ms(c.p50), ms(c.max), c.count)
            }
            None => "not seen by the upstream within 10 s".to_owned(),
        };
        out.push_str(&format!(
            "{}: RSS {} KiB idle, {} KiB with {} streams open ({:.1} KiB per open stream); \
             CPU {:.1}% of a core; client disconnect → upstream cancelled: {cancel}.\n",
            g.name,
            g.rss_idle_kib,
            g.rss_open_kib,
            results.streams,
            g.rss_per_stream_kib(results.streams),
            g.cpu_percent
        ));
    }
    out.push_str(&format!(
        "Straight to the upstream, disconnect → cancelled: p50 {} ms, max {} ms.\n",
        ms(results.cancel_direct.p50),
        ms(results.cancel_direct.max)
    ));
    out
}
