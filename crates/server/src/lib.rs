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
//! Handlers know HTTP; the hub knows topics and history; providers know models. Every error is an [`ApiError`]
//! with a JSON body. Event streams are never compressed and carry the headers that make
//! proxies pass each event through at once.

mod auth;
mod config;
mod error;
mod generations;
mod limits;
mod mercure;
mod openai;
mod openapi;
mod ops;
mod sse;
mod state;
mod ui;

use std::future::Future;

use axum::Router;
use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use auth::{Claims, Grant, KeyError, Verifier, mint_hs256};
pub use config::{Config, default_max_connections};
pub use error::ApiError;
pub use limits::{ClientAddr, LimitedListener};
pub use mercure::HUB_PATH;
pub use ops::prometheus;
pub use state::AppState;

/// All routes, with CORS as configured.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.config().cors_origins);
    let router = Router::new()
        .merge(mercure::routes())
        .merge(openai::routes())
        .merge(generations::routes())
        .merge(ops::routes())
        .merge(ui::routes())
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
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
        ])
        .expose_headers([HeaderName::from_static("last-event-id")]);
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> =
        origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(layer.allow_origin(AllowOrigin::list(list)).allow_credentials(true))
}

/// Serves until `shutdown` resolves, then stops accepting, ends every event stream (clients
/// reconnect elsewhere), waits for open requests, and closes the store (flushing it).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    prometheus();
    let listener = LimitedListener::new(listener, state.config().max_connections);
    let app = router(state.clone()).into_make_service_with_connect_info::<ClientAddr>();
    let stopping = state.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stopping.begin_shutdown();
            if let Err(error) = stopping.hub().shut_down().await {
                tracing::error!(%error, "closing the store failed");
            }
        })
        .await
}
