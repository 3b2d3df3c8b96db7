//! OpenAI Chat Completions: `POST /v1/chat/completions` (streamed or not) and `GET /v1/models`,
//! in OpenAI's wire format to the byte ([`wire`]), so the official SDKs work unchanged.
//!
//! A streamed answer is relayed chunk by chunk as the provider produces it, straight from the
//! provider (it is not kept: a client that goes away drops the provider's stream, which
//! cancels the upstream request at once). The stream's head and first chunk go out before the
//! upstream is asked, and comments keep the connection alive until the first token.

pub(crate) mod wire;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde_json::json;
use sluice_llm::Usage;

use super::upstream::{Admitted, Allowed, ask, ask_lazily};
use crate::answers::events::{
    AnswerEvent, Encoder, Folded, encode, from_provider, whole_answer_error,
};
use crate::answers::read::unstored;
use crate::error::{ApiError, ErrorBody};
use crate::sse::event_stream;
use crate::state::AppState;
use wire::{Chunker, CompletionRequest, data_frame};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
}

/// The chunks of a streamed completion.
pub(crate) struct Chunks {
    chunker: Chunker,
    usage: Option<Usage>,
    failed: bool,
}

impl Chunks {
    pub(crate) fn new(chunker: Chunker) -> Self {
        Chunks { chunker, usage: None, failed: false }
    }
}

impl Encoder for Chunks {
    fn open(&mut self, out: &mut Vec<Bytes>) {
        out.push(self.chunker.role().frame());
    }

    fn event(&mut self, event: &AnswerEvent, _id: Option<&str>, out: &mut Vec<Bytes>) {
        let chunker = &self.chunker;
        match event {
            AnswerEvent::Start(_) => {}
            AnswerEvent::Text(text) => out.push(chunker.text(text).frame()),
            AnswerEvent::ToolCall(call) => {
                let (id, name) = (call.id.as_deref(), call.name.as_deref());
                out.push(chunker.tool_call(call.index, id, name, &call.arguments).frame());
            }
            AnswerEvent::Error(error) => {
                // OpenAI's error event: the SDKs raise on it. Nothing follows it.
                self.failed = true;
                let body = json!({"error": {"message": error["message"], "type": error["type"],
                    "param": null, "code": error["code"]}});
                out.push(data_frame(&body.to_string()));
            }
            AnswerEvent::Usage(usage) => self.usage = Some(*usage),
            AnswerEvent::End(finish) if !self.failed => {
                out.push(chunker.finish(finish.as_str()).frame());
                if chunker.include_usage {
                    let usage = self.usage.unwrap_or_default();
                    out.push(chunker.usage(usage).frame());
                }
                out.push(data_frame("[DONE]"));
            }
            AnswerEvent::End(_) => {}
        }
    }
}

/// Sends a chat completion, streamed (`"stream": true`) or whole.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "gateway",
    request_body(content = CompletionRequest, content_type = "application/json",
        description = "OpenAI's chat completion request"),
    responses(
        (status = 200, description = "The completion (`chat.completion`), or with `stream: true` its chunks as an event stream",
            content((wire::Completion = "application/json"), (crate::sse::SseEvent = "text/event-stream"))),
        (status = 400, description = "A malformed request (the error names the param)", body = ErrorBody),
        (status = 401, description = "A missing or wrong API key", body = ErrorBody),
        (status = 403, description = "The API key may not use the model", body = ErrorBody),
        (status = 404, description = "No provider serves the model", body = ErrorBody),
        (status = 408, description = "The request body stalled", body = ErrorBody),
        (status = 413, description = "The request body is too large", body = ErrorBody),
        (status = 429, description = "Rate limited, the key at a limit or its budget, or the model busy (Retry-After)", body = ErrorBody),
        (status = 500, description = "The provider failed inside this server", body = ErrorBody),
        (status = 502, description = "The upstream failed before answering", body = ErrorBody),
        (status = 504, description = "The upstream did not answer in time", body = ErrorBody),
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    Admitted(body, caller): Admitted,
) -> Result<Response, ApiError> {
    let request = CompletionRequest::parse(&body)?;
    let (stream, include_usage) = (request.stream, request.include_usage());
    let chat = request.into_chat(state.default_model().as_deref())?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let chunker = Chunker::new(id, chat.model.clone(), include_usage);
    if stream {
        let events = from_provider(ask_lazily(&state, &caller, chat)?);
        let frames = encode(unstored(events), Chunks::new(chunker));
        return Ok(event_stream(None, frames, state.config().keep_alive, None, ()));
    }
    let answer = Folded::all(from_provider(ask(&state, &caller, chat).await?)).await;
    if let Some(error) = &answer.error {
        return Err(whole_answer_error(error));
    }
    let calls = answer
        .calls
        .into_iter()
        .map(|(id, name, arguments)| {
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    let finish = answer.finish.map_or("stop", |f| f.as_str());
    let completion = chunker.completion(answer.text, calls, finish, answer.usage);
    Ok(axum::Json(completion).into_response())
}

/// Lists the models the router serves.
#[utoipa::path(get, path = "/v1/models", tag = "gateway",
    responses((status = 200, description = "The models, OpenAI's list format", body = wire::ModelList),
              (status = 401, description = "A missing or wrong API key", body = ErrorBody),
              (status = 429, description = "Rate limited (Retry-After)", body = ErrorBody)),
    security((), ("api_key" = [])))]
pub(crate) async fn models(
    State(state): State<AppState>,
    _: Allowed,
) -> Result<Response, ApiError> {
    Ok(axum::Json(wire::ModelList::new(state.config().models.models())).into_response())
}
