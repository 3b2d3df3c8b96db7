//! Answers as Durable Streams, for `@durable-streams/aisdk-transport`'s
//! `createDurableChatTransport` (the AI SDK's `useChat` over Durable Streams):
//!
//! - `POST /api/durable-chat` takes the same body as `POST /api/chat` and starts the answer
//!   the same way, but answers at once with where to read it: `Location` (and `{streamUrl}`)
//!   naming the Durable Stream `answers/{answer}` that this node fills with the answer's UI
//!   message chunks, one JSON message each, and closes when the answer ends.
//! - `GET /api/durable-chat/{id}/stream` gives the chat's running answer's stream the same way
//!   (the transport's reconnect after a reload), or 204 when none runs.
//! - `POST /api/durable-chat/{id}/stop` stops it, as `POST /api/chat/{id}/stop` does (the
//!   chats are the same: one answer at a time per chat and caller, whichever route started it).
//!
//! The stream is an ordinary Durable Stream in the store, so any client of the protocol reads
//! it, from any node, from any offset, after any restart of the reader. Its path holds the
//! answer's id (128 random bits, shown to nobody else), which is what lets a reader in: the
//! transport sends no credentials to the stream, so the URL is the capability, as an
//! `/api/generations` answer's token is. No client may write under `answers/`.
//!
//! The answer goes on to its end whether anyone reads or not (its copy into the stream is a
//! reader), as the transport's own server does: a reload loses nothing, and "stop" is the
//! explicit call above.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_streams::{Append, Create, Expiry, Streams};

use super::generations::no_content;
use super::ui_stream::{UiChunks, running, start_chat, stop};
use super::upstream::{Admitted, Allowed};
use crate::answers::events::AnswerEvent;
use crate::answers::read::Piece;
use crate::durable::{ANSWERS, ROOT};
use crate::error::ApiError;
use crate::hub_url::hub_url;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/durable-chat", post(send))
        .route("/api/durable-chat/{id}/stream", get(reconnect))
        .route("/api/durable-chat/{id}/stop", post(stop))
}

const JSON: &str = "application/json";

/// The stream an answer is copied into, under the streams' root.
fn stream_path(answer: &str) -> String {
    format!("{ANSWERS}{answer}")
}

/// Where the transport reads an answer: `Location` and `{streamUrl}`.
fn pointer(
    status: StatusCode,
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    answer: &str,
) -> Response {
    let origin = hub_url(state.config(), headers, uri).origin().ascii_serialization();
    let url = format!("{origin}{ROOT}{}", stream_path(answer));
    (status, [(header::LOCATION, url.clone())], axum::Json(json!({"streamUrl": url})))
        .into_response()
}

/// Starts the answer and its copy into a Durable Stream; answers with where to read it.
pub(crate) async fn send(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Admitted(body, caller): Admitted,
) -> Result<Response, ApiError> {
    let started = start_chat(&state, &caller, &headers, &body).await?;
    let answer = started.id.clone();
    let path = stream_path(&answer);
    let create = Create {
        content_type: Some(JSON.to_owned()),
        expiry: Expiry::Never,
        closed: false,
        body: Bytes::new(),
        fork: None,
    };
    // Made before the answer is pointed to, so that the first read finds it.
    state.streams().create(&path, create).await.map_err(|e| stream_failure(&e))?;
    let (pieces, reader) = state.answers().read_new(state.hub(), started, true);
    let streams = std::sync::Arc::clone(state.streams());
    tokio::spawn(async move {
        let _reading = reader;
        if let Err(error) = copy(&streams, &path, pieces).await {
            tracing::warn!(%error, path, "an answer's durable stream was left unfinished");
        }
    });
    Ok(pointer(StatusCode::CREATED, &state, &headers, &uri, &answer))
}

/// The chat's running answer's stream, for a reload; 204 when none runs.
pub(crate) async fn reconnect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    _: Allowed,
) -> Result<Response, ApiError> {
    match running(&state, &headers, &id).await? {
        Some(answer) => Ok(pointer(StatusCode::OK, &state, &headers, &uri, &answer)),
        None => Ok(no_content()),
    }
}

/// Appends each event's UI chunks to the stream as JSON messages, and closes it with the
/// answer's end (an `abort` chunk when the answer stopped being told before its end).
async fn copy(
    streams: &Streams,
    path: &str,
    mut pieces: futures_util::stream::BoxStream<'static, Piece>,
) -> Result<(), sluice_streams::Error> {
    let mut chunks = UiChunks::default();
    let append = |values: Vec<Value>, close: bool| Append {
        content_type: Some(JSON.to_owned()),
        body: serde_json::to_vec(&values).expect("JSON values serialise").into(),
        close,
        writer_seq: None,
        producer: None,
    };
    while let Some(piece) = pieces.next().await {
        let Piece::Event(_, event) = piece else { continue };
        let values = chunks.chunks(&event);
        let end = matches!(event, AnswerEvent::End(_));
        if end || !values.is_empty() {
            streams.append(path, append(values, end)).await?;
        }
        if end {
            return Ok(());
        }
    }
    streams.append(path, append(vec![json!({"type": "abort"})], true)).await?;
    Ok(())
}

fn stream_failure(error: &sluice_streams::Error) -> ApiError {
    tracing::warn!(%error, "an answer's durable stream could not be made");
    ApiError::unavailable("the answer's stream cannot be stored now; retry shortly", 1)
}
