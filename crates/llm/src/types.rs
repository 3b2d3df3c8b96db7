//! The request, the deltas, the errors, and the [`Provider`] trait.

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model (OpenAI's newer `developer` role is read as this).
    #[serde(alias = "developer")]
    System,
    /// The person.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said (text; for OpenAI's array form, the text parts joined).
    #[serde(default)]
    pub content: String,
    /// The tool calls an assistant message made, as OpenAI's JSON objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<serde_json::Value>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message with text content.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None }
    }
}

/// What to generate: the subset of OpenAI's chat completion request every provider honours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name, as configured (routing picks the provider by it).
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature; 0 means greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// The most tokens to generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Strings that end the answer when produced (not included in it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Seed for reproducible sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Tools the model may call, as OpenAI's JSON objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<serde_json::Value>,
    /// OpenAI's `tool_choice`, passed through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<serde_json::Value>,
}

/// Token counts, as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// The sum.
    pub total_tokens: u32,
}

impl Usage {
    /// Usage with the total filled in.
    pub fn new(prompt_tokens: u32, completion_tokens: u32) -> Self {
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, or a stop string was produced.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// The upstream filtered the content.
    ContentFilter,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// More text of the answer (whole UTF-8 characters only).
    Text(String),
    /// A fragment of a tool call; fragments with the same `index` belong to one call.
    ToolCall {
        /// Which call (parallel calls have distinct indexes).
        index: u32,
        /// The call's id, on its first fragment.
        id: Option<String>,
        /// The function's name, on its first fragment.
        name: Option<String>,
        /// More of the JSON arguments.
        arguments: String,
    },
    /// Token usage (once, near the end).
    Usage(Usage),
    /// The end of the answer.
    Finish(FinishReason),
}

/// Why a provider could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No provider serves this model.
    #[error("no provider serves model {0:?}")]
    UnknownModel(String),
    /// The request is malformed for this provider.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Too many requests are waiting; retry later.
    #[error("busy: {message}")]
    Busy {
        /// What is full.
        message: String,
        /// When to retry, if known.
        retry_after: Option<Duration>,
    },
    /// The upstream refused the credentials.
    #[error("the upstream refused the credentials: {0}")]
    Unauthorized(String),
    /// The upstream answered with an error.
    #[error("upstream error {status}: {message}")]
    Upstream {
        /// The upstream's HTTP status.
        status: u16,
        /// The upstream's message.
        message: String,
    },
    /// The upstream could not be reached, or the connection broke.
    #[error("upstream unreachable: {0}")]
    Network(String),
    /// The upstream took too long.
    #[error("upstream timed out after {0:?}")]
    Timeout(Duration),
    /// The provider failed internally.
    #[error("provider failed: {0}")]
    Internal(String),
}

impl ProviderError {
    /// Whether another attempt (or another provider) might succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Busy { .. }
            | ProviderError::Network(_)
            | ProviderError::Timeout(_)
            | ProviderError::Internal(_) => true,
            ProviderError::Upstream { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// The deltas of one answer. Dropping it cancels the generation.
pub type DeltaStream = BoxStream<'static, Result<Delta, ProviderError>>;

/// A source of streamed chat answers.
pub trait Provider: Send + Sync + fmt::Debug + 'static {
    /// The provider's configured name (what `/v1/models` lists as owner).
    fn name(&self) -> &str;

    /// The kind of model service it is, as OpenTelemetry's GenAI conventions name it in
    /// `gen_ai.provider.name` (`openai`, `anthropic`, ...): what a trace groups answers by.
    fn system(&self) -> &'static str;

    /// Starts an answer. Resolves once the upstream accepted the request (an error before
    /// that is an `Err` here, so it can still become an HTTP error status or a fallback).
    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, ProviderError>>;

    /// How many tokens the prompt of `request` takes, for a provider that can tell without
    /// generating (the local model, whose tokenizer is here); `None` for one that cannot.
    fn count_tokens(&self, _request: &ChatRequest) -> Option<Result<u32, ProviderError>> {
        None
    }
}
