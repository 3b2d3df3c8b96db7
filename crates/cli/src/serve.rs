//! `sluice serve`: the hub, the gateway, the pages.
//!
//! Settings come from flags, then `SLUICE_*` environment variables (clap reads both: a flag
//! wins), then `sluice.toml`, then defaults. The file uses the flags' names with underscores.
//! Both layers are the same [`Args`] type: the file is read into one, the command line into
//! another, and what the command line set is laid over the file in one serde pass, so a new
//! setting is one field here and nothing else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_hub::{
    DEFAULT_RECENT_UPDATES, Fanout, Hub, HubConfig, Limits, MemoryStore, RedisConfig, RedisStore,
    SqliteConfig, SqliteStore, Store,
};
use sluice_server::{AppState, CertificateSource, Config, Timeouts, Tls, Verifier};
use sluice_streams::{Limits as StreamLimits, Log, MemoryLog, RedisLog, SqliteLog, Streams};

use crate::providers::{ModelSettings, ProviderConfig, ScriptedConfig, UpstreamTimeouts};

/// Start the server: a Mercure hub on /.well-known/mercure, metrics, health checks.
#[derive(Debug, Default, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Args {
    /// Settings file (TOML, keys named like the flags with underscores).
    #[arg(long, env = "SLUICE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "SLUICE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Once listening, write the address bound (`IP:PORT`) to this file, removed again at a
    /// clean exit: a script or test that asked for port 0 learns the port, and that the
    /// server accepts connections, without picking a free port beforehand.
    #[arg(long, env = "SLUICE_READY_FILE", value_name = "FILE")]
    ready_file: Option<PathBuf>,
    /// Development mode, on a loopback address only: publishing on with a secret kept in the
    /// data folder (made once), a publisher token printed, and the console offered it.
    #[arg(long, env = "SLUICE_DEV", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    dev: Option<bool>,
    /// History store: `memory`, `sqlite:PATH`, or `redis://HOST:PORT[/DB]` (`rediss://` for
    /// TLS) shared by every node of a hub [default: sqlite:./sluice-data/sluice.db].
    #[arg(long, env = "SLUICE_STORE", value_name = "STORE")]
    store: Option<String>,
    /// The prefix of the hub's Redis keys (inside a hash tag), to share one Redis among hubs
    /// [default: sluice].
    #[arg(long, env = "SLUICE_REDIS_PREFIX", value_name = "PREFIX")]
    redis_prefix: Option<String>,
    /// Anyone may create, append to, read and delete Durable Streams (`/v1/stream/...`)
    /// without a token: for local use and the protocol's conformance suite.
    #[arg(long, env = "SLUICE_OPEN_STREAMS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    open_streams: Option<bool>,
    /// How long a long-poll read of a stream waits for data before answering 204 [default: 20].
    #[arg(long, env = "SLUICE_STREAMS_LONG_POLL", value_name = "SECONDS")]
    streams_long_poll: Option<u64>,
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
    /// Issuers whose draft-08 access tokens are trusted (their exact `iss`) [default: sluice,
    /// the issuer `sluice token --access` writes].
    #[arg(long, env = "SLUICE_JWT_ISSUER", value_name = "ISSUER", value_delimiter = ',')]
    jwt_issuer: Vec<String>,
    /// The audience draft-08 access tokens must name [default: the hub's URL, --hub-url or
    /// as each request names it].
    #[arg(long, env = "SLUICE_JWT_AUDIENCE", value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
    /// The hub's public URL, e.g. https://hub.example/.well-known/mercure: the base of
    /// relative URL patterns and topics, and the default audience [default: the URL each
    /// request was sent to].
    #[arg(long, env = "SLUICE_HUB_URL", value_name = "URL")]
    hub_url: Option<url::Url>,
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
    /// MiB of memory for the latest updates (all they hold, not only their encoded events; at
    /// most 65,536 updates; subscription events are not kept), so that a subscriber resuming
    /// from a recent Last-Event-ID is replayed without reading the store [default: 64; 0:
    /// replays always read the store].
    #[arg(long, env = "SLUICE_REPLAY_WINDOW_MIB", value_name = "MIB")]
    replay_window_mib: Option<usize>,
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
    /// The admin API's key (`/admin/keys`, `/admin/usage`; see `sluice keys`); with one, the
    /// gateway asks every caller for a key [default: no admin API].
    #[arg(long, env = "SLUICE_ADMIN_KEY", value_name = "KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Accept end-user tokens (JWTs a back end mints for browsers, `sluice token --chat`) on
    /// the chat routes, whose `aud` is this; they are checked with --jwt-secret or
    /// --jwt-public-key, and the gateway then asks every caller for a key or a token
    /// [default: not accepted].
    #[arg(long, env = "SLUICE_CHAT_AUDIENCE", value_name = "AUDIENCE")]
    chat_audience: Option<String>,
    /// Gateway requests per minute per key (per address without keys) [default: unlimited].
    #[arg(long, env = "SLUICE_REQUESTS_PER_MINUTE", value_name = "N")]
    requests_per_minute: Option<u32>,
    /// Seconds an answer goes on with no reader before it is cancelled [default: 30].
    #[arg(long, env = "SLUICE_GENERATION_GRACE", value_name = "SECONDS")]
    generation_grace: Option<u64>,
    /// Seconds a client has to send a whole request head [default: 30].
    #[arg(long, env = "SLUICE_REQUEST_HEAD_TIMEOUT", value_name = "SECONDS")]
    request_head_timeout: Option<u64>,
    /// Seconds a request body may stall between two pieces [default: 30].
    #[arg(long, env = "SLUICE_REQUEST_BODY_TIMEOUT", value_name = "SECONDS")]
    request_body_timeout: Option<u64>,
    /// Seconds an idle keep-alive connection is kept [default: 75].
    #[arg(long, env = "SLUICE_IDLE_TIMEOUT", value_name = "SECONDS")]
    idle_timeout: Option<u64>,
    /// Seconds a write to a client may make no progress (a subscriber that stopped
    /// reading) [default: 30].
    #[arg(long, env = "SLUICE_WRITE_TIMEOUT", value_name = "SECONDS")]
    write_timeout: Option<u64>,
    /// Seconds to connect to an upstream model API [default: 10].
    #[arg(long, env = "SLUICE_UPSTREAM_CONNECT_TIMEOUT", value_name = "SECONDS")]
    upstream_connect_timeout: Option<u64>,
    /// Seconds to wait for an upstream's first token [default: 120].
    #[arg(long, env = "SLUICE_UPSTREAM_FIRST_TOKEN_TIMEOUT", value_name = "SECONDS")]
    upstream_first_token_timeout: Option<u64>,
    /// Seconds an upstream may pause between two chunks [default: 60].
    #[arg(long, env = "SLUICE_UPSTREAM_GAP_TIMEOUT", value_name = "SECONDS")]
    upstream_gap_timeout: Option<u64>,
    /// Longest topic (and exact selector), in characters [default: 1024].
    #[arg(long, env = "SLUICE_MAX_TOPIC_LENGTH", value_name = "CHARS")]
    max_topic_length: Option<usize>,
    /// Most topics on one update [default: 32].
    #[arg(long, env = "SLUICE_MAX_TOPICS_PER_UPDATE", value_name = "N")]
    max_topics_per_update: Option<usize>,
    /// Longest URI template selector, in characters [default: 256].
    #[arg(long, env = "SLUICE_MAX_TEMPLATE_LENGTH", value_name = "CHARS")]
    max_template_length: Option<usize>,
    /// Most variables in one URI template selector [default: 16].
    #[arg(long, env = "SLUICE_MAX_TEMPLATE_VARIABLES", value_name = "N")]
    max_template_variables: Option<usize>,
    /// A PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN). Re-read on SIGHUP.
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate made at start for localhost and 127.0.0.1 (written to
    /// sluice-data/tls/self-signed.pem, so that clients can be told to trust it).
    #[arg(long, env = "SLUICE_TLS_SELF_SIGNED", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", conflicts_with = "tls_cert")]
    tls_self_signed: Option<bool>,
    /// Send a trace of every answer to this OpenTelemetry receiver, its OTLP/HTTP base URL
    /// (e.g. http://127.0.0.1:4318; spans go to /v1/traces as JSON): one span per answer with
    /// the GenAI conventions (model, provider, tokens, finish reason), its time to the first
    /// token and whether it was stopped.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    otlp_endpoint: Option<url::Url>,
    /// The `service.name` of those traces [default: sluice].
    #[arg(long, env = "OTEL_SERVICE_NAME", value_name = "NAME")]
    otlp_service_name: Option<String>,
    /// Upstream providers (`[[providers]]` tables; only in the settings file).
    #[arg(skip)]
    providers: Vec<ProviderConfig>,
    /// API keys with names and limits (`[[keys]]` tables; only in the settings file).
    #[arg(skip)]
    keys: Vec<sluice_server::keys::KeySpec>,
    /// The scripted provider's knobs (`[scripted]`; only in the settings file).
    #[arg(skip)]
    scripted: ScriptedConfig,
}

impl Args {
    /// Lays what the command line set over the settings file: one serde pass over both, so
    /// every setting merges the same way (a value given wins; an empty list does not).
    fn merge(self, file: Args) -> anyhow::Result<Args> {
        let (Value::Object(given), Value::Object(mut merged)) =
            (serde_json::to_value(&self)?, serde_json::to_value(file)?)
        else {
            bail!("settings serialize to JSON objects");
        };
        for (key, value) in given {
            let unset = value.is_null() || value.as_array().is_some_and(Vec::is_empty);
            if !unset {
                merged.insert(key, value);
            }
        }
        let mut merged: Args = serde_json::from_value(Value::Object(merged))?;
        merged.config = self.config;
        Ok(merged)
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

/// Where the Durable Streams of a SQLite store live: a file of their own beside the hub's
/// (`sluice.db` → `sluice-streams.db`), so that neither waits on the other's writes.
fn streams_file(hub_file: &Path) -> PathBuf {
    let stem = hub_file.file_stem().map_or_else(|| "sluice".into(), |s| s.to_string_lossy());
    hub_file.with_file_name(format!("{stem}-streams.db"))
}

/// What the store setting names.
enum StoreKind {
    Memory,
    Sqlite(PathBuf),
    /// A Redis URL, shared by every node of the hub.
    Redis(String),
}

fn parse_store(text: &str) -> anyhow::Result<StoreKind> {
    match text.split_once(':') {
        _ if text == "memory" => Ok(StoreKind::Memory),
        Some(("sqlite", path)) if !path.is_empty() => Ok(StoreKind::Sqlite(path.into())),
        Some(("redis" | "rediss", _)) => Ok(StoreKind::Redis(text.to_owned())),
        _ => bail!(
            "--store must be `memory`, `sqlite:PATH` or `redis://HOST:PORT[/DB]` (`rediss://` \
             for TLS), not {text:?}"
        ),
    }
}

/// Takes SIGXFSZ, so that a write past the file-size limit (`ulimit -f`) fails with EFBIG,
/// which the store reports like a full disk (publish answers 503 and the server recovers when
/// the limit is raised), instead of killing the process.
fn survive_file_size_limit() {
    const SIGXFSZ: i32 = 25;
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::from_raw(SIGXFSZ)) {
        // The handler stays installed for the life of the process; the stream is not needed.
        Ok(stream) => drop(stream),
        Err(error) => tracing::warn!(%error, "cannot take SIGXFSZ"),
    }
}

/// The TLS the settings ask for, if any; a SIGHUP re-reads its certificate files.
fn tls(args: &Args) -> anyhow::Result<Option<Arc<Tls>>> {
    let source = match (&args.tls_cert, &args.tls_key, args.tls_self_signed.unwrap_or(false)) {
        (Some(cert), Some(key), _) => {
            CertificateSource::Files { cert: cert.clone(), key: key.clone() }
        }
        (None, None, true) => CertificateSource::SelfSigned {
            cert_out: PathBuf::from("sluice-data/tls/self-signed.pem"),
        },
        (None, None, false) => return Ok(None),
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let tls = Arc::new(Tls::new(source)?);
    if let CertificateSource::SelfSigned { cert_out } = tls.source() {
        eprintln!(
            "sluice: HTTPS with a self-signed certificate for localhost and 127.0.0.1, written to {0}.\n\
             \x20 trust it for one command: curl --cacert {0} https://{1}/healthz\n\
             \x20 in a browser: import {0} as a trusted authority (Chromium: Settings, Privacy and\n\
             \x20 security, Security, Manage certificates), or accept the warning once per site",
            cert_out.display(),
            args.listen.map_or_else(|| "127.0.0.1:8080".to_owned(), |a| a.to_string()),
        );
    }
    let reloading = Arc::clone(&tls);
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            match reloading.reload() {
                Ok(()) => tracing::info!("SIGHUP: the TLS certificate was re-read"),
                Err(error) => {
                    tracing::error!(%error, "SIGHUP: the TLS certificate was not re-read; the old one stays");
                }
            }
        }
    });
    Ok(Some(tls))
}

/// Seconds as a duration, or the default.
fn seconds(value: Option<u64>, default: Duration) -> Duration {
    value.map_or(default, Duration::from_secs)
}

/// Raises the open-file limit to its hard maximum, and keeps `--max-connections` below what
/// that allows (past it, accepting would fail and clients would hang).
fn connection_limit(asked: Option<usize>) -> usize {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%error, "cannot raise the open-file limit");
    }
    let allowed = sluice_server::max_connections_for_files();
    match asked {
        Some(asked) if asked > allowed => {
            tracing::warn!(
                asked,
                allowed,
                "--max-connections is above what the open-file limit allows: using the lower"
            );
            allowed
        }
        Some(asked) => asked,
        None => allowed,
    }
}

/// The verifier of end-user tokens, when --chat-audience asks for them: the hub's key, not a
/// publisher's or subscriber's own.
fn end_user_verifier(args: &Args) -> anyhow::Result<Option<Verifier>> {
    let Some(audience) = &args.chat_audience else { return Ok(None) };
    let verifier = match (&args.jwt_public_key, &args.jwt_secret) {
        (Some(path), _) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Verifier::rs256_pem(&pem)?
        }
        (None, Some(secret)) => Verifier::hs256(secret.as_bytes()),
        (None, None) => bail!("--chat-audience needs --jwt-secret or --jwt-public-key"),
    };
    Ok(Some(verifier.for_audience(Some(audience.clone()))))
}

fn verifiers(args: &Args, limits: Limits) -> anyhow::Result<(Option<Verifier>, Option<Verifier>)> {
    let audience =
        args.jwt_audience.clone().or_else(|| args.hub_url.as_ref().map(|u| u.to_string()));
    let policy = |verifier: Verifier| {
        verifier
            .trusting(args.jwt_issuer.clone())
            .for_audience(audience.clone())
            .with_limits(limits)
    };
    if let Some(path) = &args.jwt_public_key {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let verifier = policy(Verifier::rs256_pem(&pem)?);
        return Ok((Some(verifier.clone()), Some(verifier)));
    }
    let key = |specific: &Option<String>| {
        specific
            .as_ref()
            .or(args.jwt_secret.as_ref())
            .map(|s| policy(Verifier::hs256(s.as_bytes())))
    };
    Ok((key(&args.publisher_jwt_secret), key(&args.subscriber_jwt_secret)))
}

pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Metrics first: parts started below (the hub's fan-out) report from the start.
    sluice_server::prometheus();
    survive_file_size_limit();
    let file = read_file(args.config.as_deref())?;
    let args = args.merge(file)?;
    let hub_defaults = HubConfig::default();
    let limits = hub_defaults.limits;
    let hub_config = HubConfig {
        queue_capacity: args.queue_capacity.unwrap_or(hub_defaults.queue_capacity),
        limits: Limits {
            max_topic_length: args.max_topic_length.unwrap_or(limits.max_topic_length),
            max_topics_per_update: args
                .max_topics_per_update
                .unwrap_or(limits.max_topics_per_update),
            max_template_length: args.max_template_length.unwrap_or(limits.max_template_length),
            max_template_variables: args
                .max_template_variables
                .unwrap_or(limits.max_template_variables),
        },
        ..hub_defaults
    };
    let listen = args.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
    let store_setting =
        args.store.clone().unwrap_or_else(|| "sqlite:./sluice-data/sluice.db".to_owned());
    let store_setting = store_setting.as_str();
    let dev = match args.dev {
        Some(true) => Some(crate::dev::Dev::prepare(listen, store_setting)?),
        _ => None,
    };
    // The development secret signs publishers' and subscribers' tokens unless a key was
    // given; subscribers need none for public updates, as without a key.
    let mut args = args;
    if let Some(dev) = &dev
        && args.jwt_secret.is_none()
        && args.jwt_public_key.is_none()
    {
        args.jwt_secret = Some(dev.secret.clone());
        args.anonymous = args.anonymous.or(Some(true));
    }
    let dev = dev.map(|mut dev| {
        // The token is signed with whichever key publishers' tokens are checked against.
        if let Some(secret) = args.publisher_jwt_secret.as_ref().or(args.jwt_secret.as_ref()) {
            dev.secret.clone_from(secret);
        }
        dev
    });
    let (publisher, subscriber) = verifiers(&args, hub_config.limits)?;
    let defaults = Config::default();
    let timeouts = Timeouts::default();
    let upstream = UpstreamTimeouts::default();
    let mut config = Config {
        open_streams: args.open_streams.unwrap_or(false),
        streams_long_poll: seconds(args.streams_long_poll, defaults.streams_long_poll),
        anonymous: args.anonymous.unwrap_or(subscriber.is_none()),
        hub_url: args.hub_url.clone(),
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
        max_connections: connection_limit(args.max_connections),
        max_subscriptions_per_client: args.max_subscriptions_per_client,
        subscription_events: !args.no_subscription_events.unwrap_or(false),
        models: Arc::new(crate::providers::router(&ModelSettings {
            traces: args.otlp_endpoint.clone().map(|endpoint| sluice_otlp::OtlpConfig {
                endpoint,
                service_name: args.otlp_service_name.clone().unwrap_or_else(|| "sluice".into()),
            }),
            providers: &args.providers,
            extra: &args.provider,
            scripted: &args.scripted,
            model: args
                .model
                .as_deref()
                .unwrap_or(Path::new(sluice_llm::local::DEFAULT_MODEL_PATH)),
            timeouts: UpstreamTimeouts {
                connect: seconds(args.upstream_connect_timeout, upstream.connect),
                first_token: seconds(args.upstream_first_token_timeout, upstream.first_token),
                gap: seconds(args.upstream_gap_timeout, upstream.gap),
            },
        })?),
        api_keys: args.api_keys.clone(),
        keys: sluice_server::keys::KeySpec::records(&args.keys)
            .map_err(|e| anyhow::anyhow!("[[keys]]: {e}"))?,
        admin_key: args.admin_key.clone(),
        end_users: end_user_verifier(&args)?,
        requests_per_minute: args.requests_per_minute,
        generation_grace: seconds(args.generation_grace, defaults.generation_grace),
        timeouts: Timeouts {
            request_head: seconds(args.request_head_timeout, timeouts.request_head),
            request_body: seconds(args.request_body_timeout, timeouts.request_body),
            idle_connection: seconds(args.idle_timeout, timeouts.idle_connection),
            write: seconds(args.write_timeout, timeouts.write),
        },
        tls: tls(&args)?,
        dev_publisher_token: dev
            .as_ref()
            .filter(|_| args.jwt_public_key.is_none())
            .map(crate::dev::Dev::publisher_token),
        ..defaults.clone()
    };

    let fanout = match args.replay_window_mib {
        None => Fanout::new(),
        Some(0) => Fanout::with_recent(0, 0),
        Some(mib) => Fanout::with_recent(DEFAULT_RECENT_UPDATES, mib.saturating_mul(1024 * 1024)),
    };
    let (store, streams): (Arc<dyn Store>, Arc<dyn Log>) = match parse_store(store_setting)? {
        StoreKind::Memory => (
            Arc::new(MemoryStore::new(
                args.history_max_updates.unwrap_or(100_000) as usize,
                fanout.listener(),
            )),
            Arc::new(MemoryLog::new()),
        ),
        StoreKind::Sqlite(path) => {
            let streams = SqliteLog::open(&streams_file(&path))?;
            let mut sqlite = SqliteConfig::new(path);
            sqlite.max_updates = Some(args.history_max_updates.unwrap_or(1_000_000));
            sqlite.max_age = args.history_max_age.map(Duration::from_secs);
            (Arc::new(SqliteStore::open(sqlite, fanout.listener())?), Arc::new(streams))
        }
        StoreKind::Redis(url) => {
            let mut redis = RedisConfig::new(url);
            redis.max_updates = Some(args.history_max_updates.unwrap_or(1_000_000));
            redis.max_age = args.history_max_age.map(Duration::from_secs);
            if let Some(prefix) = &args.redis_prefix {
                redis.prefix.clone_from(prefix);
            }
            let streams = RedisLog::open(&redis.url, &redis.prefix).await?;
            (Arc::new(RedisStore::open(redis, fanout.listener()).await?), Arc::new(streams))
        }
    };
    config.streams = Streams::new(streams, StreamLimits::default());
    let hub = Hub::new(store, fanout, hub_config);

    let listener = bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let anonymous = config.anonymous;
    let address = listener.local_addr()?;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{address}");
    tracing::info!(
        address = %address,
        store = %match parse_store(store_setting)? {
            StoreKind::Redis(url) => RedisConfig::new(url).redacted_url(),
            _ => store_setting.to_owned(),
        },
        anonymous,
        publishing = config.publisher.is_some(),
        models = ?config.models.models().iter().map(|(m, _)| m.as_str()).collect::<Vec<_>>(),
        "sluice is serving: chat {base}/ · console {base}/console · hub {base}/.well-known/mercure · API {base}/v1"
    );
    if let (Some(dev), Some(token)) = (&dev, &config.dev_publisher_token) {
        dev.announce(&base, token);
    }
    if let Some(file) = &args.ready_file {
        write_ready_file(file, address)
            .with_context(|| format!("cannot write --ready-file {}", file.display()))?;
    }
    sluice_server::serve(listener, AppState::new(hub, config), stop_signal()).await?;
    if let Some(file) = &args.ready_file {
        // The file says the server listens; after a clean stop it no longer does. (After a
        // crash it stays: whoever waits for it removes it before starting the server again.)
        let _ = std::fs::remove_file(file);
    }
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

/// Writes `address` and a newline to `file` under another name first, then renames it, so
/// that a reader waiting for the file never sees it empty or half written.
fn write_ready_file(file: &Path, address: SocketAddr) -> std::io::Result<()> {
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, format!("{address}\n"))?;
    std::fs::rename(&partial, file)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_user_tokens_need_the_hubs_key_to_be_checked() {
        assert!(end_user_verifier(&Args::default()).unwrap().is_none(), "off unless asked for");
        let asked = Args { chat_audience: Some("sluice-chat".into()), ..Args::default() };
        let refused = end_user_verifier(&asked).unwrap_err().to_string();
        assert!(refused.contains("--jwt-secret"), "{refused}");
        let keyed = Args { jwt_secret: Some("secret".into()), ..asked };
        let verifier = end_user_verifier(&keyed).unwrap().unwrap();
        assert_eq!(verifier.audience(), Some("sluice-chat"));
    }
}
