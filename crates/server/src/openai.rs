//! The OpenAI-compatible gateway: `POST /v1/chat/completions` (streamed or not) and
//! `GET /v1/models`, in OpenAI's wire format to the byte, so the official SDKs work unchanged.
//!
//! A streamed answer is relayed chunk by chunk as the provider produces it; comments keep the
//! connection alive while the model has not produced its first token; a client that goes
//! away drops the provider's stream, which cancels the upstream request at once.

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde_json::{Value, json};
use sluice_llm::{Delta, DeltaStream, FinishReason, Usage};

use crate::conn::ClientAddr;
use crate::error::{ApiError, ErrorBody};
use crate::sse::event_stream;
use crate::state::AppState;
use crate::wire::{Chunker, CompletionRequest, data_frame, provider_error};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
}

/// The checks every chat request goes through: the client's key and rate limit, the body's
/// size and pace, then its parsing.
pub(crate) async fn admitted_request(
    state: &AppState,
    headers: &HeaderMap,
    client: ClientAddr,
    body: Body,
) -> Result<CompletionRequest, ApiError> {
    state.admission().admit(headers, client.0.ip())?;
    let config = state.config();
    let body =
        crate::body::read_body(body, config.max_body_bytes, config.timeouts.request_body).await?;
    CompletionRequest::parse(&body)
}

/// Counts an answer whose reader left before its end as a cancelled upstream request.
struct Finished {
    done: bool,
}

impl Drop for Finished {
    fn drop(&mut self) {
        if !self.done {
            metrics::counter!("sluice_upstream_cancelled_total").increment(1);
        }
    }
}

/// The SSE frames of a streamed completion.
fn completion_frames(deltas: DeltaStream, chunker: Chunker) -> BoxStream<'static, Bytes> {
    let first = data_frame(&chunker.role().to_string());
    let state = (deltas, chunker, None::<Usage>, Finished { done: false });
    let rest = stream::unfold(Some(state), |state| async move {
        let (mut deltas, chunker, mut usage, mut finished) = state?;
        loop {
            let frames = match deltas.next().await {
                Some(Ok(Delta::Text(text))) => vec![data_frame(&chunker.text(&text).to_string())],
                Some(Ok(Delta::ToolCall { index, id, name, arguments })) => {
                    let chunk = chunker.tool_call(index, id.as_deref(), name.as_deref(), &arguments);
                    vec![data_frame(&chunk.to_string())]
                }
                Some(Ok(Delta::Usage(u))) => {
                    usage = Some(u);
                    continue;
                }
                Some(Ok(Delta::Finish(reason))) => {
                    let mut frames = vec![data_frame(&chunker.finish(reason).to_string())];
                    if chunker.include_usage {
                        let u = usage.unwrap_or_default();
                        frames.push(data_frame(&chunker.usage(u).to_string()));
                    }
                    frames.push(data_frame("[DONE]"));
                    finished.done = true;
                    return Some((frames, None));
                }
                Some(Err(error)) => {
                    finished.done = true;
                    let body = json!({"error": {"message": error.to_string(), "type": "server_error",
                        "param": null, "code": null}});
                    return Some((vec![data_frame(&body.to_string())], None));
                }
                None => {
                    finished.done = true;
                    return None;
                }
            };
            return Some((frames, Some((deltas, chunker, usage, finished))));
        }
    })
    .flat_map(stream::iter);
    stream::once(async move { first }).chain(rest).boxed()
}

/// Sends a chat completion, streamed (`"stream": true`) or whole.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway",
    request_body(content = CompletionRequest, content_type = "application/json",
        description = "OpenAI's chat completion request"),
    responses(
        (status = 200, description = "The completion (`chat.completion`), or with `stream: true` its chunks as an event stream",
            content((crate::wire::Completion = "application/json"), (crate::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "A malformed request (the error names the param)", body = ErrorBody),
        (status = 401, description = "A missing or wrong API key", body = ErrorBody),
        (status = 404, description = "No provider serves the model", body = ErrorBody),
        (status = 408, description = "The request body stalled", body = ErrorBody),
        (status = 413, description = "The request body is too large", body = ErrorBody),
        (status = 429, description = "Rate limited or the model is busy (Retry-After)", body = ErrorBody),
        (status = 500, description = "The provider failed inside this server", body = ErrorBody),
        (status = 502, description = "The upstream failed before answering", body = ErrorBody),
        (status = 504, description = "The upstream did not answer in time", body = ErrorBody),
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let request = admitted_request(&state, &headers, client, body).await?;
    let (stream, include_usage) = (request.stream, request.include_usage());
    let chat = request.into_chat(state.default_model().as_deref())?;
    let model = chat.model.clone();
    let deltas = state.config().models.stream(chat).await.map_err(provider_error)?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let chunker = Chunker::new(id, model, include_usage);
    if stream {
        let frames = completion_frames(deltas, chunker);
        let keep_alive = state.config().keep_alive;
        return Ok(event_stream(None, frames, keep_alive, None, ()));
    }
    whole_completion(deltas, &chunker).await
}

/// Collects an answer into one `chat.completion` object.
async fn whole_completion(
    mut deltas: DeltaStream,
    chunker: &Chunker,
) -> Result<Response, ApiError> {
    let mut finished = Finished { done: false };
    let (mut text, mut usage, mut finish) = (String::new(), Usage::default(), FinishReason::Stop);
    let mut calls: Vec<Value> = Vec::new();
    while let Some(delta) = deltas.next().await {
        match delta.map_err(provider_error)? {
            Delta::Text(t) => text.push_str(&t),
            Delta::ToolCall { index, id, name, arguments } => {
                let index = index as usize;
                while calls.len() <= index {
                    calls.push(json!({"id": "", "type": "function", "function": {"name": "", "arguments": ""}}));
                }
                let call = &mut calls[index];
                if let Some(id) = id {
                    call["id"] = json!(id);
                }
                if let Some(name) = name {
                    call["function"]["name"] = json!(name);
                }
                let joined =
                    format!("{}{arguments}", call["function"]["arguments"].as_str().unwrap_or(""));
                call["function"]["arguments"] = json!(joined);
            }
            Delta::Usage(u) => usage = u,
            Delta::Finish(reason) => finish = reason,
        }
    }
    finished.done = true;
    Ok(axum::Json(chunker.completion(text, calls, finish, usage)).into_response())
}

/// Lists the models the router serves.
#[utoipa::path(get, path = "/v1/models", tag = "gateway",
    responses((status = 200, description = "The models, OpenAI's list format", body = crate::wire::ModelList),
              (status = 401, description = "A missing or wrong API key", body = ErrorBody),
              (status = 429, description = "Rate limited (Retry-After)", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub(crate) async fn models(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.admission().admit(&headers, client.0.ip())?;
    Ok(axum::Json(crate::wire::ModelList::new(state.config().models.models())).into_response())
}
