//! The OpenAI-compatible gateway: `POST /v1/chat/completions` (streamed or not) and
//! `GET /v1/models`, in OpenAI's wire format to the byte, so the official SDKs work unchanged.
//!
//! A streamed answer is relayed chunk by chunk as the provider produces it; comments keep the
//! connection alive while the model has not produced its first token; a client that goes
//! away drops the provider's stream, which cancels the upstream request at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_llm::{
    ChatRequest, Delta, DeltaStream, FinishReason, Message, ProviderError, Role, Usage,
};

use crate::error::ApiError;
use crate::limits::ClientAddr;
use crate::sse::event_stream;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
}

/// Per-key (or per-address) request budgets: a token bucket refilled continuously.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// Takes one request from `key`'s budget of `per_minute`, or says how long to wait.
    pub(crate) fn take(&self, key: &str, per_minute: u32) -> Result<(), Duration> {
        let capacity = f64::from(per_minute.max(1));
        let rate = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        let (tokens, last) = buckets.entry(key.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

/// Compares secrets in time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the client's API key (when keys are configured) and its rate limit.
pub(crate) fn admit(
    state: &AppState,
    headers: &HeaderMap,
    client: ClientAddr,
) -> Result<(), ApiError> {
    let config = state.config();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let key = if config.api_keys.is_empty() {
        client.0.ip().to_string()
    } else {
        match presented {
            Some(key)
                if config
                    .api_keys
                    .iter()
                    .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
            {
                key.to_owned()
            }
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "invalid_api_key",
                    "Incorrect API key provided.",
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing_api_key",
                    "You didn't provide an API key.",
                ));
            }
        }
    };
    if let Some(per_minute) = config.requests_per_minute
        && let Err(wait) = state.rate_limiter().take(&key, per_minute)
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            format!("rate limit of {per_minute} requests per minute reached"),
        )
        .with_retry_after(wait.as_secs().max(1)));
    }
    Ok(())
}

/// A provider's failure before anything was sent, as the HTTP error a client expects.
pub(crate) fn provider_error(error: ProviderError) -> ApiError {
    match error {
        ProviderError::UnknownModel(model) => ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .with_param("model"),
        ProviderError::InvalidRequest(message) => ApiError::bad_request("invalid_request", message),
        ProviderError::Busy { message, retry_after } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
                .with_retry_after(retry_after.map_or(1, |d| d.as_secs().max(1)))
        }
        ProviderError::Timeout(after) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("the upstream did not answer within {after:?}"),
        ),
        ProviderError::Internal(detail) => ApiError::internal(detail),
        other => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", other.to_string()),
    }
}

/// `stop` may be a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `content` may be a string, a list of parts, or null.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: Role,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Vec<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The body of `POST /v1/chat/completions` (and `POST /api/generations`).
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    pub(crate) stream: bool,
    stream_options: Option<StreamOptions>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    stop: Option<Stop>,
    seed: Option<u64>,
    #[serde(default)]
    tools: Vec<Value>,
    tool_choice: Option<Value>,
    n: Option<u32>,
}

impl CompletionRequest {
    /// Parses and checks a request body, naming the offending parameter on failure.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let request: CompletionRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("invalid_json", format!("invalid request body: {e}"))
        })?;
        if request.messages.is_empty() {
            return Err(ApiError::bad_request("invalid_messages", "messages must not be empty")
                .with_param("messages"));
        }
        if request.n.is_some_and(|n| n != 1) {
            return Err(
                ApiError::bad_request("unsupported_n", "only n = 1 is supported").with_param("n")
            );
        }
        if request.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(ApiError::bad_request(
                "invalid_temperature",
                "temperature must be between 0 and 2",
            )
            .with_param("temperature"));
        }
        if request.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
            return Err(ApiError::bad_request("invalid_top_p", "top_p must be between 0 and 1")
                .with_param("top_p"));
        }
        Ok(request)
    }

    fn include_usage(&self) -> bool {
        self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }

    /// The provider-facing request; `default_model` when the client named none.
    pub(crate) fn into_chat(self, default_model: Option<&str>) -> Result<ChatRequest, ApiError> {
        let model = self.model.or_else(|| default_model.map(str::to_owned)).ok_or_else(|| {
            ApiError::bad_request("missing_model", "model is required").with_param("model")
        })?;
        let messages = self
            .messages
            .into_iter()
            .map(|m| Message {
                role: m.role,
                content: match m.content {
                    None => String::new(),
                    Some(Content::Text(text)) => text,
                    Some(Content::Parts(parts)) => {
                        parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("")
                    }
                },
                tool_calls: m.tool_calls,
                tool_call_id: m.tool_call_id,
            })
            .collect();
        Ok(ChatRequest {
            model,
            messages,
            temperature: self.temperature,
            top_p: self.top_p,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(list)) => list,
            },
            seed: self.seed,
            tools: self.tools,
            tool_choice: self.tool_choice,
        })
    }
}

/// The checks every chat request goes through: the client's key and rate limit, the body's
/// size, then its parsing.
pub(crate) async fn admitted_request(
    state: &AppState,
    headers: &HeaderMap,
    client: ClientAddr,
    body: Body,
) -> Result<CompletionRequest, ApiError> {
    admit(state, headers, client)?;
    CompletionRequest::parse(&read_body(state, body).await?)
}

/// Reads a JSON body up to the configured size.
async fn read_body(state: &AppState, body: Body) -> Result<Bytes, ApiError> {
    let limit = state.config().max_body_bytes;
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {limit} bytes"),
        )
    })
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Builds the chunks of one streamed completion; every chunk shares id, created and model.
pub(crate) struct Chunker {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Chunker {
    pub(crate) fn new(id: String, model: String, include_usage: bool) -> Self {
        Chunker { id, created: unix_now(), model, include_usage }
    }

    fn chunk(&self, delta: &Value, finish: Option<FinishReason>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sluice",
            "choices": [{
                "index": 0,
                "delta": delta,
                "logprobs": null,
                "finish_reason": finish.map(FinishReason::as_str),
            }],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    /// The first chunk: the assistant's role and empty content.
    pub(crate) fn role(&self) -> Value {
        self.chunk(&json!({"role": "assistant", "content": ""}), None)
    }

    /// A chunk of text.
    pub(crate) fn text(&self, text: &str) -> Value {
        self.chunk(&json!({"content": text}), None)
    }

    fn tool_call(
        &self,
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        arguments: &str,
    ) -> Value {
        let mut call = json!({"index": index, "function": {"arguments": arguments}});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        self.chunk(&json!({"tool_calls": [call]}), None)
    }

    /// The last choice chunk: an empty delta and the finish reason.
    pub(crate) fn finish(&self, reason: FinishReason) -> Value {
        self.chunk(&json!({}), Some(reason))
    }

    fn usage(&self, usage: Usage) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sluice",
            "choices": [],
            "usage": usage,
        })
    }
}

/// One `data:` event.
pub(crate) fn data_frame(data: &str) -> Bytes {
    let mut frame = BytesMut::new();
    sluice_sse::Event::new(data).encode(&mut frame);
    frame.freeze()
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
    request_body(content_type = "application/json", description = "OpenAI's chat completion request"),
    responses(
        (status = 200, description = "The completion, or its chunks as an event stream"),
        (status = 400, description = "A malformed request (the error names the param)"),
        (status = 401, description = "A missing or wrong API key"),
        (status = 404, description = "No provider serves the model"),
        (status = 429, description = "Rate limited or the model is busy (Retry-After)"),
        (status = 502, description = "The upstream failed before answering"),
    ))]
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
    let mut message = json!({"role": "assistant", "content": text, "refusal": null});
    if !calls.is_empty() {
        message["tool_calls"] = json!(calls);
    }
    let body = json!({
        "id": chunker.id,
        "object": "chat.completion",
        "created": chunker.created,
        "model": chunker.model,
        "system_fingerprint": "fp_sluice",
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish.as_str()}],
        "usage": usage,
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response())
}

/// Lists the models the router serves.
#[utoipa::path(get, path = "/v1/models", tag = "gateway",
    responses((status = 200, description = "The models, OpenAI's list format")))]
pub(crate) async fn models(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<ClientAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    admit(&state, &headers, client)?;
    let data: Vec<Value> = state
        .config()
        .models
        .models()
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(axum::Json(json!({"object": "list", "data": data})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refuses_past_its_budget_and_says_how_long_to_wait() {
        let limiter = RateLimiter::default();
        assert!(limiter.take("k", 2).is_ok());
        assert!(limiter.take("k", 2).is_ok());
        let wait = limiter.take("k", 2).unwrap_err();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        assert!(limiter.take("other", 2).is_ok(), "budgets are per key");
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(constant_time_eq(b"sk-abc", b"sk-abc"));
        assert!(!constant_time_eq(b"sk-abc", b"sk-abd"));
        assert!(!constant_time_eq(b"sk-abc", b"sk-ab"));
    }

    #[test]
    fn content_parts_and_stop_forms_are_accepted() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"stop":"END"}"#;
        let chat = CompletionRequest::parse(body).unwrap().into_chat(None).unwrap();
        assert_eq!(chat.messages[0].content, "ab");
        assert_eq!(chat.stop, ["END"]);
        let bad = br#"{"model":"m","messages":[],"stream":true}"#;
        assert_eq!(CompletionRequest::parse(bad).unwrap_err().status(), StatusCode::BAD_REQUEST);
    }
}
