//! Operations routes: Prometheus metrics, liveness, readiness.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;
use crate::telemetry::prometheus;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// How the process is.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Status {
    /// `ok`, `ready`, `shutting down` or `store unavailable`.
    status: &'static str,
    /// Why it is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
pub(crate) async fn render_metrics() -> Response {
    let text = prometheus().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process is alive", body = Status)))]
pub(crate) async fn healthz() -> Response {
    axum::Json(Status { status: "ok", detail: None }).into_response()
}

/// Ready when the store answers, its last write did not fail, and the server is not
/// shutting down.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, description = "Ready for traffic", body = Status),
              (status = 503, description = "Shutting down, or the store does not answer", body = Status)))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        let status = Status { status: "shutting down", detail: None };
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(status)).into_response();
    }
    // Not ready while writes fail (a full disk, Redis down), even if reads still work.
    let failure = match state.hub().store().find("").await {
        Ok(_) => state.hub().store_failure(),
        Err(error) => Some(error.to_string()),
    };
    match failure {
        None => axum::Json(Status { status: "ready", detail: None }).into_response(),
        Some(detail) => {
            let status = Status { status: "store unavailable", detail: Some(detail) };
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(status)).into_response()
        }
    }
}
