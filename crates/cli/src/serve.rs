//! `sluice serve`: the hub, the gateway and (as they land) the pages.
//!
//! Settings come from flags, then `SLUICE_*` environment variables (clap reads both: a flag
//! wins), then `sluice.toml`, then defaults. The file uses the flags' names with underscores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;
use sluice_hub::{Fanout, Hub, HubConfig, MemoryStore, SqliteConfig, SqliteStore, Store};
use sluice_server::{AppState, Config, Verifier};

use crate::providers::{ModelSettings, ProviderConfig, ScriptedConfig};

/// Start the server: a Mercure hub on /.well-known/mercure, metrics, health checks.
#[derive(Debug, Default, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Args {
    /// Settings file (TOML, keys named like the flags with underscores).
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// History store: `memory`, or `sqlite:PATH` [default: sqlite:./sluice-data/sluice.db].
    #[arg(long, env = "SLUICE_STORE", value_name = "STORE")]
    store: Option<String>,
    /// Keep at most this many updates in history [default: 1000000; memory: 100000].
    #[arg(long, env = "SLUICE_HISTORY_MAX_UPDATES", value_name = "N")]
    history_max_updates: Option<u64>,
    /// Delete history older than this many seconds [default: keep].
    #[arg(long, env = "SLUICE_HISTORY_MAX_AGE", value_name = "SECONDS")]
    history_max_age: Option<u64>,
    /// HS256 key for publishers' and subscribers' tokens.
    #[arg(long, env = "SLUICE_JWT_SECRET", value_name = "SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// HS256 key for publishers' tokens (overrides --jwt-secret for them).
    #[arg(
        long,
        env = "SLUICE_PUBLISHER_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    publisher_jwt_secret: Option<String>,
    /// HS256 key for subscribers' tokens (overrides --jwt-secret for them).
    #[arg(
        long,
        env = "SLUICE_SUBSCRIBER_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    subscriber_jwt_secret: Option<String>,
    /// PEM file of an RSA public key: tokens are RS256 and verified with it.
    #[arg(long, env = "SLUICE_JWT_PUBLIC_KEY", value_name = "FILE")]
    jwt_public_key: Option<PathBuf>,
    /// Let subscribers without a token receive public updates [default: true when no
    /// subscriber key is set, else false].
    #[arg(long, env = "SLUICE_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    anonymous: Option<bool>,
    /// Origins allowed to subscribe from browsers, with credentials; `*` for any, without.
    #[arg(long, env = "SLUICE_CORS_ORIGINS", value_name = "ORIGIN", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Origins allowed to publish with the mercureAuthorization cookie; `*` for any.
    #[arg(long, env = "SLUICE_PUBLISH_ORIGINS", value_name = "ORIGIN", value_delimiter = ',')]
    publish_origins: Vec<String>,
    /// Seconds between keep-alive comments on idle streams [default: 15].
    #[arg(long, env = "SLUICE_KEEP_ALIVE", value_name = "SECONDS")]
    keep_alive: Option<u64>,
    /// Reconnection time sent to subscribers, in milliseconds [default: none].
    #[arg(long, env = "SLUICE_RETRY", value_name = "MS")]
    retry: Option<u64>,
    /// Largest request body, in bytes [default: 1048576].
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", value_name = "BYTES")]
    max_body_bytes: Option<usize>,
    /// Largest update data, in bytes [default: 524288].
    #[arg(long, env = "SLUICE_MAX_EVENT_BYTES", value_name = "BYTES")]
    max_event_bytes: Option<usize>,
    /// Most topics in one subscription [default: 64].
    #[arg(long, env = "SLUICE_MAX_TOPICS", value_name = "N")]
    max_topics: Option<usize>,
    /// Most open connections [default: the open-file limit minus 256].
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Most simultaneous subscriptions from one client address [default: unlimited].
    #[arg(long, env = "SLUICE_MAX_SUBSCRIPTIONS_PER_CLIENT", value_name = "N")]
    max_subscriptions_per_client: Option<usize>,
    /// Updates queued per subscriber before it is cut off as too slow [default: 1024].
    #[arg(long, env = "SLUICE_QUEUE_CAPACITY", value_name = "N")]
    queue_capacity: Option<usize>,
    /// Do not publish subscription events.
    #[arg(long, env = "SLUICE_NO_SUBSCRIPTION_EVENTS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    no_subscription_events: Option<bool>,
    /// The local model's GGUF file (any llama-family model) [default:
    /// models/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long, env = "SLUICE_MODEL", value_name = "PATH")]
    model: Option<PathBuf>,
    /// Providers by name: `local` (the built-in model, served as `smollm2-135m`) and
    /// `scripted` (model `scripted`, for tests and benchmarks) [default: local, when no
    /// [[providers]] are configured].
    #[arg(long = "provider", env = "SLUICE_PROVIDERS", value_name = "NAME", value_delimiter = ',')]
    provider: Vec<String>,
    /// API keys clients must present to the gateway; none: open.
    #[arg(
        long = "api-key",
        env = "SLUICE_API_KEYS",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// Gateway requests per minute per key (per address without keys) [default: unlimited].
    #[arg(long, env = "SLUICE_REQUESTS_PER_MINUTE", value_name = "N")]
    requests_per_minute: Option<u32>,
    /// Seconds an answer goes on with no reader before it is cancelled [default: 30].
    #[arg(long, env = "SLUICE_GENERATION_GRACE", value_name = "SECONDS")]
    generation_grace: Option<u64>,
    /// Upstream providers (`[[providers]]` tables; only in the settings file).
    #[arg(skip)]
    providers: Vec<ProviderConfig>,
    /// The scripted provider's knobs (`[scripted]`; only in the settings file).
    #[arg(skip)]
    scripted: ScriptedConfig,
}

impl Args {
    /// Fills what the command line left unset from the settings file.
    fn merge(self, file: Args) -> Args {
        let list = |flag: Vec<String>, file: Vec<String>| if flag.is_empty() { file } else { flag };
        Args {
            config: self.config,
            listen: self.listen.or(file.listen),
            store: self.store.or(file.store),
            history_max_updates: self.history_max_updates.or(file.history_max_updates),
            history_max_age: self.history_max_age.or(file.history_max_age),
            jwt_secret: self.jwt_secret.or(file.jwt_secret),
            publisher_jwt_secret: self.publisher_jwt_secret.or(file.publisher_jwt_secret),
            subscriber_jwt_secret: self.subscriber_jwt_secret.or(file.subscriber_jwt_secret),
            jwt_public_key: self.jwt_public_key.or(file.jwt_public_key),
            anonymous: self.anonymous.or(file.anonymous),
            cors_origins: list(self.cors_origins, file.cors_origins),
            publish_origins: list(self.publish_origins, file.publish_origins),
            keep_alive: self.keep_alive.or(file.keep_alive),
            retry: self.retry.or(file.retry),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_event_bytes: self.max_event_bytes.or(file.max_event_bytes),
            max_topics: self.max_topics.or(file.max_topics),
            max_connections: self.max_connections.or(file.max_connections),
            max_subscriptions_per_client: self
                .max_subscriptions_per_client
                .or(file.max_subscriptions_per_client),
            queue_capacity: self.queue_capacity.or(file.queue_capacity),
            no_subscription_events: self.no_subscription_events.or(file.no_subscription_events),
            provider: list(self.provider, file.provider),
            model: self.model.or(file.model),
            api_keys: list(self.api_keys, file.api_keys),
            requests_per_minute: self.requests_per_minute.or(file.requests_per_minute),
            generation_grace: self.generation_grace.or(file.generation_grace),
            providers: file.providers,
            scripted: file.scripted,
        }
    }
}

fn read_file(path: Option<&Path>) -> anyhow::Result<Args> {
    let (path, required) = match path {
        Some(path) => (path, true),
        None => (Path::new("sluice.toml"), false),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display())),
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Args::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What the store setting names.
enum StoreKind {
    Memory,
    Sqlite(PathBuf),
}

fn parse_store(text: &str) -> anyhow::Result<StoreKind> {
    match text.split_once(':') {
        _ if text == "memory" => Ok(StoreKind::Memory),
        Some(("sqlite", path)) if !path.is_empty() => Ok(StoreKind::Sqlite(path.into())),
        _ => bail!("--store must be `memory` or `sqlite:PATH`, not {text:?}"),
    }
}

fn verifiers(args: &Args) -> anyhow::Result<(Option<Verifier>, Option<Verifier>)> {
    if let Some(path) = &args.jwt_public_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let verifier = Verifier::rs256_pem(&pem)?;
        return Ok((Some(verifier.clone()), Some(verifier)));
    }
    let key = |specific: &Option<String>| {
        specific.as_ref().or(args.jwt_secret.as_ref()).map(|s| Verifier::hs256(s.as_bytes()))
    };
    Ok((key(&args.publisher_jwt_secret), key(&args.subscriber_jwt_secret)))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = read_file(args.config.as_deref())?;
    let args = args.merge(file);
    let (publisher, subscriber) = verifiers(&args)?;
    let defaults = Config::default();
    let config = Config {
        anonymous: args.anonymous.unwrap_or(subscriber.is_none()),
        publisher,
        subscriber,
        cors_origins: args.cors_origins.clone(),
        publish_origins: args.publish_origins.clone(),
        keep_alive: args.keep_alive.map_or(defaults.keep_alive, Duration::from_secs),
        retry: args.retry,
        max_body_bytes: args.max_body_bytes.unwrap_or(defaults.max_body_bytes),
        max_event_bytes: args.max_event_bytes.unwrap_or(defaults.max_event_bytes),
        max_topics_per_subscription: args
            .max_topics
            .unwrap_or(defaults.max_topics_per_subscription),
        max_connections: args.max_connections.unwrap_or(defaults.max_connections),
        max_subscriptions_per_client: args.max_subscriptions_per_client,
        subscription_events: !args.no_subscription_events.unwrap_or(false),
        models: Arc::new(crate::providers::router(&ModelSettings {
            providers: &args.providers,
            extra: &args.provider,
            scripted: &args.scripted,
            model: args
                .model
                .as_deref()
                .unwrap_or(Path::new(sluice_llm::local::DEFAULT_MODEL_PATH)),
        })?),
        api_keys: args.api_keys.clone(),
        requests_per_minute: args.requests_per_minute,
        generation_grace: args
            .generation_grace
            .map_or(defaults.generation_grace, Duration::from_secs),
    };
    let hub_config = HubConfig {
        queue_capacity: args.queue_capacity.unwrap_or(HubConfig::default().queue_capacity),
        ..HubConfig::default()
    };

    let fanout = Fanout::new();
    let store_setting = args.store.as_deref().unwrap_or("sqlite:./sluice-data/sluice.db");
    let store: Arc<dyn Store> = match parse_store(store_setting)? {
        StoreKind::Memory => Arc::new(MemoryStore::new(
            args.history_max_updates.unwrap_or(100_000) as usize,
            fanout.listener(),
        )),
        StoreKind::Sqlite(path) => {
            let mut sqlite = SqliteConfig::new(path);
            sqlite.max_updates = Some(args.history_max_updates.unwrap_or(1_000_000));
            sqlite.max_age = args.history_max_age.map(Duration::from_secs);
            Arc::new(SqliteStore::open(sqlite, fanout.listener())?)
        }
    };
    let hub = Hub::new(store, fanout, hub_config);

    let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let anonymous = config.anonymous;
    tracing::info!(
        address = %listener.local_addr()?,
        store = store_setting,
        anonymous,
        publishing = config.publisher.is_some(),
        models = ?config.models.models().iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        "sluice is serving: hub at /.well-known/mercure, gateway at /v1/chat/completions"
    );
    sluice_server::serve(listener, AppState::new(hub, config), stop_signal()).await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The kernel's queue of connections not yet accepted. Tokio's default (128) overflows when
/// thousands of clients reconnect at once after a restart, and each dropped SYN costs a
/// client a second before it retries.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn stop_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
