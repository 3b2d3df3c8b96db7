//! The HTTP face of Sluice: axum routes over the hub, with auth, limits and metrics.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sluice_hub::{Fanout, Hub, HubConfig, MemoryStore};
//! use sluice_server::{AppState, Config};
//!
//! # async fn run() -> std::io::Result<()> {
//! let fanout = Fanout::new();
//! let store = Arc::new(MemoryStore::new(10_000, fanout.listener()));
//! let state = AppState::new(Hub::new(store, fanout, HubConfig::default()), Config::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! sluice_server::serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! Handlers know HTTP; the hub knows topics and history; providers know models. Every error
//! is an [`ApiError`] with a JSON body. Event streams are never compressed and carry the
//! headers that make proxies pass each event through at once.
//!
//! Modules, by what they serve (data flows one way: routes → shared pieces → hub, llm):
//! - routes: `mercure` (the hub), `gateway` (the AI protocols over one answer engine),
//!   `durable` (Durable Streams), `ops`,
//!   `openapi`, `ui`;
//! - shared pieces: `answers` (the one answer engine every gateway protocol and the state
//!   use), `api_schema` (pieces of the API document the routes share), `admission` (keys,
//!   budgets, per-client counts), `keys` (key records, their limits and usage), `end_users`
//!   (end-user tokens for browsers), `admin` (the
//!   admin API), `auth` (JWTs), `grants`
//!   (draft-08 authorization details), `body`, `form`, `sse`, `error`, `telemetry`, `conn`
//!   (connections and their timeouts), `state`, `config`.

mod admin;
mod admission;
mod announcer;
mod answers;
mod api_schema;
mod auth;
mod body;
mod config;
mod conn;
mod durable;
mod end_users;
mod error;
mod form;
mod gateway;
mod grants;
mod hub_url;
pub mod keys;
mod mercure;
mod openapi;
mod ops;
mod signing;
mod sse;
mod state;
mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod tls;
mod ui;

use std::future::Future;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth::{Claims, DEFAULT_ISSUER, Grant, KeyError, TokenKind, Verifier, mint_hs256};
pub use config::{Config, Timeouts, default_max_connections, max_connections_for_files};
pub use conn::ClientAddr;
pub use end_users::{
    COOKIE as CHAT_TOKEN_COOKIE, ChatClaim, ChatGrant, ChatLimits, mint_chat_hs256,
};
pub use error::ApiError;
pub use grants::{AccessGrant, MatchType, TopicMatcher, mint_access_hs256};
pub use hub_url::HUB_PATH;
pub use state::AppState;
pub use telemetry::prometheus;
pub use tls::{CertificateSource, Tls, TlsError};

/// The longest request target (path and query) answered; past it, 414. (The `http` crate
/// cannot hold a target of 64 KiB or more: hyper answers those itself, with an empty 414.)
const MAX_URI_BYTES: usize = 60 * 1024;
/// The most header bytes (names and values) answered; past it, 431.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The most header fields answered; past it, 431.
const MAX_HEADER_FIELDS: usize = 100;

/// All routes, with CORS as configured, request limits and the access log.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(mercure::routes())
        .merge(gateway::routes())
        .merge(ops::routes())
        .merge(admin::routes())
        .merge(openapi::routes())
        .merge(ui::routes());
    let routes = match cors(&state.config().cors_origins) {
        Some(cors) => routes.layer(cors),
        None => routes,
    };
    // The streams have CORS of their own: other methods, and the protocol's headers.
    let router = routes.merge(durable::routes(&state)).fallback(not_found).with_state(state);
    router.layer(middleware::from_fn(request_limits)).layer(middleware::from_fn(access_log))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// Refuses requests whose target or headers are too large, with the JSON error shape (hyper
/// answers only far larger ones itself, with an empty body).
async fn request_limits(request: Request, next: Next) -> Response {
    let uri = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {uri} bytes; at most {MAX_URI_BYTES} are accepted"),
        )
        .into_response();
    }
    let headers = request.headers();
    let bytes: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if headers.len() > MAX_HEADER_FIELDS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "at most {MAX_HEADER_FIELDS} header fields and {MAX_HEADER_BYTES} bytes of headers are accepted"
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// Logs each request at debug level (method, path, status, time; never the query, which may
/// hold a token), and refused credentials at info level with the client's address.
async fn access_log(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let client = request.extensions().get::<ConnectInfo<ClientAddr>>().map(|c| c.0.0);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        tracing::info!(%method, path, status = status.as_u16(), client = ?client, "refused: credentials");
    } else {
        tracing::debug!(%method, path, status = status.as_u16(), millis, client = ?client, "request");
    }
    response
}

/// CORS for browsers on other origins: exact origins with credentials (so `EventSource` with
/// `withCredentials` and the cookie work), or `*` without credentials — never both.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::CACHE_CONTROL,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("anthropic-version"),
            HeaderName::from_static("anthropic-beta"),
        ])
        .expose_headers([
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("mercure-last-event-id"),
            header::LINK,
            HeaderName::from_static("x-vercel-ai-ui-message-stream"),
        ]);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> =
        origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(layer.allow_origin(AllowOrigin::list(list)).allow_credentials(true))
}

/// Serves until `shutdown` resolves, then stops accepting, ends every subscription (clients
/// reconnect elsewhere), waits (a bounded time) for open requests, answers in flight among
/// them, and closes the store (flushing it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    prometheus();
    let config = conn::ServeConfig {
        max_connections: state.config().max_connections,
        timeouts: state.config().timeouts,
        tls: state.config().tls.clone(),
        direct: conn::DirectPaths {
            subscription: mercure::HUB_PATH,
            answers: gateway::STREAMED_ANSWER_PATHS,
        },
        max_body_bytes: state.config().max_body_bytes,
    };
    let stopping = state.clone();
    let on_shutdown = async move {
        stopping.begin_shutdown();
        stopping.streams().shut_down();
        stopping.hub().end_subscriptions();
    };
    let hub = state.hub().clone();
    // Closed once the answers in flight have finished (or the grace is over): until then
    // their pumps still store what they say.
    let close = async move {
        if let Err(error) = hub.shut_down().await {
            tracing::error!(%error, "closing the store failed");
        }
    };
    conn::serve_router(listener, router(state), config, shutdown, on_shutdown, close).await
}
