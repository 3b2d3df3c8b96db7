//! `EventSource` for Rust: follow a Server-Sent Events stream across dropped connections.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use sluice_client::{EventSource, Item};
//!
//! # async fn run() -> Result<(), sluice_client::Error> {
//! let mut source = EventSource::get("http://127.0.0.1:8080/.well-known/mercure?topic=news")
//!     .header("Authorization", "Bearer …")
//!     .build()?;
//! while let Some(item) = source.next().await {
//!     match item? {
//!         Item::Open => eprintln!("connected"),
//!         Item::Message(event) => println!("{} {}", event.last_event_id, event.data),
//!         Item::Reconnecting { delay, cause } => eprintln!("{cause}; again in {delay:?}"),
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! It behaves as a browser's `EventSource` does, and adds what a program needs:
//!
//! - Requests send `Accept: text/event-stream` and `Cache-Control: no-cache`, and
//!   `Last-Event-ID` whenever the last event id is not empty, so a reconnection resumes.
//! - A `200` with a `text/event-stream` content type (any parameters) opens the stream. Any
//!   other status, `204` included, or any other content type ends it for good with an
//!   [`Error`] carrying the status and the start of the body: that is how a server says stop.
//! - A network error, a read timeout, or a normal end of the body makes it reconnect after the
//!   reconnection time (`retry:` from the server, else the configured one), doubled on each
//!   failure in a row up to a cap, with jitter so that many clients dropped at once do not come
//!   back at once.
//! - Redirects are followed; a POST with a body is resent on every reconnection (for APIs that
//!   stream the response of a POST).
//!
//! [`EventSource`] is a [`Stream`](futures_util::Stream); dropping it, or calling
//! [`EventSource::close`], ends the connection.

mod connection;
mod error;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};
pub use sluice_sse::MessageEvent;

pub use error::{Disconnect, Error};

/// What an [`EventSource`] yields: the three things a browser's `EventSource` reports too
/// (`open`, `message`, `error` while reconnecting), so the set is closed.
#[derive(Debug)]
pub enum Item {
    /// A connection opened (the first one, or a reconnection).
    Open,
    /// An event arrived.
    Message(MessageEvent),
    /// The connection was lost; the next attempt comes after `delay`.
    Reconnecting {
        /// How long the client waits before reconnecting.
        delay: Duration,
        /// What ended the connection.
        cause: Disconnect,
    },
}

/// Redirects are followed as a browser follows them (at most 20), except one that names the
/// URL it came from: an endless loop, which is answered at once as the redirect it is (and so
/// as a network error, see [`Disconnect::Redirect`]), not after twenty round trips.
fn redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().last() == Some(attempt.url()) {
            attempt.stop()
        } else if attempt.previous().len() > 20 {
            attempt.error("more than 20 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// The connection state, as `EventSource.readyState` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReadyState {
    /// Connecting, or waiting to reconnect.
    Connecting = 0,
    /// A connection is open.
    Open = 1,
    /// Closed for good.
    Closed = 2,
}

impl ReadyState {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => ReadyState::Connecting,
            1 => ReadyState::Open,
            _ => ReadyState::Closed,
        }
    }
}

/// Shared between the [`EventSource`] handle and the task-like stream that drives it.
#[derive(Debug)]
struct SharedState(AtomicU8);

impl SharedState {
    fn set(&self, state: ReadyState) {
        self.0.store(state as u8, Ordering::Relaxed);
    }
}

/// How an [`EventSource`] connects and reconnects. Made by [`EventSource::get`] or
/// [`EventSource::post`].
#[derive(Debug, Clone)]
pub struct Builder {
    client: Option<reqwest::Client>,
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<Bytes>,
    last_event_id: String,
    reconnect: bool,
    retry: Duration,
    max_backoff: Duration,
    read_timeout: Option<Duration>,
    max_event_size: usize,
}

impl Builder {
    fn new(method: Method, url: &str) -> Self {
        Builder {
            client: None,
            method,
            url: url.to_owned(),
            headers: Vec::new(),
            body: None,
            last_event_id: String::new(),
            reconnect: true,
            retry: Duration::from_secs(3),
            max_backoff: Duration::from_secs(30),
            read_timeout: None,
            max_event_size: sluice_sse::decode::DEFAULT_MAX_EVENT_SIZE,
        }
    }

    /// Adds a request header, sent on every connection.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Uses this HTTP client (for its proxy, TLS or pool settings) instead of a new one.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Starts as if an event with this id had already been received: the first request sends
    /// it as `Last-Event-ID`.
    pub fn last_event_id(mut self, id: impl Into<String>) -> Self {
        self.last_event_id = id.into();
        self
    }

    /// Whether to reconnect after a lost connection (default yes). Without, a normal end of
    /// the body ends the stream and a network error is returned as [`Error::Disconnected`].
    pub fn reconnect(mut self, reconnect: bool) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// The reconnection time until the server sets one with `retry:` (default 3 s, as
    /// browsers).
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = retry;
        self
    }

    /// The longest wait between attempts when failures in a row double it (default 30 s; a
    /// longer `retry:` from the server is still honoured).
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Reconnects when no byte arrives for this long (default: wait forever). Set it above the
    /// server's keep-alive interval.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// The largest event accepted before the stream fails with [`Error::Decode`].
    pub fn max_event_size(mut self, bytes: usize) -> Self {
        self.max_event_size = bytes;
        self
    }

    /// Checks the URL and headers and returns the event source; it connects when first polled.
    pub fn build(self) -> Result<EventSource, Error> {
        let url = Url::parse(&self.url)
            .map_err(|e| Error::Invalid(format!("URL {:?}: {e}", self.url)))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::Invalid(format!("header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| Error::Invalid(format!("value of header {name}")))?;
            headers.append(name, value);
        }
        let client = match self.client {
            Some(client) => client,
            None => reqwest::Client::builder()
                .redirect(redirects())
                .build()
                .map_err(|e| Error::Invalid(format!("HTTP client: {e}")))?,
        };
        let state = Arc::new(SharedState(AtomicU8::new(ReadyState::Connecting as u8)));
        let connection = connection::Connection::new(
            connection::Request { client, method: self.method, url, headers, body: self.body },
            connection::Policy {
                reconnect: self.reconnect,
                retry: self.retry,
                max_backoff: self.max_backoff,
                read_timeout: self.read_timeout,
            },
            sluice_sse::Decoder::new()
                .with_max_event_size(self.max_event_size)
                .with_last_event_id(self.last_event_id),
            Arc::clone(&state),
        );
        Ok(EventSource { items: Some(connection.into_stream()), state })
    }
}

/// A stream of [`Item`]s from one Server-Sent Events URL, reconnecting as needed.
pub struct EventSource {
    items: Option<BoxStream<'static, Result<Item, Error>>>,
    state: Arc<SharedState>,
}

impl fmt::Debug for EventSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSource").field("ready_state", &self.ready_state()).finish()
    }
}

impl EventSource {
    /// An event source that sends `GET url`.
    pub fn get(url: &str) -> Builder {
        Builder::new(Method::GET, url)
    }

    /// An event source that sends `POST url` with `body` (resent on every reconnection); set
    /// its `Content-Type` with [`Builder::header`].
    pub fn post(url: &str, body: impl Into<Bytes>) -> Builder {
        let mut builder = Builder::new(Method::POST, url);
        builder.body = Some(body.into());
        builder
    }

    /// The connection state now.
    pub fn ready_state(&self) -> ReadyState {
        if self.items.is_none() {
            return ReadyState::Closed;
        }
        ReadyState::from_u8(self.state.0.load(Ordering::Relaxed))
    }

    /// Closes the connection for good; the stream then ends.
    pub fn close(&mut self) {
        self.items = None;
        self.state.set(ReadyState::Closed);
    }
}

impl Stream for EventSource {
    type Item = Result<Item, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(items) = self.items.as_mut() else {
            return Poll::Ready(None);
        };
        let next = items.as_mut().poll_next(cx);
        if let Poll::Ready(None) = next {
            self.close();
        }
        next
    }
}
