//! [`OpenAi`]: any OpenAI-compatible chat completions upstream (OpenAI, Ollama's `/v1`, vLLM,
//! llama.cpp server, OpenRouter, another Sluice).
//!
//! The upstream's SSE is read with Sluice's own decoder, so a JSON chunk or a UTF-8 character
//! split across network reads is reassembled before it is parsed. Usage is always requested
//! (`stream_options.include_usage`), and the deltas end with `Usage` then `Finish` whatever
//! order the upstream sent them in. Dropping the stream drops the HTTP response, which closes
//! the connection: the upstream sees the client leave and stops generating.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sluice_sse::MessageEvent;

use crate::types::{ChatRequest, Delta, DeltaStream, FinishReason, Provider, ProviderError, Usage};
use crate::upstream::{Client, Endpoint, Out, Translate, translate};

/// Where an OpenAI-compatible upstream is and how to reach it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// The provider's name.
    pub name: String,
    /// The API base, e.g. `https://api.openai.com/v1` (`/chat/completions` is appended).
    pub base_url: String,
    /// The bearer key, if the upstream needs one.
    pub api_key: Option<String>,
    /// The longest wait for the response to start.
    pub timeout: Duration,
    /// The longest wait for a connection to the upstream.
    pub connect_timeout: Duration,
}

/// An OpenAI-compatible upstream.
#[derive(Debug, Clone)]
pub struct OpenAi {
    config: OpenAiConfig,
    endpoint: Endpoint,
    client: Client,
}

impl OpenAi {
    /// A provider for `config`.
    pub fn new(config: OpenAiConfig) -> Self {
        let client = Client::new(config.connect_timeout);
        let endpoint = Endpoint::new(&config.base_url, "chat/completions");
        OpenAi { config, endpoint, client }
    }
}

impl Provider for OpenAi {
    fn name(&self) -> &str {
        &self.config.name
    }

    fn system(&self) -> &'static str {
        "openai"
    }

    fn stream(&self, request: ChatRequest) -> BoxFuture<'_, Result<DeltaStream, ProviderError>> {
        async move {
            let body = serde_json::to_vec(&Streamed {
                request: &request,
                stream: true,
                stream_options: IncludeUsage { include_usage: true },
            })
            .map_err(|e| ProviderError::InvalidRequest(e.to_string()))?;
            let bearer = self.config.api_key.as_ref().map(|key| format!("Bearer {key}"));
            let headers: Vec<(&str, &str)> =
                bearer.iter().map(|bearer| ("authorization", bearer.as_str())).collect();
            let events = self
                .client
                .open_event_stream(&self.endpoint, &headers, body, self.config.timeout)
                .await?;
            Ok(translate(events, Chunks::default()))
        }
        .boxed()
    }
}

/// The request as the upstream is asked it: streamed, with usage at the end. Written straight
/// from the request rather than through a `serde_json::Value` of it.
#[derive(Serialize)]
struct Streamed<'a> {
    #[serde(flatten)]
    request: &'a ChatRequest,
    stream: bool,
    stream_options: IncludeUsage,
}

/// `stream_options`.
#[derive(Serialize)]
struct IncludeUsage {
    include_usage: bool,
}

/// What has been seen of an OpenAI-compatible upstream's chunks.
#[derive(Default)]
struct Chunks {
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    tools: ToolIndexes,
}

/// Gives each tool call its own index even when an upstream reuses one index for parallel
/// calls: a fragment carrying a new call id under an index already taken by another call
/// starts a new index.
#[derive(Default)]
struct ToolIndexes {
    /// Upstream index → (call id, our index).
    bound: HashMap<u64, (Option<String>, u32)>,
    next: u32,
}

impl ToolIndexes {
    fn index(&mut self, upstream: u64, id: Option<&str>) -> u32 {
        match (self.bound.get(&upstream), id) {
            (Some((Some(bound), ours)), Some(id)) if bound == id => *ours,
            (Some((_, ours)), None) => *ours,
            _ => {
                let ours = self.next;
                self.next += 1;
                self.bound.insert(upstream, (id.map(str::to_owned), ours));
                ours
            }
        }
    }
}

impl Translate for Chunks {
    fn end(&mut self, out: &mut Out) {
        match self.finish {
            Some(finish) => out.finish(self.usage, finish),
            None => out.fail(ProviderError::Network(
                "the upstream ended the stream before the answer finished".to_owned(),
            )),
        }
    }

    fn event(&mut self, event: &MessageEvent, out: &mut Out) {
        let data = event.data.as_str();
        if data.trim() == "[DONE]" {
            return self.end(out);
        }
        let chunk: Chunk<'_> = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(e) => {
                return out.fail(ProviderError::Upstream {
                    status: 502,
                    message: format!("unparseable chunk from the upstream: {e}"),
                });
            }
        };
        if let Some(error) = chunk.error {
            let message = error["message"].as_str().unwrap_or("upstream error").to_owned();
            return out.fail(ProviderError::Upstream { status: 500, message });
        }
        if let Some(usage) = chunk.usage.filter(|u| !u.is_null()) {
            let count = |k: &str| usage[k].as_u64().unwrap_or(0) as u32;
            self.usage = Some(Usage::new(count("prompt_tokens"), count("completion_tokens")));
        }
        let Some(choice) = chunk.choices.into_iter().flatten().next() else { return };
        let delta = choice.delta.unwrap_or_default();
        if let Some(text) = delta.content.and_then(Lenient::text).filter(|t| !t.is_empty()) {
            out.push(Delta::Text(text.into_owned()));
        }
        for call in delta.tool_calls.as_ref().and_then(Value::as_array).into_iter().flatten() {
            let upstream = call["index"].as_u64().unwrap_or(0);
            let id = call["id"].as_str();
            let index = self.tools.index(upstream, id);
            out.push(Delta::ToolCall {
                index,
                id: id.map(str::to_owned),
                name: call["function"]["name"].as_str().map(str::to_owned),
                arguments: call["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
            });
        }
        self.finish = match choice.finish_reason.and_then(Lenient::text).as_deref() {
            Some("stop") => Some(FinishReason::Stop),
            Some("length") => Some(FinishReason::Length),
            Some("tool_calls" | "function_call") => Some(FinishReason::ToolCalls),
            Some("content_filter") => Some(FinishReason::ContentFilter),
            Some(_) => Some(FinishReason::Stop),
            None => self.finish,
        };
    }
}

/// What Sluice reads of an upstream's chunk, borrowed from its text where it can be. Parsed
/// into a `serde_json::Value` instead (a map allocated per object, every field kept), a
/// chunk cost a quarter of the gateway's CPU. Fields it does not name are skipped without
/// being kept; the rare ones (an error, usage, tool calls) stay loose `Value`s, read as
/// leniently as before.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
}

/// A choice of a chunk.
#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    delta: Option<ChunkDelta<'a>>,
    #[serde(default, borrow)]
    finish_reason: Option<Lenient<'a>>,
}

/// A choice's delta.
#[derive(Deserialize, Default)]
struct ChunkDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Lenient<'a>>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

/// A string, or anything else (a number, an object), which is passed over, as reading it from
/// a `Value` with `as_str` did, rather than failing the chunk.
#[derive(Deserialize)]
#[serde(untagged)]
enum Lenient<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Other(IgnoredAny),
}

impl<'a> Lenient<'a> {
    fn text(self) -> Option<Cow<'a, str>> {
        match self {
            Lenient::Text(text) => Some(text),
            Lenient::Other(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_calls_sharing_an_index_get_their_own() {
        let mut tools = ToolIndexes::default();
        assert_eq!(tools.index(0, Some("call_a")), 0);
        assert_eq!(tools.index(0, None), 0, "a continuation stays with its call");
        assert_eq!(tools.index(0, Some("call_b")), 1, "a new id under a taken index");
        assert_eq!(tools.index(0, None), 1);
        assert_eq!(tools.index(1, Some("call_c")), 2);
        assert_eq!(tools.index(1, Some("call_c")), 2, "the same id again is the same call");
    }
}
