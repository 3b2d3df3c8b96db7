//! The server's settings, as built objects (keys loaded, lists parsed). Reading them from
//! flags, environment and `sluice.toml` is the binary's job.

use std::sync::Arc;
use std::time::Duration;

use sluice_llm::Router;

use crate::auth::Verifier;
use crate::tls::Tls;

/// Everything the HTTP layer needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// Verifies publishers' tokens; without one, publishing over HTTP is refused.
    pub publisher: Option<Verifier>,
    /// Verifies subscribers' tokens; without one, only public updates can be received.
    pub subscriber: Option<Verifier>,
    /// The hub's public URL (`https://hub.example/.well-known/mercure`); when unset, the URL
    /// each request was sent to. Relative URL patterns and topics resolve against it.
    pub hub_url: Option<url::Url>,
    /// Whether a subscriber without a token may receive public updates.
    pub anonymous: bool,
    /// Origins allowed to subscribe from a browser with credentials (`*`: any, no credentials).
    pub cors_origins: Vec<String>,
    /// Origins allowed to publish with a cookie-borne token (`*`: any).
    pub publish_origins: Vec<String>,
    /// How often an idle event stream gets a comment, so proxies keep it open.
    pub keep_alive: Duration,
    /// The reconnection time sent to subscribers (`retry:`), if any.
    pub retry: Option<u64>,
    /// The largest request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// The largest `data` of one update (413 past it).
    pub max_event_bytes: usize,
    /// The most topic selectors one subscription may name (400 past it).
    pub max_topics_per_subscription: usize,
    /// The most simultaneous connections (503 with Retry-After past it).
    pub max_connections: usize,
    /// The most simultaneous subscriptions from one client address, if limited (429 past it).
    pub max_subscriptions_per_client: Option<usize>,
    /// Whether to publish subscription events (who subscribed to what, and who left).
    pub subscription_events: bool,
    /// The chat models and their providers.
    pub models: Arc<Router>,
    /// Keys clients must present to the gateway (`Authorization: Bearer`); none: open.
    pub api_keys: Vec<String>,
    /// Keys with names and limits (`[[keys]]`), beside the flat list's.
    pub keys: Vec<sluice_hub::KeyRecord>,
    /// The key of the admin API (`/admin/...`: keys made at run time, usage); none: no admin
    /// API. With one, the gateway asks every caller for a key, even while none exists yet.
    pub admin_key: Option<String>,
    /// Verifies end-user tokens (JWTs a back end mints for browsers, `sluice token --chat`)
    /// with the hub's key, its audience the `--chat-audience`; none: they are not accepted.
    /// With one, the gateway asks every caller for a key or a token.
    pub end_users: Option<Verifier>,
    /// Gateway requests per minute per key (or per address without keys), if limited.
    pub requests_per_minute: Option<u32>,
    /// How long an answer goes on with no reader before it is cancelled.
    pub generation_grace: Duration,
    /// How long a client may make the server wait (see [`Timeouts`]).
    pub timeouts: Timeouts,
    /// TLS, and with it HTTP/2 by ALPN (without it: HTTP/1.1, and HTTP/2 with prior
    /// knowledge, as a proxy in front may speak).
    pub tls: Option<Arc<Tls>>,
    /// Development mode's publisher token (`sluice serve --dev`), offered to the console at
    /// `/api/dev/token` when it is opened from the server's own machine.
    pub dev_publisher_token: Option<String>,
    /// Durable Streams (`/v1/stream/...`), over the store's log.
    pub streams: Arc<sluice_streams::Streams>,
    /// Whether anyone may create, append to and read streams without a token.
    pub open_streams: bool,
    /// How long a long-poll read waits for new data before answering 204.
    pub streams_long_poll: Duration,
    /// How long an SSE read of a stream stays open before it is ended (the reader resumes
    /// from its last offset): short enough for CDNs to collapse readers onto new requests.
    pub streams_sse_lifetime: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            publisher: None,
            subscriber: None,
            hub_url: None,
            anonymous: true,
            cors_origins: Vec::new(),
            publish_origins: Vec::new(),
            keep_alive: Duration::from_secs(15),
            retry: None,
            max_body_bytes: 1024 * 1024,
            max_event_bytes: 512 * 1024,
            max_topics_per_subscription: 64,
            max_connections: default_max_connections(),
            max_subscriptions_per_client: None,
            subscription_events: true,
            models: Arc::new(Router::new()),
            api_keys: Vec::new(),
            keys: Vec::new(),
            admin_key: None,
            end_users: None,
            requests_per_minute: None,
            generation_grace: Duration::from_secs(30),
            timeouts: Timeouts::default(),
            tls: None,
            dev_publisher_token: None,
            streams: sluice_streams::Streams::new(
                Arc::new(sluice_streams::MemoryLog::new()),
                sluice_streams::Limits::default(),
            ),
            open_streams: false,
            streams_long_poll: Duration::from_secs(20),
            streams_sse_lifetime: Duration::from_secs(60),
        }
    }
}

/// How long a client may make the server wait. Each bound is enforced by the connection layer
/// (`conn`), which closes the connection (and counts it in `sluice_timeouts_total`) when one
/// is hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From accept (or from the first byte of a later request) to a complete request head.
    pub request_head: Duration,
    /// Between two pieces of a request body.
    pub request_body: Duration,
    /// A connection with no request in flight and nothing arriving.
    pub idle_connection: Duration,
    /// A write to the client that makes no progress.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request_head: Duration::from_secs(30),
            request_body: Duration::from_secs(30),
            idle_connection: Duration::from_secs(75),
            write: Duration::from_secs(30),
        }
    }
}

/// Connections kept in reserve below the open-file limit, for the store, logs and accepts.
const FILE_RESERVE: u64 = 256;

/// The most connections the process's open-file limit allows: the limit minus a reserve.
/// Past it, accepting would fail anyway.
pub fn max_connections_for_files() -> usize {
    let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    soft.saturating_sub(FILE_RESERVE).max(16) as usize
}

/// The default connection limit: see [`max_connections_for_files`].
pub fn default_max_connections() -> usize {
    max_connections_for_files()
}
