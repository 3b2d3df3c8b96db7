//! What became of each answer, told to an [`Observer`] once it is over: the facts a trace of
//! it carries (model, provider, tokens, time to the first token, why it ended, whether the
//! reader left first). The [`Router`](crate::Router) watches every answer it starts, whichever
//! of Sluice's protocols asked for it, so an exporter hooks in at one place.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::{StreamExt, stream};

use crate::types::{ChatRequest, Delta, DeltaStream, FinishReason, ProviderError, Usage};

/// One answer, over.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerRecord {
    /// The model asked for.
    pub model: String,
    /// The configured name of the provider that served it (the last one tried, when none
    /// accepted).
    pub provider: String,
    /// That provider's kind ([`Provider::system`](crate::Provider::system)).
    pub system: &'static str,
    /// The request's `max_tokens`.
    pub max_tokens: Option<u32>,
    /// The request's temperature.
    pub temperature: Option<f32>,
    /// When the answer was asked for.
    pub started: SystemTime,
    /// From the request to the end (or to the reader leaving).
    pub duration: Duration,
    /// From the request to the first text or tool call, if one came.
    pub time_to_first_token: Option<Duration>,
    /// Token usage, when the provider reported it.
    pub usage: Option<Usage>,
    /// Text and tool-call deltas received: what was generated before a stop, when no usage
    /// came (the local model sends one per token).
    pub deltas: u32,
    /// Why the model stopped, when it said.
    pub finish_reason: Option<FinishReason>,
    /// The error that ended it.
    pub error: Option<ProviderError>,
    /// Whether the reader left (or stopped it) before the end.
    pub cancelled: bool,
}

/// Told of every answer once it is over. It runs on the answer's task when the stream ends or
/// is dropped, so it must be quick (hand the record to a queue).
#[derive(Clone)]
pub struct Observer(Arc<dyn Fn(&AnswerRecord) + Send + Sync>);

impl Observer {
    /// An observer that calls `f`.
    pub fn new(f: impl Fn(&AnswerRecord) + Send + Sync + 'static) -> Self {
        Observer(Arc::new(f))
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

/// Follows one answer's deltas and tells the observer when the answer is over: at its finish,
/// at its error, at its end, or when it is dropped early (the reader left). The router keeps
/// one per answer; a party of its own (a key's usage) can put another on an answer's stream
/// with [`Watch::wrap`].
#[derive(Debug)]
pub struct Watch {
    observer: Observer,
    record: AnswerRecord,
    since: Instant,
    over: bool,
}

impl Watch {
    /// A watch over the answer to `request`, for `observer`; the record's provider stays empty
    /// unless the router names it.
    pub fn new(observer: Observer, request: &ChatRequest) -> Self {
        Watch {
            observer,
            record: AnswerRecord {
                model: request.model.clone(),
                provider: String::new(),
                system: "",
                max_tokens: request.max_tokens,
                temperature: request.temperature,
                started: SystemTime::now(),
                duration: Duration::ZERO,
                time_to_first_token: None,
                usage: None,
                deltas: 0,
                finish_reason: None,
                error: None,
                cancelled: false,
            },
            since: Instant::now(),
            over: false,
        }
    }

    /// The provider now serving the answer.
    pub(crate) fn serving(&mut self, provider: &str, system: &'static str) {
        provider.clone_into(&mut self.record.provider);
        self.record.system = system;
    }

    /// Takes note of what the reader is given: `None` is the stream's end.
    pub(crate) fn saw(&mut self, item: Option<&Result<Delta, ProviderError>>) {
        match item {
            Some(Ok(Delta::Text(_) | Delta::ToolCall { .. })) => {
                self.record.time_to_first_token.get_or_insert_with(|| self.since.elapsed());
                self.record.deltas += 1;
            }
            Some(Ok(Delta::Usage(usage))) => self.record.usage = Some(*usage),
            // The finish is the answer's last word (usage comes before it): a reader that
            // stops reading there did not cancel anything.
            Some(Ok(Delta::Finish(reason))) => {
                self.record.finish_reason = Some(*reason);
                self.end(None);
            }
            Some(Err(error)) => self.end(Some(error.clone())),
            None => self.end(None),
        }
    }

    /// The answer is over, with this error or none.
    pub(crate) fn end(&mut self, error: Option<ProviderError>) {
        if self.over {
            return;
        }
        self.over = true;
        self.record.error = error;
        self.record.duration = self.since.elapsed();
        (self.observer.0)(&self.record);
    }
}

impl Watch {
    /// `deltas`, watched: the observer is told of the answer once it is over.
    pub fn wrap(self, deltas: DeltaStream) -> DeltaStream {
        stream::unfold((deltas, self), |(mut deltas, mut watch)| async move {
            let item = deltas.next().await;
            watch.saw(item.as_ref());
            item.map(|item| (item, (deltas, watch)))
        })
        .boxed()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.over {
            self.record.cancelled = true;
            self.end(None);
        }
    }
}
