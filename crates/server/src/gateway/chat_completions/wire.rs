//! OpenAI's chat completions wire format, as the gateway speaks it: the request body (parsed
//! and checked, naming the offending parameter like OpenAI does) and the chunk objects of a
//! streamed answer. Also the request body of `/api/generations`; no handler lives here.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sluice_llm::{ChatRequest, Message, Role, Usage};
use utoipa::ToSchema;

use crate::answers::events::unix_now;
use crate::error::ApiError;

/// The most stop sequences a request may give (OpenAI's limit).
const MAX_STOP_SEQUENCES: usize = 4;
/// The longest stop sequence, in characters.
const MAX_STOP_LENGTH: usize = 256;
/// The most messages in one request.
const MAX_MESSAGES: usize = 2048;

/// `stop` may be a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl utoipa::PartialSchema for Stop {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let sequence = || {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(MAX_STOP_LENGTH))
        };
        let list = ArrayBuilder::new().items(sequence()).max_items(Some(MAX_STOP_SEQUENCES));
        OneOfBuilder::new()
            .item(sequence())
            .item(list)
            .description(Some("Where to stop: one sequence or a list of them"))
            .into()
    }
}

impl ToSchema for Stop {}

/// `content` may be a string, a list of parts, or null.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a message's content; only text parts are read.
#[derive(Debug, Deserialize, ToSchema)]
struct ContentPart {
    /// `text`, `image_url`, …
    #[serde(rename = "type")]
    r#type: String,
    /// The text of a `text` part.
    #[serde(default)]
    text: Option<String>,
}

/// Who said a message (the document's view of [`Role`]; `developer` is read as `system`).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // a schema for the document only
enum RoleName {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

/// A JSON object.
type Object = serde_json::Map<String, Value>;

/// One message of the conversation.
#[derive(Debug, Deserialize, ToSchema)]
struct InMessage {
    #[schema(value_type = RoleName)]
    role: Role,
    #[serde(default)]
    #[schema(nullable)]
    content: Option<Content>,
    /// The tool calls an assistant message made (OpenAI's objects).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    tool_calls: Vec<Object>,
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// `tool_choice`: `none`, `auto`, `required`, or a named function.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

/// A tool choice that names its function: `{"type": "function", "function": {"name": …}}`.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
struct NamedToolChoice {
    #[serde(rename = "type")]
    r#type: String,
    #[schema(value_type = Object)]
    function: Object,
}

/// Streaming options.
#[derive(Debug, Deserialize, ToSchema)]
struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    include_usage: bool,
}

/// The body of `POST /v1/chat/completions` (and `POST /api/generations`): OpenAI's chat
/// completion request. Parameters not listed are ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CompletionRequest {
    /// The model; the first configured one when absent.
    #[schema(example = "scripted")]
    model: Option<String>,
    /// The conversation, oldest first.
    #[schema(min_items = 1)]
    messages: Vec<InMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub(crate) stream: bool,
    stream_options: Option<StreamOptions>,
    /// Read as a 64-bit float, so that a value just past a bound is not rounded into it.
    #[schema(minimum = 0.0, maximum = 2.0)]
    temperature: Option<f64>,
    #[schema(minimum = 0.0, maximum = 1.0)]
    top_p: Option<f64>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1)]
    max_tokens: Option<i32>,
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1)]
    max_completion_tokens: Option<i32>,
    stop: Option<Stop>,
    #[serde(default, deserialize_with = "whole_number")]
    seed: Option<i64>,
    /// The tools the model may call (OpenAI's objects).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    tools: Vec<Object>,
    tool_choice: Option<ToolChoice>,
    /// Only 1 is supported.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 1)]
    n: Option<i32>,
}

/// An optional integer as JSON Schema means one: any number with no fractional part (`16`,
/// `16.0`), in the target type's range.
pub(crate) fn whole_number<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let whole = match (number.as_i64(), number.as_u64(), number.as_f64()) {
        (Some(n), _, _) => Some(i128::from(n)),
        (_, Some(n), _) => Some(i128::from(n)),
        // A float is a whole number only while it is exact (below 2^53).
        (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => Some(f as i128),
        _ => None,
    };
    whole
        .and_then(|n| T::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| serde::de::Error::custom(format!("{number} is not a whole number in range")))
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
        if request.messages.len() > MAX_MESSAGES {
            return Err(ApiError::bad_request(
                "too_many_messages",
                format!("at most {MAX_MESSAGES} messages"),
            )
            .with_param("messages"));
        }
        for (value, param) in [
            (request.max_tokens, "max_tokens"),
            (request.max_completion_tokens, "max_completion_tokens"),
        ] {
            if value.is_some_and(|n| n < 1) {
                return Err(ApiError::bad_request(
                    "invalid_max_tokens",
                    format!("{param} must be at least 1"),
                )
                .with_param(param));
            }
        }
        let stops = match &request.stop {
            None => &[][..],
            Some(Stop::One(one)) => std::slice::from_ref(one),
            Some(Stop::Many(many)) => many.as_slice(),
        };
        let too_long = |s: &String| s.is_empty() || s.chars().count() > MAX_STOP_LENGTH;
        if stops.len() > MAX_STOP_SEQUENCES || stops.iter().any(too_long) {
            return Err(ApiError::bad_request(
                "invalid_stop",
                format!(
                    "stop takes at most {MAX_STOP_SEQUENCES} non-empty sequences of at most \
                     {MAX_STOP_LENGTH} characters"
                ),
            )
            .with_param("stop"));
        }
        Ok(request)
    }

    pub(crate) fn include_usage(&self) -> bool {
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
                    Some(Content::Parts(parts)) => parts
                        .iter()
                        .filter(|p| p.r#type == "text")
                        .filter_map(|p| p.text.as_deref())
                        .collect::<Vec<_>>()
                        .join(""),
                },
                tool_calls: m.tool_calls.into_iter().map(Value::Object).collect(),
                tool_call_id: m.tool_call_id,
            })
            .collect();
        Ok(ChatRequest {
            model,
            messages,
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            // Checked positive by `parse`.
            max_tokens: self.max_completion_tokens.or(self.max_tokens).map(|n| n.unsigned_abs()),
            stop: match self.stop {
                None => Vec::new(),
                Some(Stop::One(s)) => vec![s],
                Some(Stop::Many(list)) => list,
            },
            // Any 64 bits make a seed: a negative one is read as its two's complement.
            seed: self.seed.map(|seed| seed as u64),
            tools: self.tools.into_iter().map(Value::Object).collect(),
            tool_choice: self.tool_choice.map(|choice| match choice {
                ToolChoice::Mode(mode) => Value::String(mode),
                ToolChoice::Named(named) => json!(named),
            }),
        })
    }
}

/// Builds the chunks of one streamed completion; every chunk shares id, created and model.
pub(crate) struct Chunker {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) include_usage: bool,
}

impl Chunker {
    pub(crate) fn new(id: String, model: String, include_usage: bool) -> Self {
        Chunker { id, created: unix_now(), model, include_usage }
    }

    /// A chunk of these choices; with `include_usage`, `usage` (`null` until the last chunk).
    fn chunk_of<'a>(&'a self, choices: Vec<ChunkChoice<'a>>, usage: Option<Usage>) -> Chunk<'a> {
        Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            system_fingerprint: "fp_sluice",
            choices,
            usage: self.include_usage.then(|| usage.map(UsageBody::from)),
        }
    }

    fn chunk<'a>(&'a self, delta: ChunkDelta<'a>, finish: Option<&'a str>) -> Chunk<'a> {
        let choice = ChunkChoice { index: 0, delta, logprobs: None, finish_reason: finish };
        self.chunk_of(vec![choice], None)
    }

    /// The first chunk: the assistant's role and empty content.
    pub(crate) fn role(&self) -> Chunk<'_> {
        let delta =
            ChunkDelta { role: Some("assistant"), content: Some(""), ..ChunkDelta::default() };
        self.chunk(delta, None)
    }

    /// A chunk of text.
    pub(crate) fn text<'a>(&'a self, text: &'a str) -> Chunk<'a> {
        self.chunk(ChunkDelta { content: Some(text), ..ChunkDelta::default() }, None)
    }

    pub(crate) fn tool_call<'a>(
        &'a self,
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        arguments: &str,
    ) -> Chunk<'a> {
        let mut call = json!({"index": index, "function": {"arguments": arguments}});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        self.chunk(ChunkDelta { tool_calls: Some([call]), ..ChunkDelta::default() }, None)
    }

    /// The last choice chunk: an empty delta and the finish reason.
    pub(crate) fn finish<'a>(&'a self, reason: &'a str) -> Chunk<'a> {
        self.chunk(ChunkDelta::default(), Some(reason))
    }

    /// The chunk after the last choice, with the answer's usage (sent with `include_usage`).
    pub(crate) fn usage(&self, usage: Usage) -> Chunk<'_> {
        self.chunk_of(Vec::new(), Some(usage))
    }
}

/// A `chat.completion.chunk`, written straight from its fields: built as a
/// `serde_json::Value` (a map per object) and then written, a chunk cost several times as
/// much, once per token of every answer.
#[derive(Serialize)]
pub(crate) struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    pub(crate) choices: Vec<ChunkChoice<'a>>,
    /// With `include_usage`: `null` on every chunk but the last, which carries it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageBody>>,
}

/// A chunk's one choice.
#[derive(Serialize)]
pub(crate) struct ChunkChoice<'a> {
    index: u32,
    pub(crate) delta: ChunkDelta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'a str>,
}

/// What a chunk adds.
#[derive(Serialize, Default)]
pub(crate) struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[Value; 1]>,
}

impl Chunk<'_> {
    /// The chunk as one `data:` event.
    pub(crate) fn frame(&self) -> Bytes {
        data_frame(&serde_json::to_string(self).expect("a chunk always serializes"))
    }
}

/// One `data:` event.
pub(crate) fn data_frame(data: &str) -> Bytes {
    let mut frame = BytesMut::new();
    sluice_sse::Event::new(data).encode(&mut frame);
    frame.freeze()
}

/// Token counts, as OpenAI reports them.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct UsageBody {
    prompt_tokens: u32,
    completion_tokens: u32,
    total_tokens: u32,
}

impl From<Usage> for UsageBody {
    fn from(usage: Usage) -> Self {
        let Usage { prompt_tokens, completion_tokens, total_tokens } = usage;
        UsageBody { prompt_tokens, completion_tokens, total_tokens }
    }
}

/// A whole (not streamed) completion: OpenAI's `chat.completion` object.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Completion {
    id: String,
    /// Always `chat.completion`.
    object: &'static str,
    created: u64,
    model: String,
    system_fingerprint: &'static str,
    choices: Vec<Choice>,
    usage: UsageBody,
}

/// The one choice of a completion.
#[derive(Debug, Serialize, ToSchema)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Value>,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    finish_reason: String,
}

/// The answer.
#[derive(Debug, Serialize, ToSchema)]
struct AssistantMessage {
    /// Always `assistant`.
    role: &'static str,
    content: String,
    /// Always null.
    refusal: Option<String>,
    /// The calls, joined by index (absent when there are none).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    tool_calls: Vec<Value>,
}

impl Chunker {
    /// The whole completion of an answer with `text`, `tool_calls`, `finish` and `usage`.
    pub(crate) fn completion(
        &self,
        text: String,
        tool_calls: Vec<Value>,
        finish: &str,
        usage: Usage,
    ) -> Completion {
        let message =
            AssistantMessage { role: "assistant", content: text, refusal: None, tool_calls };
        Completion {
            id: self.id.clone(),
            object: "chat.completion",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: "fp_sluice",
            choices: vec![Choice {
                index: 0,
                message,
                logprobs: None,
                finish_reason: finish.to_owned(),
            }],
            usage: usage.into(),
        }
    }
}

/// The models a gateway serves: OpenAI's list object.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelList {
    /// Always `list`.
    object: &'static str,
    data: Vec<Model>,
}

/// One model.
#[derive(Debug, Serialize, ToSchema)]
struct Model {
    id: String,
    /// Always `model`.
    object: &'static str,
    created: u64,
    /// The provider that serves it first.
    owned_by: String,
}

impl ModelList {
    /// The list of `(model, owner)` pairs.
    pub(crate) fn new(models: Vec<(String, String)>) -> Self {
        let data = models
            .into_iter()
            .map(|(id, owned_by)| Model { id, object: "model", created: 0, owned_by })
            .collect();
        ModelList { object: "list", data }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn content_parts_and_stop_forms_are_accepted() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"stop":"END"}"#;
        let chat = CompletionRequest::parse(body).unwrap().into_chat(None).unwrap();
        assert_eq!(chat.messages[0].content, "ab");
        assert_eq!(chat.stop, ["END"]);
    }

    #[test]
    fn out_of_range_parameters_are_refused_and_named() {
        let refused = |body: &str| {
            let error = CompletionRequest::parse(body.as_bytes()).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body}");
            error.message().to_owned()
        };
        let user = r#""messages":[{"role":"user","content":"hi"}]"#;
        refused(r#"{"model":"m","messages":[],"stream":true}"#);
        refused(&format!(r#"{{{user},"temperature":-1}}"#));
        refused(&format!(r#"{{{user},"temperature":"NaN"}}"#));
        refused(&format!(r#"{{{user},"temperature":1e40}}"#));
        refused(&format!(r#"{{{user},"top_p":1.5}}"#));
        refused(&format!(r#"{{{user},"max_tokens":0}}"#));
        refused(&format!(r#"{{{user},"max_tokens":-5}}"#));
        refused(&format!(r#"{{{user},"max_tokens":99999999999}}"#));
        refused(&format!(r#"{{{user},"n":2}}"#));
        refused(&format!(r#"{{{user},"stop":["a","b","c","d","e"]}}"#));
        refused(&format!(r#"{{{user},"stop":[""]}}"#));
        assert!(refused(r#"{"messages":[{"role":"wizard","content":"x"}]}"#).contains("wizard"));
        assert!(
            CompletionRequest::parse(format!(r#"{{{user},"max_tokens":16}}"#).as_bytes()).is_ok()
        );
    }
}
