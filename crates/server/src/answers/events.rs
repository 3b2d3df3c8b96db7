//! The one event model every wire protocol encodes: what an answer says, in order.
//!
//! An answer is `Start`, then any number of `Text` and `ToolCall`, then at most one `Error`,
//! then `Usage`, then `End`. Both ways an answer reaches a protocol give that order: straight
//! from a provider ([`from_provider`], for the streams that live and die with their
//! connection) and from the hub, where the pump stored it ([`AnswerEvent::from_update`], for
//! resumable answers). A protocol is an [`Encoder`] of these events, so Chat Completions,
//! Responses, Messages, the UI message stream and Sluice's own answers API all say the same
//! answer.

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde_json::{Value, json};
use sluice_llm::{Delta, DeltaStream, FinishReason, ProviderError, Usage};

use super::read::Piece;

/// Seconds since the Unix epoch, now (the `created` of OpenAI's objects).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Why an answer ended, as its `end` event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// The model ended its turn.
    Stop,
    /// The token limit was reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// The upstream filtered the content.
    ContentFilter,
    /// A reader asked to stop, or every reader left.
    Cancelled,
    /// The upstream or the store failed.
    Error,
}

impl Finish {
    /// The `finish_reason` stored in `end` (OpenAI's names, plus `cancelled` and `error`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
            Finish::ContentFilter => "content_filter",
            Finish::Cancelled => "cancelled",
            Finish::Error => "error",
        }
    }

    fn parse(text: &str) -> Finish {
        match text {
            "stop" => Finish::Stop,
            "length" => Finish::Length,
            "tool_calls" => Finish::ToolCalls,
            "content_filter" => Finish::ContentFilter,
            "cancelled" => Finish::Cancelled,
            _ => Finish::Error,
        }
    }
}

impl From<FinishReason> for Finish {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => Finish::Stop,
            FinishReason::Length => Finish::Length,
            FinishReason::ToolCalls => Finish::ToolCalls,
            FinishReason::ContentFilter => Finish::ContentFilter,
        }
    }
}

/// A fragment of a tool call; fragments with the same `index` make one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolCallPart {
    pub(crate) index: u32,
    /// The call's id, on its first fragment.
    pub(crate) id: Option<String>,
    /// The function's name, on its first fragment.
    pub(crate) name: Option<String>,
    /// More of the JSON arguments.
    pub(crate) arguments: String,
}

/// One event of an answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AnswerEvent {
    /// The answer began: what its protocol needs to say about it before anything else (the
    /// Responses API's response object, the UI message stream's message id), as stored.
    Start(Value),
    /// More text.
    Text(String),
    /// A fragment of a tool call.
    ToolCall(ToolCallPart),
    /// The answer failed: OpenAI's error object `{"message", "type", "code"}`.
    Error(Value),
    /// The tokens it took (reported even when it was stopped: they were paid for).
    Usage(Usage),
    /// The end.
    End(Finish),
}

impl AnswerEvent {
    /// The event type it is stored under in the hub.
    pub(crate) fn event_type(&self) -> &'static str {
        match self {
            AnswerEvent::Start(_) => "start",
            AnswerEvent::Text(_) => "delta",
            AnswerEvent::ToolCall(_) => "tool_call",
            AnswerEvent::Error(_) => "error",
            AnswerEvent::Usage(_) => "usage",
            AnswerEvent::End(_) => "end",
        }
    }

    /// The JSON it is stored as (the answers API's documented payloads).
    pub(crate) fn data(&self) -> Value {
        match self {
            AnswerEvent::Start(meta) => meta.clone(),
            AnswerEvent::Text(text) => json!({"text": text}),
            AnswerEvent::ToolCall(call) => json!({"index": call.index, "id": call.id,
                "name": call.name, "arguments": call.arguments}),
            AnswerEvent::Error(error) => error.clone(),
            AnswerEvent::Usage(usage) => json!(usage),
            AnswerEvent::End(finish) => json!({"finish_reason": finish.as_str()}),
        }
    }

    /// The event a stored update holds, or `None` for an update that is no answer event.
    pub(crate) fn from_update(event_type: Option<&str>, data: &str) -> Option<AnswerEvent> {
        let data: Value = serde_json::from_str(data).ok()?;
        let text = |key: &str| data[key].as_str().map(str::to_owned);
        Some(match event_type? {
            "start" => AnswerEvent::Start(data),
            "delta" => AnswerEvent::Text(text("text")?),
            "tool_call" => AnswerEvent::ToolCall(ToolCallPart {
                index: u32::try_from(data["index"].as_u64()?).ok()?,
                id: text("id"),
                name: text("name"),
                arguments: text("arguments").unwrap_or_default(),
            }),
            "error" => AnswerEvent::Error(data),
            "usage" => AnswerEvent::Usage(serde_json::from_value(data).ok()?),
            "end" => AnswerEvent::End(Finish::parse(data["finish_reason"].as_str()?)),
            _ => return None,
        })
    }
}

/// OpenAI's error object for a provider's failure mid-answer; a timeout has the code
/// `upstream_timeout`, so that an answer given whole can say 504 rather than 502.
pub(crate) fn error_object(error: &ProviderError) -> Value {
    let code = matches!(error, ProviderError::Timeout(_)).then_some("upstream_timeout");
    json!({"message": error.to_string(), "type": "server_error", "code": code})
}

/// The HTTP error for an answer given whole that failed after its upstream accepted it.
pub(crate) fn whole_answer_error(error: &Value) -> crate::error::ApiError {
    use axum::http::StatusCode;
    let message = error["message"].as_str().unwrap_or("the upstream failed").to_owned();
    match error["code"].as_str() {
        Some("upstream_timeout") => {
            crate::error::ApiError::new(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", message)
        }
        _ => crate::error::ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", message),
    }
}

/// Counts an answer dropped before its end (its reader left, or asked to stop) as a cancelled
/// upstream request: dropping the provider's stream is what cancels it.
struct Unfinished {
    done: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.done {
            metrics::counter!("sluice_upstream_cancelled_total").increment(1);
        }
    }
}

/// What is left of a provider's answer to read.
struct Reading {
    deltas: DeltaStream,
    usage: Option<Usage>,
    finish: Finish,
    texts: u32,
    unfinished: Unfinished,
}

/// A provider's answer as answer events, in the order the [module docs](self) give: usage and
/// the finish reason are held until the provider's stream ends (a provider may send either
/// before its last text), an error ends the answer. Usage a provider did not report is the
/// count of text pieces. Dropping the stream before its end cancels the upstream and counts in
/// `sluice_upstream_cancelled_total`.
pub(crate) fn from_provider(deltas: DeltaStream) -> BoxStream<'static, AnswerEvent> {
    let reading = Reading {
        deltas,
        usage: None,
        finish: Finish::Stop,
        texts: 0,
        unfinished: Unfinished { done: false },
    };
    stream::unfold(Some(reading), |reading| async move {
        let mut reading = reading?;
        loop {
            let events = match reading.deltas.next().await {
                Some(Ok(Delta::Text(text))) => {
                    reading.texts += 1;
                    vec![AnswerEvent::Text(text)]
                }
                Some(Ok(Delta::ToolCall { index, id, name, arguments })) => {
                    vec![AnswerEvent::ToolCall(ToolCallPart { index, id, name, arguments })]
                }
                Some(Ok(Delta::Usage(usage))) => {
                    reading.usage = Some(usage);
                    continue;
                }
                Some(Ok(Delta::Finish(reason))) => {
                    reading.finish = reason.into();
                    continue;
                }
                Some(Err(error)) => {
                    reading.finish = Finish::Error;
                    vec![AnswerEvent::Error(error_object(&error))]
                }
                None => Vec::new(),
            };
            if reading.finish == Finish::Error || events.is_empty() {
                reading.unfinished.done = true;
                let usage = reading.usage.unwrap_or(Usage::new(0, reading.texts));
                let ending = [AnswerEvent::Usage(usage), AnswerEvent::End(reading.finish)];
                return Some((events.into_iter().chain(ending).collect::<Vec<_>>(), None));
            }
            return Some((events, Some(reading)));
        }
    })
    .flat_map(stream::iter)
    .boxed()
}

/// A wire protocol's writer of one answer: frames for each event, in order.
pub(crate) trait Encoder: Send + 'static {
    /// Frames to send before the answer's first event (they go out at once, so a client and
    /// any proxy see the stream open before the model's first token).
    fn open(&mut self, _out: &mut Vec<Bytes>) {}

    /// Frames for one event; `id` is its id in the hub when the answer is read from there.
    fn event(&mut self, event: &AnswerEvent, id: Option<&str>, out: &mut Vec<Bytes>);
}

/// The frames of `pieces` through `encoder` (frames the hub made pass as they are).
pub(crate) fn encode(
    pieces: BoxStream<'static, Piece>,
    mut encoder: impl Encoder,
) -> BoxStream<'static, Bytes> {
    let mut first = Vec::new();
    encoder.open(&mut first);
    let rest = pieces.scan(encoder, |encoder, piece| {
        let mut out = Vec::new();
        match piece {
            Piece::Event(id, event) => encoder.event(&event, id.as_deref(), &mut out),
            Piece::Frame(frame) => out.push(frame),
        }
        std::future::ready(Some(stream::iter(out)))
    });
    stream::iter(first).chain(rest.flatten()).boxed()
}

/// A whole answer, folded from its events: what the protocols that answer in one object
/// (not streamed) return.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Folded {
    /// What `Start` said.
    pub(crate) start: Option<Value>,
    pub(crate) text: String,
    /// The calls, by index: (id, name, arguments).
    pub(crate) calls: Vec<(String, String, String)>,
    pub(crate) error: Option<Value>,
    pub(crate) usage: Usage,
    /// `None` while the answer runs.
    pub(crate) finish: Option<Finish>,
}

impl Folded {
    /// Folds every event of `events`.
    pub(crate) async fn all(mut events: BoxStream<'static, AnswerEvent>) -> Folded {
        let mut folded = Folded::default();
        while let Some(event) = events.next().await {
            folded.add(&event);
        }
        folded
    }

    /// Takes in one more event.
    pub(crate) fn add(&mut self, event: &AnswerEvent) {
        match event {
            AnswerEvent::Start(meta) => self.start = Some(meta.clone()),
            AnswerEvent::Text(text) => self.text.push_str(text),
            AnswerEvent::ToolCall(part) => {
                let index = part.index as usize;
                if self.calls.len() <= index {
                    self.calls.resize(index + 1, Default::default());
                }
                let call = &mut self.calls[index];
                if let Some(id) = &part.id {
                    call.0.clone_from(id);
                }
                if let Some(name) = &part.name {
                    call.1.clone_from(name);
                }
                call.2.push_str(&part.arguments);
            }
            AnswerEvent::Error(error) => self.error = Some(error.clone()),
            AnswerEvent::Usage(usage) => self.usage = *usage,
            AnswerEvent::End(finish) => self.finish = Some(*finish),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(deltas: Vec<Result<Delta, ProviderError>>) -> Vec<AnswerEvent> {
        from_provider(stream::iter(deltas).boxed()).collect().await
    }

    #[tokio::test]
    async fn usage_and_finish_come_last_whenever_the_provider_sent_them() {
        let usage = Usage::new(3, 2);
        let events = collect(vec![
            Ok(Delta::Usage(usage)),
            Ok(Delta::Text("a".into())),
            Ok(Delta::Finish(FinishReason::Length)),
            Ok(Delta::Text("b".into())),
        ])
        .await;
        assert_eq!(
            events,
            [
                AnswerEvent::Text("a".into()),
                AnswerEvent::Text("b".into()),
                AnswerEvent::Usage(usage),
                AnswerEvent::End(Finish::Length),
            ]
        );
    }

    #[tokio::test]
    async fn an_error_ends_the_answer_with_usage_counted_from_its_text() {
        let events = collect(vec![
            Ok(Delta::Text("a".into())),
            Err(ProviderError::Network("reset".into())),
            Ok(Delta::Text("never".into())),
        ])
        .await;
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(
            matches!(&events[1], AnswerEvent::Error(e) if e["message"].as_str().unwrap().contains("reset"))
        );
        assert_eq!(events[2], AnswerEvent::Usage(Usage::new(0, 1)));
        assert_eq!(events[3], AnswerEvent::End(Finish::Error));
    }

    #[test]
    fn every_event_reads_back_from_its_stored_form() {
        let events = [
            AnswerEvent::Start(json!({"model": "m"})),
            AnswerEvent::Text("héllo".into()),
            AnswerEvent::ToolCall(ToolCallPart {
                index: 1,
                id: Some("call_1".into()),
                name: Some("f".into()),
                arguments: "{\"a\"".into(),
            }),
            AnswerEvent::Error(json!({"message": "x", "type": "server_error", "code": null})),
            AnswerEvent::Usage(Usage::new(1, 2)),
            AnswerEvent::End(Finish::Cancelled),
        ];
        for event in events {
            let stored = event.data().to_string();
            assert_eq!(AnswerEvent::from_update(Some(event.event_type()), &stored), Some(event));
        }
        assert_eq!(AnswerEvent::from_update(Some("mystery"), "{}"), None);
        assert_eq!(AnswerEvent::from_update(Some("delta"), "not json"), None);
    }

    #[test]
    fn folding_joins_tool_call_fragments_by_index() {
        let mut folded = Folded::default();
        for part in [
            ToolCallPart {
                index: 1,
                id: Some("b".into()),
                name: Some("g".into()),
                arguments: "{".into(),
            },
            ToolCallPart {
                index: 0,
                id: Some("a".into()),
                name: Some("f".into()),
                arguments: "{}".into(),
            },
            ToolCallPart { index: 1, id: None, name: None, arguments: "}".into() },
        ] {
            folded.add(&AnswerEvent::ToolCall(part));
        }
        let calls = |i: usize| folded.calls[i].clone();
        assert_eq!(calls(0), ("a".into(), "f".into(), "{}".into()));
        assert_eq!(calls(1), ("b".into(), "g".into(), "{}".into()));
    }
}
