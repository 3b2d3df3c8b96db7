//! Sluice's own answers API: every answer started here is a stream in the hub, so a reader can
//! drop, reload, or join late and get the whole answer exactly once, and "stop" cancels the
//! upstream at once.
//!
//! - `POST /api/generations` starts an answer and returns its id, `events_url` and
//!   `cancel_url` (both carrying the answer's capability token), at once: the upstream is
//!   asked after, and what it says, a failure included, is the answer's to tell.
//! - `GET /api/generations/{id}/events` follows it (EventSource): `delta` `{"text"}` events,
//!   then `usage`, then `end` `{"finish_reason"}` (or `error`, then `end`), each with an id.
//!   A reconnect with `Last-Event-ID` continues where it stopped; after `end` it gets 204,
//!   which makes a browser's EventSource stop for good.
//! - `POST /api/generations/{id}/cancel` stops the upstream and still ends the stream.
//!
//! What an answer is in the hub, and who may read it, is in [`super::answers`].

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::chat_completions::wire::CompletionRequest;
use super::upstream::{Admitted, ask_lazily};
use crate::answers::events::{AnswerEvent, Encoder, encode};
use crate::answers::read::{cursor, ended_at};
use crate::answers::{Kind, NewAnswer, Unread};
use crate::error::ApiError;
use crate::sse::event_stream;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/generations", post(create))
        .route("/api/generations/{id}/events", get(events))
        .route("/api/generations/{id}/cancel", post(cancel))
}

/// A started answer: where to follow it and how to stop it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Created {
    /// The answer's id.
    id: String,
    /// Follow the answer here (EventSource); the URL carries the capability token.
    events_url: String,
    /// `POST` here to stop the answer; the URL carries the capability token.
    cancel_url: String,
}

/// The reply to a cancel request.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Cancelling {
    /// The answer's id.
    id: String,
    /// Always `cancelling`.
    status: String,
}

/// Starts an answer: `201 {"id", "events_url", "cancel_url"}`.
#[utoipa::path(post, path = "/api/generations", tag = "answers",
    request_body(content = CompletionRequest, content_type = "application/json",
        description = "The same body as /v1/chat/completions (`stream` is ignored)"),
    responses((status = 201, description = "Started", body = Created),
              (status = 400, description = "A malformed request", body = crate::error::ErrorBody),
              (status = 401, description = "A missing or wrong API key", body = crate::error::ErrorBody),
              (status = 403, description = "The API key may not use the model", body = crate::error::ErrorBody),
              (status = 404, description = "No provider serves the model", body = crate::error::ErrorBody),
              (status = 408, description = "The request body stalled", body = crate::error::ErrorBody),
              (status = 413, description = "The request body is too large", body = crate::error::ErrorBody),
              (status = 429, description = "Rate limited or the model is busy", body = crate::error::ErrorBody),
              (status = 502, description = "The upstream failed before answering", body = crate::error::ErrorBody),
              (status = 503, description = "The store is unavailable", body = crate::error::ErrorBody),
              (status = 504, description = "The upstream did not answer in time", body = crate::error::ErrorBody)),
    security((), ("api_key" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    Admitted(body, caller): Admitted,
) -> Result<Response, ApiError> {
    let chat = CompletionRequest::parse(&body)?.into_chat(state.default_model().as_deref())?;
    let deltas = ask_lazily(&state, &caller, chat)?;
    let new = NewAnswer {
        kind: Kind::Generation,
        start: Value::Null,
        unread: Unread::CancelAfter(state.config().generation_grace),
        id: None,
        key: None,
    };
    let started = state.answers().start(state.hub(), deltas, new).await?;
    let (id, token) = (started.id, started.token);
    let created = Created {
        events_url: format!("/api/generations/{id}/events?token={token}"),
        cancel_url: format!("/api/generations/{id}/cancel?token={token}"),
        id,
    };
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// The query of an answer's URLs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct TokenQuery {
    /// The capability token from `events_url` or `cancel_url`.
    token: String,
    /// Resume after this event id (the `Last-Event-ID` header wins).
    #[serde(default, rename = "lastEventID")]
    #[param(rename = "lastEventID")]
    last_event_id: Option<String>,
}

/// 204: the answer has ended (an `EventSource` stops reconnecting for good).
pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Follows an answer (EventSource, resumable).
#[utoipa::path(get, path = "/api/generations/{id}/events", tag = "answers",
    params(("id" = String, Path, description = "The answer"), TokenQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "delta, usage, end (or error, end) events", content_type = "text/event-stream", body = crate::sse::SseEvent),
              (status = 204, description = "The answer has ended: stop reconnecting"),
              (status = 400, description = "No token", body = crate::error::ErrorBody),
              (status = 403, description = "A wrong token", body = crate::error::ErrorBody),
              (status = 404, description = "No such answer", body = crate::error::ErrorBody),
              (status = 503, description = "The store is unavailable", body = crate::error::ErrorBody)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    state.answers().authorize(state.hub(), &id, Kind::Generation, Some(&query.token)).await?;
    let after = cursor(&headers, query.last_event_id);
    if let Some(after) = &after
        && ended_at(state.hub(), after).await?
    {
        return Ok(no_content());
    }
    let (pieces, reader) = state.answers().follow(state.hub(), &id, after, true).await?;
    let frames = encode(pieces, AnswersApi);
    Ok(event_stream(None, frames, state.config().keep_alive, None, reader))
}

/// The answers API's events: as stored, each with its id (the merged deltas of a slow reader
/// under the last one's), but for `start`, which says nothing this API's reader needs.
struct AnswersApi;

impl Encoder for AnswersApi {
    fn event(&mut self, event: &AnswerEvent, id: Option<&str>, out: &mut Vec<Bytes>) {
        if !matches!(event, AnswerEvent::Start(_)) {
            out.push(event_frame(Some(event.event_type()), id, &event.data()));
        }
    }
}

/// One SSE event, with an id when it has one.
pub(crate) fn event_frame(
    event: Option<&str>,
    id: Option<&str>,
    data: &impl serde::Serialize,
) -> Bytes {
    let mut frame = BytesMut::new();
    let data = serde_json::to_string(data).expect("an event's data always serializes");
    let mut out = sluice_sse::Event::new(data);
    if let Some(id) = id {
        out = out.with_id(id).expect("answer ids are plain");
    }
    if let Some(event) = event {
        out = out.with_event(event).expect("constant event types");
    }
    out.encode(&mut frame);
    frame.freeze()
}

/// Stops an answer: the upstream is cancelled, the stream still ends with usage and end.
#[utoipa::path(post, path = "/api/generations/{id}/cancel", tag = "answers",
    params(("id" = String, Path, description = "The answer"), TokenQuery),
    responses((status = 202, description = "Cancelling", body = Cancelling),
              (status = 400, description = "No token", body = crate::error::ErrorBody),
              (status = 403, description = "A wrong token", body = crate::error::ErrorBody),
              (status = 404, description = "No such answer", body = crate::error::ErrorBody),
              (status = 409, description = "The answer is not running (it ended)", body = crate::error::ErrorBody),
              (status = 503, description = "The store is unavailable", body = crate::error::ErrorBody)))]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    state.answers().authorize(state.hub(), &id, Kind::Generation, Some(&query.token)).await?;
    if state.answers().cancel(state.hub(), &id).await? {
        let body = Cancelling { id, status: "cancelling".to_owned() };
        Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
    } else {
        Err(ApiError::new(StatusCode::CONFLICT, "not_running", "the answer is not running"))
    }
}
