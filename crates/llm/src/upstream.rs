//! Reading an upstream's event stream, whatever its wire format: the HTTP client every
//! upstream provider uses (with a bound on connecting), the check that a response opened an
//! event stream, and the reading loop ([`translate`]) that turns each wire format's events
//! into deltas through a [`Translate`]. OpenAI-compatible and Anthropic upstreams both build
//! on it; neither knows the other.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use serde_json::Value;
use sluice_sse::{Decoder, EventStream, MessageEvent, StreamError};

use crate::types::{Delta, DeltaStream, FinishReason, ProviderError, Usage};

/// The largest event an upstream may send. A chunk of an answer is a few hundred bytes; an
/// upstream sending megabytes in one line is broken, and reading on would only hold memory.
const MAX_UPSTREAM_EVENT: usize = 1024 * 1024;

/// An HTTP client for upstreams: connecting gives up after `connect_timeout` (counted as
/// `sluice_timeouts_total{wait="upstream_connect"}`), and idle connections are reused.
pub(crate) fn client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

/// A request that failed before any response, as a [`ProviderError`].
fn send_error(error: &reqwest::Error) -> ProviderError {
    if error.is_connect() && error.is_timeout() {
        metrics::counter!("sluice_timeouts_total", "wait" => "upstream_connect").increment(1);
    }
    ProviderError::Network(error.to_string())
}

/// Maps an error response (before the stream started) to a [`ProviderError`].
pub(crate) async fn error_from_response(response: reqwest::Response) -> ProviderError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or(body);
    match status {
        401 | 403 => ProviderError::Unauthorized(message),
        429 => ProviderError::Busy { message, retry_after },
        400 | 404 | 422 => ProviderError::InvalidRequest(message),
        _ => ProviderError::Upstream { status, message },
    }
}

/// Sends `request` and checks the response opened an event stream.
pub(crate) async fn open_event_stream(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<BoxStream<'static, Result<MessageEvent, StreamError<reqwest::Error>>>, ProviderError> {
    let response = tokio::time::timeout(timeout, request.send())
        .await
        .map_err(|_| ProviderError::Timeout(timeout))?
        .map_err(|e| send_error(&e))?;
    if !response.status().is_success() {
        return Err(error_from_response(response).await);
    }
    let decoder = Decoder::new().with_max_event_size(MAX_UPSTREAM_EVENT);
    Ok(EventStream::with_decoder(response.bytes_stream(), decoder).boxed())
}

/// The deltas a translator has ready, and whether the answer is over.
#[derive(Default)]
pub(crate) struct Out {
    ready: VecDeque<Result<Delta, ProviderError>>,
    over: bool,
}

impl Out {
    /// Queues a delta.
    pub(crate) fn push(&mut self, delta: Delta) {
        self.ready.push_back(Ok(delta));
    }

    /// Ends the answer with `error`.
    pub(crate) fn fail(&mut self, error: ProviderError) {
        self.over = true;
        self.ready.push_back(Err(error));
    }

    /// Ends the answer with its usage (when known) and finish reason.
    pub(crate) fn finish(&mut self, usage: Option<Usage>, finish: FinishReason) {
        self.over = true;
        if let Some(usage) = usage {
            self.push(Delta::Usage(usage));
        }
        self.push(Delta::Finish(finish));
    }
}

/// An upstream wire format, event by event; [`translate`] does the reading.
pub(crate) trait Translate: Send + 'static {
    /// Reads one event of the upstream's stream.
    fn event(&mut self, event: &MessageEvent, out: &mut Out);
    /// The upstream's stream ended cleanly.
    fn end(&mut self, out: &mut Out);
}

/// The deltas of an upstream's event stream, read through `translator`.
pub(crate) fn translate<T: Translate>(
    events: BoxStream<'static, Result<MessageEvent, StreamError<reqwest::Error>>>,
    translator: T,
) -> DeltaStream {
    let state = (events, translator, Out::default());
    stream::unfold(state, |(mut events, mut translator, mut out)| async move {
        loop {
            if let Some(item) = out.ready.pop_front() {
                return Some((item, (events, translator, out)));
            }
            if out.over {
                return None;
            }
            match events.next().await {
                Some(Ok(event)) => translator.event(&event, &mut out),
                Some(Err(error)) => out.fail(ProviderError::Network(error.to_string())),
                None => translator.end(&mut out),
            }
        }
    })
    .boxed()
}
