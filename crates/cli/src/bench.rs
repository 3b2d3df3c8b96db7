//! `sluice bench`: load generators. The work is in `sluice-loadgen`; this module turns flags
//! into its settings and prints what it measured.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Subcommand;
use sluice_loadgen::durable::DurableBench;
use sluice_loadgen::hub::{HubBench, Pinning, ServerTarget, StormPlan, summary};
use sluice_loadgen::protocol::HubProtocol;
use sluice_server::{
    ChatClaim, ChatGrant, ChatLimits, Grant, HUB_PATH, mint_chat_hs256, mint_hs256,
};

/// Measure a hub under load.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Subscribers on one topic, publishers at rising rates: deliveries/s, publish→receive
    /// latency, connect rate, the server's CPU and RSS.
    Hub(Box<HubArgs>),
    /// A worker process of `bench hub` (started by it; settings on stdin).
    #[command(hide = true)]
    HubWorker,
    /// K concurrent streamed answers from a scripted upstream, straight and through a Sluice
    /// gateway: the time to first token and inter-chunk latency the gateway adds, its memory
    /// per open stream, and how fast a disconnect cancels the upstream.
    Gateway(Box<GatewayArgs>),
    /// The floor hub: Nchan's wire form, one non-blocking write per subscriber and nothing
    /// else, for the kernel's and the load generator's own cost beside Sluice's (bench/peers.sh).
    FloorHub(FloorHubArgs),
    /// A Durable Streams server (Sluice's /v1/stream, or the protocol's reference server):
    /// appends/s from concurrent writers, append → receipt latency with many SSE readers of one
    /// stream, and the server's memory per idle reader.
    Durable(Box<DurableArgs>),
    /// A long churning load (subscribers coming and going, publishing, chat streams, answers
    /// cancelled) against a spawned server, its RSS and open files sampled throughout: what
    /// `make soak` runs.
    Soak(SoakArgs),
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    duration: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    sample_every: u64,
    /// Subscribers connected at any moment (each leaves after 1-10 s and comes back).
    #[arg(long, default_value_t = 200, value_name = "N")]
    subscribers: usize,
    /// Updates published per second.
    #[arg(long, default_value_t = 50.0, value_name = "R")]
    publish_rate: f64,
    /// Chat loops running at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    chats: usize,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// An environment variable for the server only, NAME=VALUE (repeatable): a heap
    /// profiler's preload, say (bench/soak-heap.sh).
    #[arg(long, value_name = "NAME=VALUE", value_parser = name_and_value)]
    server_env: Vec<(String, String)>,
}

/// `NAME=VALUE` as a pair.
fn name_and_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Where a benchmark pins the server it starts and itself, one core each by default.
#[derive(Debug, clap::Args)]
struct PinArgs {
    /// CPUs of a spawned server (`taskset -c` list).
    #[arg(long, default_value = "0", value_name = "LIST")]
    server_cpus: String,
    /// CPUs of the load generator (`taskset -c` list).
    #[arg(long, default_value = "1", value_name = "LIST")]
    loadgen_cpus: String,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
}

impl PinArgs {
    fn pinning(&self) -> Option<Pinning> {
        (!self.no_pin).then(|| Pinning {
            server_cpus: self.server_cpus.clone(),
            loadgen_cpus: self.loadgen_cpus.clone(),
        })
    }
}

#[derive(Debug, clap::Args)]
struct DurableArgs {
    /// The streams' root of a running server (a loopback http:// URL), e.g.
    /// http://127.0.0.1:8080/v1/stream; every part runs against it.
    #[arg(
        long,
        value_name = "URL",
        conflicts_with = "spawn_command",
        required_unless_present = "spawn_command"
    )]
    target: Option<String>,
    /// The pid of the server at --target, for its CPU and RSS.
    #[arg(long, value_name = "PID", requires = "target")]
    server_pid: Option<u32>,
    /// Start the server with `sh -c CMD` for every part, afresh, pinned to --server-cpus, in a
    /// process group of its own; it must listen on 127.0.0.1 at the port in
    /// $SLUICE_BENCH_PORT (bench/peers/durable/serve.sh does).
    #[arg(long, value_name = "CMD")]
    spawn_command: Option<String>,
    /// The streams' root on a --spawn-command server.
    #[arg(long, default_value = "/v1/stream", value_name = "PATH", requires = "spawn_command")]
    spawn_path: String,
    /// The parts to run: appends (appends/s), live (read-to-live latency), idle (memory per
    /// idle reader).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "appends,live,idle")]
    parts: Vec<DurablePart>,
    /// Concurrent writers of the appends part, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,16", value_name = "W[,W2,...]")]
    writers: Vec<usize>,
    /// Whether the writers send idempotent producer headers.
    #[arg(long, value_enum, default_value = "both", value_name = "P")]
    producers: ProducerArg,
    /// Seconds each appends run is measured, after a 2 s warm-up.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    append_seconds: u64,
    /// SSE readers of one stream in the live part.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    readers: u64,
    /// Append rates of the live part, messages/s, one step each.
    #[arg(long, value_delimiter = ',', default_value = "10,100", value_name = "R[,R2,...]")]
    rate: Vec<f64>,
    /// Seconds per live step.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,
    /// Idle readers of the memory part, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000", value_name = "N[,N2,...]")]
    idle: Vec<u64>,
    /// Seconds readers sit connected before the idle RSS is read.
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    settle: u64,
    /// Bytes of each JSON message (a send-time stamp, padded).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    message_size: usize,
    #[command(flatten)]
    pin: PinArgs,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

/// A part of `bench durable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DurablePart {
    /// Appends/s from concurrent writers.
    Appends,
    /// Append → receipt latency with many SSE readers of one stream.
    Live,
    /// The server's memory per idle SSE reader.
    Idle,
}

/// Which producer settings `bench durable` runs its writers with.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ProducerArg {
    /// Plain appends.
    Without,
    /// Every writer an idempotent producer.
    With,
    /// One run each.
    Both,
}

#[derive(Debug, clap::Args)]
struct FloorHubArgs {
    /// Where to listen.
    #[arg(
        long,
        env = "SLUICE_BENCH_LISTEN",
        default_value = "127.0.0.1:8090",
        value_name = "ADDR"
    )]
    listen: std::net::SocketAddr,
}

#[derive(Debug, clap::Args)]
struct GatewayArgs {
    /// Concurrent streams.
    #[arg(long, default_value_t = 100, value_name = "K")]
    streams: usize,
    /// Answers per stream, one after the other.
    #[arg(long, default_value_t = 3, value_name = "N")]
    rounds: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 100, value_name = "N")]
    tokens: usize,
    /// The upstream's tokens per second.
    #[arg(long, default_value_t = 50.0, value_name = "R")]
    tokens_per_second: f64,
    /// The upstream's time to first token, in ms.
    #[arg(long, default_value_t = 100, value_name = "MS")]
    ttft_ms: u64,
    /// Disconnects timed for the cancellation figure.
    #[arg(long, default_value_t = 20, value_name = "N")]
    cancels: usize,
    /// CPUs for the gateway, the upstream, and this process (`taskset -c` lists).
    #[arg(long, value_delimiter = ',', default_value = "0,1,1", value_name = "G,U,L")]
    cpus: Vec<String>,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// A peer gateway measured the same way, started with `sh -c CMD` pinned like Sluice's: it
    /// must listen on 127.0.0.1 at $SLUICE_BENCH_PORT and relay to the OpenAI base URL in
    /// $SLUICE_BENCH_UPSTREAM (bench/peers/litellm.sh does).
    #[arg(long, value_name = "CMD")]
    peer_command: Option<String>,
    /// The peer's name in the results.
    #[arg(long, default_value = "peer", value_name = "NAME", requires = "peer_command")]
    peer_name: String,
    /// A path of the peer that answers under 500 once it is ready.
    #[arg(long, value_name = "PATH", requires = "peer_command")]
    peer_ready_path: Option<String>,
    /// A bearer token the peer's clients must send.
    #[arg(long, value_name = "TOKEN", requires = "peer_command", hide_env_values = true)]
    peer_token: Option<String>,
    /// A plain relay measured the same way after the peer (named `relay`), started like it:
    /// the floor of what any gateway adds (bench/peers/relay.sh runs nginx unbuffered).
    #[arg(long, value_name = "CMD")]
    relay_command: Option<String>,
    /// Spread the streams' first answers evenly over this many milliseconds (they open while
    /// the others run, as users arrive, instead of all in one connect burst).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    ramp_ms: u64,
    /// Also measure Sluice through these protocols of the AI clients (beside Chat
    /// Completions, over the same upstream).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "P,…")]
    surfaces: Vec<SurfaceArg>,
    /// Measure the paths through one gateway process (Chat Completions and the --surfaces;
    /// the --callers' two) in this many turns, each path a share of the rounds a turn, in an
    /// order rotated every turn, so that they share the machine's hour and the positions
    /// alike (1: one whole path after the other).
    #[arg(long, default_value_t = 1, value_name = "N")]
    turns: usize,
    /// Also measure Sluice with callers checked: a second gateway that asks for an API key
    /// (a `[[keys]]` record with limits) or an end-user token, read with each (rows
    /// `sluice/api-key` and `sluice/end-user`, beside the open gateway's `sluice`).
    #[arg(long)]
    callers: bool,
    /// Sluice's store, where callers' requests and tokens are charged: `memory`, or `sqlite`
    /// (the server's default; a file in a temporary folder).
    #[arg(long, value_enum, default_value = "memory", value_name = "STORE")]
    gateway_store: GatewayStoreArg,
    /// Measure capacity instead: requests sent at these rates (requests/s, rising, one step
    /// each, open loop) straight, through Sluice and through the peers, until what a gateway
    /// adds at p99 passes --bound-ms.
    #[arg(long, value_delimiter = ',', value_name = "R,…")]
    rates: Vec<u32>,
    /// Seconds each rate is sent for.
    #[arg(long, default_value_t = 5, value_name = "SECS", requires = "rates")]
    step_seconds: u64,
    /// The added p99, in ms, past which a gateway's steps stop.
    #[arg(long, default_value_t = 1.0, value_name = "MS", requires = "rates")]
    bound_ms: f64,
    /// The answers the capacity steps ask for: whole (non-streamed), streamed, or one run of
    /// each.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "whole,streamed",
        requires = "rates"
    )]
    answers: Vec<AnswerArg>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

/// How `bench gateway --rates` asks for its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AnswerArg {
    /// One JSON body.
    Whole,
    /// An event stream.
    Streamed,
}

/// Sluice's store in `bench gateway`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GatewayStoreArg {
    /// In memory.
    Memory,
    /// A SQLite file.
    Sqlite,
}

/// A gateway key, a JWT secret and an end-user token for `bench gateway --callers`: limits
/// on everything, and too high for the run to reach, so every request is checked and charged
/// and none is refused.
fn caller_checks() -> sluice_loadgen::gateway::CallerChecks {
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    let jwt_secret = format!("sluice-bench-{nonce}");
    let grant = ChatGrant {
        subject: "bench-user".to_owned(),
        audience: sluice_loadgen::gateway::CHAT_AUDIENCE.to_owned(),
        exp: (SystemTime::now() + Duration::from_secs(24 * 3600))
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        sluice: ChatClaim {
            chat: ChatLimits {
                models: vec!["scripted".to_owned()],
                max_tokens: Some(100_000),
                requests_per_minute: Some(100_000_000),
                tokens_per_minute: Some(100_000_000_000),
            },
        },
    };
    sluice_loadgen::gateway::CallerChecks {
        api_key: format!("sk-bench-{nonce}"),
        end_user_token: mint_chat_hs256(jwt_secret.as_bytes(), &grant),
        jwt_secret,
    }
}

/// A protocol `bench gateway` can measure Sluice through.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SurfaceArg {
    /// The OpenAI Responses API.
    Responses,
    /// The Anthropic Messages API.
    Messages,
    /// The AI SDK's UI message stream.
    Ui,
}

impl From<SurfaceArg> for sluice_loadgen::gateway::Surface {
    fn from(surface: SurfaceArg) -> Self {
        use sluice_loadgen::gateway::Surface;
        match surface {
            SurfaceArg::Responses => Surface::Responses,
            SurfaceArg::Messages => Surface::Messages,
            SurfaceArg::Ui => Surface::UiMessageStream,
        }
    }
}

#[derive(Debug, clap::Args)]
struct HubArgs {
    /// The hub to load (a loopback http:// URL).
    #[arg(
        long,
        value_name = "URL",
        conflicts_with_all = ["spawn_server", "spawn_command"],
        required_unless_present_any = ["spawn_server", "spawn_command"]
    )]
    url: Option<String>,
    /// Start `sluice serve --store memory` on a free loopback port, pinned to --server-cpus.
    #[arg(long, conflicts_with = "spawn_command")]
    spawn_server: bool,
    /// Start a peer hub with `sh -c CMD`, pinned to --server-cpus, in a process group of its
    /// own (all its processes count as the server); it must listen on 127.0.0.1 at the port
    /// in $SLUICE_BENCH_PORT, and should `exec` the server (bench/peers/nchan.sh does).
    #[arg(long, value_name = "CMD")]
    spawn_command: Option<String>,
    /// The hub's path on a --spawn-command server.
    #[arg(long, default_value = "/", value_name = "PATH", requires = "spawn_command")]
    spawn_path: String,
    /// How the hub is spoken to: `mercure` (Sluice), `nchan` (`POST /pub/<channel>`, an
    /// EventSource subscriber at `GET /sub/<channel>`) or `durable` (a Durable Streams server
    /// whose streams' root is the URL: one JSON stream, read over SSE from `now`).
    #[arg(long, default_value = "mercure", value_name = "P")]
    protocol: HubProtocol,
    /// Spread the subscribers over this many topics (subscriber i on topic i mod N) and
    /// publish to each in turn; 1: everyone on one topic.
    #[arg(long, default_value_t = 1, value_name = "N")]
    topics: u64,
    /// Before the publish steps, a connect storm: every subscriber leaves, M updates per
    /// topic are published, and all reconnect at once with Last-Event-ID.
    #[arg(long, value_name = "M")]
    storm: Option<u32>,
    /// Skip the remaining rates once a step's p99 exceeds this (or it delivered under 99%,
    /// or over 1% of its publishes failed or were late).
    #[arg(long, value_name = "MS")]
    stop_at_p99: Option<u64>,
    /// Subscribers in all.
    #[arg(long, default_value_t = 1_000, value_name = "N")]
    subscribers: u64,
    /// The topic to subscribe and publish to [default: https://example.com/bench; with
    /// nchan: bench].
    #[arg(long, value_name = "T")]
    topic: Option<String>,
    /// Publish rates in updates/s, one step each (0: idle).
    #[arg(long, value_delimiter = ',', default_value = "0", value_name = "R[,R2,...]")]
    rate: Vec<f64>,
    /// Seconds per step.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    duration: u64,
    /// Bytes of data per update (a send-time stamp, padded).
    #[arg(long, default_value_t = 100, value_name = "BYTES")]
    message_size: usize,
    /// Worker processes holding the subscribers [default: one per 9,000].
    #[arg(long, default_value_t = 0, value_name = "P")]
    processes: usize,
    /// A publisher JWT.
    #[arg(long, value_name = "JWT", conflicts_with = "jwt_secret")]
    token: Option<String>,
    /// The hub's HS256 key: a publisher token is minted with it (and given to a spawned
    /// server) [default with --spawn-server: a random one].
    #[arg(long, value_name = "S", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The pid of the server at --url, for its CPU and RSS.
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,
    /// Another node of the same hub (repeatable): subscribers are spread over --url and these.
    #[arg(long = "also-url", value_name = "URL", requires = "url")]
    also_urls: Vec<String>,
    /// The pid of another node (repeatable): counted in the server's CPU and RSS.
    #[arg(long = "also-pid", value_name = "PID")]
    also_pids: Vec<u32>,
    /// One more process whose CPU to report per step (the nodes' Redis).
    #[arg(long, value_name = "PID")]
    watch_pid: Option<u32>,
    /// Concurrent publishing connections.
    #[arg(long, default_value_t = 4, value_name = "N")]
    publishers: usize,
    /// Connection attempts in flight at once, per worker.
    #[arg(long, default_value_t = 256, value_name = "N")]
    connect_concurrency: usize,
    #[command(flatten)]
    pin: PinArgs,
    /// An extra argument for a spawned `sluice serve` (repeatable).
    #[arg(long = "server-arg", value_name = "ARG", allow_hyphen_values = true)]
    server_args: Vec<String>,
    /// Seconds to wait after connecting before reading the idle RSS.
    #[arg(long, default_value_t = 3, value_name = "SECS")]
    settle: u64,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    quiet: bool,
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Hub(args) => hub(*args).await,
        BenchCommand::HubWorker => {
            tokio::task::spawn_blocking(sluice_loadgen::worker::run).await??;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Gateway(args) => gateway(*args).await,
        BenchCommand::FloorHub(args) => {
            let listener = std::net::TcpListener::bind(args.listen)
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            // One thread, as Nchan's one worker: its own current-thread runtime.
            tokio::task::spawn_blocking(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(sluice_loadgen::floor::serve(listener))
            })
            .await??;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Durable(args) => durable(*args).await,
        BenchCommand::Soak(args) => soak(args).await,
    }
}

async fn durable(args: DurableArgs) -> anyhow::Result<ExitCode> {
    let program = std::env::current_exe().context("finding this binary")?;
    let server = match (&args.target, &args.spawn_command) {
        (Some(url), None) => {
            ServerTarget::Url(url.parse().with_context(|| format!("--target {url:?}"))?)
        }
        (None, Some(command)) => {
            ServerTarget::Command { command: command.clone(), path: args.spawn_path.clone() }
        }
        _ => bail!("give one of --target and --spawn-command"),
    };
    let part = |p: DurablePart| args.parts.contains(&p);
    let bench = DurableBench {
        server,
        server_pid: args.server_pid,
        pinning: args.pin.pinning(),
        message_size: args.message_size,
        writers: if part(DurablePart::Appends) { args.writers.clone() } else { Vec::new() },
        producers: match args.producers {
            ProducerArg::Without => vec![false],
            ProducerArg::With => vec![true],
            ProducerArg::Both => vec![false, true],
        },
        append_duration: Duration::from_secs(args.append_seconds.max(1)),
        readers: if part(DurablePart::Live) { args.readers } else { 0 },
        rates: args.rate.clone(),
        step_duration: Duration::from_secs(args.duration.max(1)),
        idle: if part(DurablePart::Idle) { args.idle.clone() } else { Vec::new() },
        settle: Duration::from_secs(args.settle),
        progress: !args.quiet,
        ..DurableBench::new(program, vec!["bench".into(), "hub-worker".into()])
    };
    let results = bench.run().await?;
    println!("{}", sluice_loadgen::durable::summary(&results));
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        serde_json::to_writer_pretty(file, &results)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn soak(args: SoakArgs) -> anyhow::Result<ExitCode> {
    let data_dir = std::env::temp_dir().join(format!("sluice-soak-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir)?;
    let secret = format!(
        "sluice-soak-{}",
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
    );
    let grant = Grant { publish: vec!["*".into()], ..Grant::default() };
    let bench = sluice_loadgen::soak::SoakBench {
        program: std::env::current_exe().context("finding this binary")?,
        data_dir: data_dir.clone(),
        duration: Duration::from_secs(args.duration.max(1)),
        sample_every: Duration::from_secs(args.sample_every.max(1)),
        subscribers: args.subscribers,
        publish_rate: args.publish_rate,
        chats: args.chats,
        publish_token: mint_hs256(secret.as_bytes(), &grant),
        jwt_secret: secret,
        verbose: true,
        server_env: args.server_env,
    };
    eprintln!(
        "bench soak: {} s of {} churning subscribers, {} updates/s, {} chat loops…",
        args.duration, args.subscribers, args.publish_rate, args.chats
    );
    let results = bench.run().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    let results = results?;
    println!("{}", sluice_loadgen::soak::summary(&results));
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        serde_json::to_writer_pretty(file, &results)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The peer gateways the arguments name: the peer, then the relay.
fn gateway_peers(args: &GatewayArgs) -> Vec<sluice_loadgen::gateway::PeerGateway> {
    let peer = args.peer_command.as_ref().map(|command| sluice_loadgen::gateway::PeerGateway {
        name: args.peer_name.clone(),
        command: command.clone(),
        ready_path: args.peer_ready_path.clone(),
        bearer: args.peer_token.clone(),
    });
    let relay = args.relay_command.as_ref().map(|command| sluice_loadgen::gateway::PeerGateway {
        name: "relay".to_owned(),
        command: command.clone(),
        ready_path: None,
        bearer: None,
    });
    peer.into_iter().chain(relay).collect()
}

async fn gateway(args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let pinning = match (args.no_pin, args.cpus.as_slice()) {
        (true, _) => None,
        (false, [g, u, l]) => Some([g.clone(), u.clone(), l.clone()]),
        (false, other) => {
            bail!("--cpus takes three lists (gateway, upstream, loader), got {other:?}")
        }
    };
    let work_dir =
        std::env::temp_dir().join(format!("sluice-bench-gateway-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir)?;
    let bench = sluice_loadgen::gateway::GatewayBench {
        program: std::env::current_exe().context("finding this binary")?,
        streams: args.streams.max(1),
        rounds: args.rounds.max(1),
        tokens: args.tokens.max(2),
        tokens_per_second: args.tokens_per_second,
        time_to_first_token: Duration::from_millis(args.ttft_ms),
        cancels: args.cancels.max(1),
        pinning,
        work_dir: work_dir.clone(),
        ramp: Duration::from_millis(args.ramp_ms),
        peers: gateway_peers(&args),
        progress: !args.quiet,
        surfaces: args.surfaces.iter().map(|&s| s.into()).collect(),
        turns: args.turns,
        store: match args.gateway_store {
            GatewayStoreArg::Memory => sluice_loadgen::gateway::GatewayStore::Memory,
            GatewayStoreArg::Sqlite => sluice_loadgen::gateway::GatewayStore::Sqlite,
        },
        callers: args.callers.then(caller_checks),
    };
    if !args.rates.is_empty() {
        let results = capacity(&bench, &args).await;
        let _ = std::fs::remove_dir_all(&work_dir);
        return results;
    }
    eprintln!(
        "bench gateway: {} streams × {} answers of {} tokens at {} tokens/s, straight, through Sluice{}…",
        bench.streams,
        bench.rounds,
        bench.tokens,
        bench.tokens_per_second,
        bench.peers.iter().map(|p| format!(", through {}", p.name)).collect::<String>()
    );
    let results = bench.run().await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let results = results?;
    println!("{}", sluice_loadgen::gateway::summary(&results));
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        serde_json::to_writer_pretty(file, &results)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench gateway --rates`: the capacity steps, one run per kind of answer.
async fn capacity(
    bench: &sluice_loadgen::gateway::GatewayBench,
    args: &GatewayArgs,
) -> anyhow::Result<ExitCode> {
    use sluice_loadgen::gateway::capacity::{RatePlan, summary};
    let mut rates = args.rates.clone();
    rates.sort_unstable();
    rates.dedup();
    let mut runs = Vec::new();
    for &answers in &args.answers {
        let plan = RatePlan {
            rates: rates.clone(),
            step: Duration::from_secs(args.step_seconds.max(1)),
            streamed: answers == AnswerArg::Streamed,
            bound: Duration::from_secs_f64(args.bound_ms.max(0.0) / 1000.0),
        };
        eprintln!(
            "bench gateway: capacity, {answers:?} answers of {} tokens at {rates:?} requests/s, straight, through Sluice{}…",
            bench.tokens,
            bench.peers.iter().map(|p| format!(", through {}", p.name)).collect::<String>()
        );
        let results = bench.run_capacity(&plan).await?;
        println!("{}", summary(&results));
        runs.push(results);
    }
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        serde_json::to_writer_pretty(file, &runs)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn hub(args: HubArgs) -> anyhow::Result<ExitCode> {
    let program = std::env::current_exe().context("finding this binary")?;
    let secret = match (&args.jwt_secret, args.spawn_server) {
        (Some(secret), _) => Some(secret.clone()),
        (None, true) => Some(format!(
            "sluice-bench-{}",
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
        )),
        (None, false) => None,
    };
    let publish_token = args.token.clone().or_else(|| {
        secret.as_ref().map(|secret| {
            let grant = Grant {
                publish: vec!["*".into()],
                subscribe: Vec::new(),
                exp: None,
                payload: None,
            };
            mint_hs256(secret.as_bytes(), &grant)
        })
    });
    let server = match (&args.url, args.spawn_server, &args.spawn_command) {
        (None, false, Some(command)) => {
            ServerTarget::Command { command: command.clone(), path: args.spawn_path.clone() }
        }
        (Some(url), false, None) => {
            ServerTarget::Url(url.parse().with_context(|| format!("--url {url:?}"))?)
        }
        (None, true, None) => {
            // The scripted provider only: the hub is measured, not the local model (which
            // would add its load time and 100 MB to the RSS baseline).
            let mut server_args: Vec<String> =
                ["serve", "--store", "memory", "--anonymous", "--provider", "scripted"]
                    .map(String::from)
                    .into();
            if let Some(secret) = &secret {
                server_args.extend(["--jwt-secret".to_owned(), secret.clone()]);
            }
            server_args.extend(args.server_args.iter().cloned());
            ServerTarget::Spawn {
                program: program.clone(),
                args: server_args,
                path: HUB_PATH.into(),
            }
        }
        _ => bail!("give one of --url, --spawn-server and --spawn-command"),
    };
    let topic = args.topic.clone().unwrap_or_else(|| match args.protocol {
        HubProtocol::Mercure => "https://example.com/bench".to_owned(),
        HubProtocol::Nchan | HubProtocol::Durable => "bench".to_owned(),
    });
    let other_nodes = args
        .also_urls
        .iter()
        .map(|url| url.parse().with_context(|| format!("--also-url {url:?}")))
        .collect::<anyhow::Result<_>>()?;
    let bench = HubBench {
        server,
        protocol: args.protocol,
        topics: args.topics.max(1),
        storm: args
            .storm
            .map(|missed| StormPlan { missed: missed.max(1), deadline: Duration::from_secs(60) }),
        stop_when_p99_over: args.stop_at_p99.map(Duration::from_millis),
        server_pid: args.server_pid,
        other_nodes,
        other_pids: args.also_pids.clone(),
        watch_pid: args.watch_pid,
        subscribers: args.subscribers,
        topic,
        rates: args.rate,
        step_duration: Duration::from_secs(args.duration.max(1)),
        message_size: args.message_size,
        processes: args.processes,
        publish_token,
        publish_connections: args.publishers.max(1),
        connect_concurrency: args.connect_concurrency.max(1),
        pinning: args.pin.pinning(),
        settle: Duration::from_secs(args.settle),
        progress: !args.quiet,
        ..HubBench::new(program, vec!["bench".into(), "hub-worker".into()])
    };
    let results = bench.run().await?;
    println!("{}", summary(&results));
    if let Some(path) = &args.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
        serde_json::to_writer_pretty(file, &results)?;
    }
    Ok(ExitCode::SUCCESS)
}
