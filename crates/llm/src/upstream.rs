//! Reading an upstream's event stream, whatever its wire format: the HTTP client every
//! upstream provider uses (with a bound on connecting), the check that a response opened an
//! event stream, and the reading loop ([`translate`]) that turns each wire format's events
//! into deltas through a [`Translate`]. OpenAI-compatible and Anthropic upstreams both build
//! on it; neither knows the other.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use futures_util::stream::{self, BoxStream};
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use sluice_sse::{Decoder, EventStream, MessageEvent, StreamError};

use crate::plain::PlainClient;
use crate::types::{Delta, DeltaStream, FinishReason, ProviderError, Usage};

/// The largest event an upstream may send. A chunk of an answer is a few hundred bytes; an
/// upstream sending megabytes in one line is broken, and reading on would only hold memory.
const MAX_UPSTREAM_EVENT: usize = 1024 * 1024;
/// How long the rest of a finished answer's stream is read for ([`read_out`]).
const READ_OUT_FOR: Duration = Duration::from_secs(1);
/// The most of an error response's body read for its message.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The HTTP client every upstream provider uses: [`PlainClient`] for upstreams in the clear
/// (it holds far less per streamed answer), reqwest for the rest (TLS, proxies). Connecting
/// gives up after the connect timeout (counted as
/// `sluice_timeouts_total{wait="upstream_connect"}`), and idle connections are reused.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    plain: PlainClient,
    general: reqwest::Client,
}

/// Where a provider POSTs its requests: its base URL and path, parsed once, when the provider
/// is made, rather than at every request (a URL's parse was 2% of the gateway's CPU at
/// thousands of requests a second). An unparseable one fails each request, as before.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint(Result<Url, String>);

impl Endpoint {
    /// `path` under `base_url`, whether or not that ends in a slash.
    pub(crate) fn new(base_url: &str, path: &str) -> Self {
        let url = format!("{}/{path}", base_url.trim_end_matches('/'));
        Endpoint(Url::parse(&url).map_err(|e| format!("{url}: {e}")))
    }
}

/// An upstream's event stream, as it is read.
pub(crate) type Events = BoxStream<'static, Result<MessageEvent, StreamError<io::Error>>>;

impl Client {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        let general = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Client { plain: PlainClient::new(connect_timeout), general }
    }

    /// POSTs `body` (JSON) to `endpoint` with `headers`, and checks that the response (due
    /// within `timeout`) opened an event stream.
    pub(crate) async fn open_event_stream(
        &self,
        endpoint: &Endpoint,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Events, ProviderError> {
        let url = endpoint.0.as_ref().map_err(|e| ProviderError::Internal(e.clone()))?;
        let opened = tokio::time::timeout(timeout, self.open(url, headers, body))
            .await
            .map_err(|_| ProviderError::Timeout(timeout))??;
        let decoder = Decoder::new().with_max_event_size(MAX_UPSTREAM_EVENT);
        Ok(EventStream::with_decoder(opened, decoder).boxed())
    }

    /// The response's body once it began with success; its refusal as a [`ProviderError`].
    async fn open(
        &self,
        url: &Url,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<BoxStream<'static, io::Result<Bytes>>, ProviderError> {
        if self.plain.serves(url) {
            let response = self.plain.post(url, headers, &body).await.map_err(|error| {
                if error.kind() == io::ErrorKind::TimedOut {
                    count_connect_timeout();
                }
                ProviderError::Network(error.to_string())
            })?;
            if !(200..300).contains(&response.status) {
                let message = response.body.text(MAX_ERROR_BODY).await;
                return Err(refusal(response.status, response.retry_after.as_deref(), message));
            }
            return Ok(response.body.boxed());
        }
        let mut request = self.general.post(url.clone()).header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.body(body).send().await.map_err(|error| {
            if error.is_connect() && error.is_timeout() {
                count_connect_timeout();
            }
            ProviderError::Network(error.to_string())
        })?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            let retry_after = response.headers().get(RETRY_AFTER).cloned();
            let message = response.text().await.unwrap_or_default();
            let retry_after = retry_after.as_ref().and_then(|v| v.to_str().ok());
            return Err(refusal(status, retry_after, message));
        }
        Ok(response.bytes_stream().map(|piece| piece.map_err(io::Error::other)).boxed())
    }
}

fn count_connect_timeout() {
    metrics::counter!("sluice_timeouts_total", "wait" => "upstream_connect").increment(1);
}

/// An error response (before the stream started) as a [`ProviderError`], with the message
/// of its JSON `error` when it has one.
fn refusal(status: u16, retry_after: Option<&str>, body: String) -> ProviderError {
    let retry_after =
        retry_after.and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
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

/// The deltas a translator has ready, and whether the answer is over (and if so, whether it
/// finished rather than failed).
#[derive(Default)]
pub(crate) struct Out {
    ready: VecDeque<Result<Delta, ProviderError>>,
    over: bool,
    finished: bool,
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
        self.finished = true;
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
pub(crate) fn translate<T: Translate>(events: Events, translator: T) -> DeltaStream {
    let state = (events, translator, Out::default());
    stream::unfold(state, |(mut events, mut translator, mut out)| async move {
        loop {
            if let Some(item) = out.ready.pop_front() {
                return Some((item, (events, translator, out)));
            }
            if out.over {
                if out.finished {
                    read_out(events);
                }
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

/// Reads what is left of a finished answer's stream (its body's last chunk, as a rule), for a
/// little while at most, so that its connection is read to the end and can carry the next
/// request. An answer that failed or was dropped closes its connection instead. What has
/// already arrived (as a rule, all of it) is read at once, and only the rest by a task.
fn read_out(mut events: Events) {
    loop {
        match events.next().now_or_never() {
            Some(Some(_)) => {}
            Some(None) => return,
            None => break,
        }
    }
    tokio::spawn(async move {
        let rest = async { while events.next().await.is_some() {} };
        let _ = tokio::time::timeout(READ_OUT_FOR, rest).await;
    });
}
