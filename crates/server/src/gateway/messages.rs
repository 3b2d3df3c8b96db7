//! The Anthropic Messages API: `POST /v1/messages` (streamed or not) and
//! `POST /v1/messages/count_tokens`, in Anthropic's wire format, so the Anthropic SDKs and the
//! tools built on them (Claude Code among them) can point at Sluice by base URL, whatever
//! provider is behind it.
//!
//! An answer here is streamed straight from the provider, not kept: a client that leaves
//! cancels the upstream at once. `ping` events keep the connection alive while the model has
//! not produced its first token. Keys come as `x-api-key` or `Authorization: Bearer` (the
//! gatekeeper takes either, on every route);
//! `anthropic-version` and `anthropic-beta` are accepted and change nothing. Errors, before
//! the stream and in it, have Anthropic's shape, `{"type": "error", "error": {"type",
//! "message"}}`.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_llm::{ChatRequest, Message, Role, Usage};

use super::upstream::{Admitted, ask, ask_lazily, provider_error};
use crate::answers::events::{AnswerEvent, Encoder, Finish, Folded, encode, from_provider};
use crate::answers::read::unstored;
use crate::error::ApiError;
use crate::keys::Caller;
use crate::sse::{KeepAlive, event_stream};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
}

/// The most messages in one request.
const MAX_MESSAGES: usize = 2048;
/// The most stop sequences in one request.
const MAX_STOP_SEQUENCES: usize = 16;

/// The body of `POST /v1/messages`: the parameters Sluice honours (others are ignored).
#[derive(Debug, Deserialize)]
struct MessagesRequest {
    model: Option<String>,
    messages: Vec<InMessage>,
    /// Required by Anthropic's API (not by `count_tokens`).
    #[serde(default, deserialize_with = "super::chat_completions::wire::whole_number")]
    max_tokens: Option<u64>,
    system: Option<Value>,
    #[serde(default)]
    stop_sequences: Vec<String>,
    #[serde(default)]
    stream: bool,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Value,
}

/// The schemas of the document: what the handlers below accept and answer.
pub(crate) mod doc {
    use serde_json::{Value, json};

    use crate::api_schema::written_schema;

    /// Text blocks (`{"type": "text", "text"}`).
    fn text_blocks() -> Value {
        json!({"type": "array", "items": {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}})
    }

    /// A block of type `kind`.
    fn block(kind: &Value) -> Value {
        json!({"type": "object", "required": ["type"], "properties": {"type": kind}})
    }

    /// A message of `role`, whose content is a string or these blocks.
    fn message(role: &str, blocks: &Value) -> Value {
        json!({"type": "object", "required": ["role", "content"], "properties": {
            "role": {"const": role},
            "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": blocks}]}}})
    }

    /// The body's properties; `max_tokens` as `POST /v1/messages` takes it.
    fn body(max_tokens: &Value, required: &[&str]) -> Value {
        let thinking = block(&json!({"enum": ["thinking", "redacted_thinking"]}));
        let tool_result = json!({"type": "object", "required": ["type"], "properties": {
            "type": {"const": "tool_result"},
            "content": {"anyOf": [{"type": "null"}, {"type": "string"}, text_blocks()]}}});
        let user = message(
            "user",
            &json!({"anyOf": [block(&json!({"const": "text"})), tool_result, thinking]}),
        );
        let assistant = message(
            "assistant",
            &json!({"anyOf": [block(&json!({"const": "text"})), block(&json!({"const": "tool_use"})),
                thinking]}),
        );
        json!({
            "type": "object",
            "required": required,
            "properties": {
                "model": {"type": ["string", "null"],
                    "description": "The model; the first configured one when absent",
                    "examples": ["scripted"]},
                "messages": {"type": "array", "minItems": 1, "maxItems": super::MAX_MESSAGES,
                    "items": {"anyOf": [user, assistant]}},
                "max_tokens": max_tokens,
                "system": {"anyOf": [{"type": "null"}, {"type": "string"}, text_blocks()]},
                "stop_sequences": {"type": "array", "maxItems": super::MAX_STOP_SEQUENCES,
                    "items": {"type": "string", "minLength": 1}},
                "stream": {"type": "boolean", "description": "Stream the message's events"},
                "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
                "tools": {"type": "array", "items": {"type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}}}},
                "tool_choice": {"description": "`auto`, `any`, `none` or `tool` (by name)"},
            },
        })
    }

    written_schema!(
        /// The body of `POST /v1/messages`: the parameters Sluice honours (others are ignored).
        CreateMessage,
        body(&json!({"type": "integer", "minimum": 1, "maximum": u64::MAX}), &["messages", "max_tokens"])
    );

    written_schema!(
        /// The body of `POST /v1/messages/count_tokens`: a message request, `max_tokens`
        /// optional.
        CountTokens,
        body(&json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX}), &["messages"])
    );

    written_schema!(
        /// A message, Anthropic's shape.
        MessageObject,
        json!({
            "type": "object",
            "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "message"},
                "role": {"const": "assistant"},
                "model": {"type": "string"},
                "content": {"type": "array", "items": {"type": "object", "required": ["type"]}},
                "stop_reason": {"enum": ["end_turn", "max_tokens", "tool_use", "refusal"]},
                "stop_sequence": {"type": "null"},
                "usage": {"type": "object", "required": ["input_tokens", "output_tokens"],
                    "properties": {"input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"}}},
            },
        })
    );

    written_schema!(
        /// A token count.
        TokenCount,
        json!({"type": "object", "required": ["input_tokens"],
            "properties": {"input_tokens": {"type": "integer", "minimum": 0}}})
    );

    written_schema!(
        /// An error, Anthropic's shape.
        AnthropicError,
        json!({
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {"type": "object", "required": ["type", "message"], "properties": {
                    "type": {"type": "string", "description": "`invalid_request_error`, \
                        `authentication_error`, `permission_error`, `not_found_error`, \
                        `request_too_large`, `rate_limit_error`, `overloaded_error` or \
                        `api_error`"},
                    "message": {"type": "string"}}},
            },
        })
    );
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_request", message)
}

/// The text of content that may be a string or a list of text blocks.
fn text_of(content: &Value, what: &str) -> Result<String, ApiError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|block| match (block["type"].as_str(), block["text"].as_str()) {
                (Some("text"), Some(text)) => Ok(text),
                (kind, _) => Err(invalid(format!(
                    "{what}: only text blocks are supported here, not {}",
                    kind.unwrap_or("untyped blocks")
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
        Value::Null => Ok(String::new()),
        _ => Err(invalid(format!("{what} must be a string or a list of content blocks"))),
    }
}

/// One message of Anthropic's, as the chat messages it makes: tool results become tool
/// messages, tool uses the assistant's tool calls.
fn convert(message: &InMessage, out: &mut Vec<Message>) -> Result<(), ApiError> {
    let role = match message.role.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        other => return Err(invalid(format!("messages: unexpected role {other:?}"))),
    };
    let blocks = match &message.content {
        Value::String(text) => {
            out.push(Message::new(role, text.clone()));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => return Err(invalid("messages: content must be a string or a list of blocks")),
    };
    let mut said = Message::new(role, "");
    for block in blocks {
        match block["type"].as_str() {
            Some("text") => said.content.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") if role == Role::Assistant => {
                said.tool_calls.push(json!({"id": block["id"], "type": "function", "function": {
                    "name": block["name"], "arguments": block["input"].to_string()}}));
            }
            Some("tool_result") if role == Role::User => out.push(Message {
                tool_call_id: block["tool_use_id"].as_str().map(str::to_owned),
                ..Message::new(Role::Tool, text_of(&block["content"], "tool_result content")?)
            }),
            // Earlier reasoning: nothing a chat upstream takes.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(invalid(format!(
                    "messages: {} blocks are not supported",
                    other.unwrap_or("untyped")
                )));
            }
        }
    }
    if !said.content.is_empty() || !said.tool_calls.is_empty() {
        out.push(said);
    }
    Ok(())
}

impl MessagesRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: MessagesRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("invalid request body: {e}"))
        })?;
        if request.messages.is_empty() || request.messages.len() > MAX_MESSAGES {
            return Err(invalid(format!("messages: 1 to {MAX_MESSAGES} messages are required")));
        }
        if request.temperature.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(invalid("temperature: must be between 0 and 1"));
        }
        if request.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(invalid("top_p: must be between 0 and 1"));
        }
        if request.stop_sequences.len() > MAX_STOP_SEQUENCES
            || request.stop_sequences.iter().any(String::is_empty)
        {
            return Err(invalid(format!(
                "stop_sequences: at most {MAX_STOP_SEQUENCES} non-empty sequences"
            )));
        }
        Ok(request)
    }

    /// The provider-facing request.
    fn into_chat(self, default_model: Option<&str>) -> Result<ChatRequest, ApiError> {
        let model = self
            .model
            .or_else(|| default_model.map(str::to_owned))
            .ok_or_else(|| invalid("model: Field required"))?;
        let mut messages = Vec::new();
        if let Some(system) = &self.system {
            messages.push(Message::new(Role::System, text_of(system, "system")?));
        }
        for message in &self.messages {
            convert(message, &mut messages)?;
        }
        let tools = self
            .tools
            .iter()
            .map(|tool| match tool["name"].as_str() {
                Some(name) => Ok(json!({"type": "function", "function": {"name": name,
                    "description": tool["description"], "parameters": tool["input_schema"]}})),
                None => Err(invalid("tools: each tool needs a name")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tool_choice = self.tool_choice.map(|choice| match choice["type"].as_str() {
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({"type": "function", "function": {"name": choice["name"]}}),
            _ => json!("auto"),
        });
        let max_tokens = self.max_tokens.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        Ok(ChatRequest {
            model,
            messages,
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            max_tokens,
            stop: self.stop_sequences,
            tools,
            tool_choice,
            ..ChatRequest::default()
        })
    }
}

/// Anthropic's name for why an answer ended.
fn stop_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
        Finish::ContentFilter => "refusal",
        Finish::Stop | Finish::Cancelled | Finish::Error => "end_turn",
    }
}

fn usage(usage: Usage) -> Value {
    json!({"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens})
}

/// One named event.
fn frame(kind: &str, body: &Value) -> Bytes {
    let mut frame = BytesMut::new();
    let event = sluice_sse::Event::new(body.to_string()).with_event(kind).expect("a plain type");
    event.encode(&mut frame);
    frame.freeze()
}

/// A streamed message: content blocks opened and closed around the answer's text and calls.
struct MessageEvents {
    id: String,
    model: String,
    /// The index of the open content block, and the tool call it is (`None`: text).
    open: Option<(usize, Option<u32>)>,
    blocks: usize,
    usage: Usage,
    failed: bool,
}

impl MessageEvents {
    fn close(&mut self, out: &mut Vec<Bytes>) {
        if let Some((index, _)) = self.open.take() {
            out.push(frame(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    fn open(&mut self, call: Option<u32>, block: &Value, out: &mut Vec<Bytes>) -> usize {
        self.close(out);
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some((index, call));
        let start = json!({"type": "content_block_start", "index": index, "content_block": block});
        out.push(frame("content_block_start", &start));
        index
    }
}

impl Encoder for MessageEvents {
    fn open(&mut self, out: &mut Vec<Bytes>) {
        let message = json!({"id": self.id, "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}});
        out.push(frame("message_start", &json!({"type": "message_start", "message": message})));
    }

    fn event(&mut self, event: &AnswerEvent, _id: Option<&str>, out: &mut Vec<Bytes>) {
        match event {
            AnswerEvent::Start(_) => {}
            AnswerEvent::Text(text) => {
                let index = match self.open {
                    Some((index, None)) => index,
                    _ => self.open(None, &json!({"type": "text", "text": ""}), out),
                };
                let delta = json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "text_delta", "text": text}});
                out.push(frame("content_block_delta", &delta));
            }
            AnswerEvent::ToolCall(part) => {
                let index = match self.open {
                    Some((index, Some(call))) if call == part.index => index,
                    _ => {
                        let block = json!({"type": "tool_use", "id": part.id.clone().unwrap_or_default(),
                            "name": part.name.clone().unwrap_or_default(), "input": {}});
                        self.open(Some(part.index), &block, out)
                    }
                };
                if !part.arguments.is_empty() {
                    let delta = json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part.arguments}});
                    out.push(frame("content_block_delta", &delta));
                }
            }
            AnswerEvent::Error(error) => {
                self.failed = true;
                let body = json!({"type": "error", "error": {"type": "api_error",
                    "message": error["message"]}});
                out.push(frame("error", &body));
            }
            AnswerEvent::Usage(u) => self.usage = *u,
            AnswerEvent::End(finish) if !self.failed => {
                self.close(out);
                let delta = json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(*finish), "stop_sequence": null},
                    "usage": usage(self.usage)});
                out.push(frame("message_delta", &delta));
                out.push(frame("message_stop", &json!({"type": "message_stop"})));
            }
            AnswerEvent::End(_) => {}
        }
    }
}

/// The whole message an answer makes.
fn whole(id: &str, model: &str, answer: Folded) -> Value {
    let mut content = Vec::new();
    if !answer.text.is_empty() {
        content.push(json!({"type": "text", "text": answer.text}));
    }
    for (call_id, name, arguments) in answer.calls {
        let input: Value = serde_json::from_str(&arguments).unwrap_or(json!({}));
        content.push(json!({"type": "tool_use", "id": call_id, "name": name, "input": input}));
    }
    json!({"id": id, "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop_reason(answer.finish.unwrap_or(Finish::Stop)), "stop_sequence": null,
        "usage": usage(answer.usage)})
}

/// An error in Anthropic's shape, with the status and headers (Retry-After, …) it had.
fn anthropic_error(error: &ApiError) -> Response {
    let kind = match error.status().as_u16() {
        400 | 408 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    let mut response = error.clone().into_response();
    let body = json!({"type": "error", "error": {"type": kind, "message": error.message()}});
    *response.body_mut() = Body::from(body.to_string());
    response
}

/// Answers a message, whole or streamed.
#[utoipa::path(post, path = "/v1/messages", operation_id = "create_message", tag = "messages",
    request_body(content = doc::CreateMessage, content_type = "application/json",
        description = "Anthropic's Messages API request"),
    responses(
        (status = 200, description = "The message, or with `stream: true` its events (`message_start`, content blocks, `message_delta`, `message_stop`; `ping` while waiting) as an event stream",
            content((doc::MessageObject = "application/json"), (crate::sse::SseEvent = "text/event-stream"))),
        (status = 500, description = "The provider failed inside this server", body = doc::AnthropicError),
        (status = 502, description = "The upstream failed before answering", body = doc::AnthropicError),
        (status = 504, description = "The upstream did not answer in time", body = doc::AnthropicError),
        crate::api_schema::AnthropicBodyRefusals,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn messages(
    State(state): State<AppState>,
    body: Result<Admitted, ApiError>,
) -> Response {
    let answered = async {
        let Admitted(body, caller) = body?;
        answer(&state, &caller, &body).await
    };
    answered.await.unwrap_or_else(|error| anthropic_error(&error))
}

async fn answer(state: &AppState, caller: &Caller, body: &[u8]) -> Result<Response, ApiError> {
    let request = MessagesRequest::parse(body)?;
    if request.max_tokens.is_none_or(|n| n == 0) {
        return Err(invalid("max_tokens: Field required (a whole number of at least 1)"));
    }
    let stream = request.stream;
    let chat = request.into_chat(state.default_model().as_deref())?;
    let (id, model) = (format!("msg_{}", uuid::Uuid::new_v4().simple()), chat.model.clone());
    if stream {
        let events = unstored(from_provider(ask_lazily(state, caller, chat)?));
        let encoder = MessageEvents {
            id,
            model,
            open: None,
            blocks: 0,
            usage: Usage::default(),
            failed: false,
        };
        let ping = frame("ping", &json!({"type": "ping"}));
        let keep_alive = KeepAlive { frame: ping, ..KeepAlive::from(state.config().keep_alive) };
        return Ok(event_stream(None, encode(events, encoder), keep_alive, None, ()));
    }
    let answer = Folded::all(from_provider(ask(state, caller, chat).await?)).await;
    if let Some(error) = &answer.error {
        return Err(crate::answers::events::whole_answer_error(error));
    }
    Ok(axum::Json(whole(&id, &model, answer)).into_response())
}

/// Counts the tokens a message request's input takes.
#[utoipa::path(post, path = "/v1/messages/count_tokens", operation_id = "count_tokens", tag = "messages",
    request_body(content = doc::CountTokens, content_type = "application/json",
        description = "A Messages API request (`max_tokens` optional)"),
    responses(
        (status = 200, description = "The count", body = doc::TokenCount),
        (status = 501, description = "The model's provider cannot count tokens", body = doc::AnthropicError),
        (status = 502, description = "The provider failed to count", body = doc::AnthropicError),
        crate::api_schema::AnthropicBodyRefusals,
    ),
    security((), ("api_key" = [])))]
pub(crate) async fn count_tokens(
    State(state): State<AppState>,
    body: Result<Admitted, ApiError>,
) -> Response {
    let counted = async {
        let Admitted(body, caller) = body?;
        // A model the caller was not granted is refused here as on /v1/messages (403).
        let chat = MessagesRequest::parse(&body)?.into_chat(state.default_model().as_deref())?;
        let chat = caller.limit(chat)?;
        match state.config().models.count_tokens(&chat) {
            Some(count) => Ok(json!({"input_tokens": count.map_err(provider_error)?})),
            None if !state.config().models.serves(&chat.model) => {
                Err(provider_error(sluice_llm::ProviderError::UnknownModel(chat.model)))
            }
            None => Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "count_unsupported",
                format!("the provider of {} cannot count tokens", chat.model),
            )),
        }
    };
    match counted.await {
        Ok(count) => axum::Json(count).into_response(),
        Err(error) => anthropic_error(&error),
    }
}
