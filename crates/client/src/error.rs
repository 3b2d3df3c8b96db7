//! Why a stream stopped, for good or for a while.

use std::time::Duration;

use reqwest::StatusCode;

/// What ended one connection. With reconnection on, the client says so in
/// [`Item::Reconnecting`](crate::Item::Reconnecting) and tries again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Disconnect {
    /// The server ended the response normally.
    #[error("the server ended the stream")]
    Ended,
    /// Connecting failed, or the connection broke while reading.
    #[error("connection failed: {0}")]
    Network(#[source] reqwest::Error),
    /// No byte arrived within the read timeout.
    #[error("no data for {0:?}")]
    ReadTimeout(Duration),
    /// A redirect that leads nowhere: no `Location`, or one naming the URL it came from. The
    /// WHATWG rules make it a network error, so the client reconnects (with backoff) rather
    /// than stopping for good.
    #[error("a redirect ({0}) that leads nowhere")]
    Redirect(reqwest::StatusCode),
}

/// Why an event source stopped for good.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a status other than 200 (204 is how a server says "stop").
    #[error("the server answered {status}: {body}")]
    Status {
        /// The response status.
        status: StatusCode,
        /// The start of the response body (up to 1 KiB), lossily decoded.
        body: String,
    },
    /// The server answered 200 with a content type other than `text/event-stream`.
    #[error(
        "the server answered with content type {content_type:?}, not text/event-stream: {body}"
    )]
    ContentType {
        /// The `Content-Type` header, if any.
        content_type: Option<String>,
        /// The start of the response body (up to 1 KiB), lossily decoded.
        body: String,
    },
    /// The stream could not be decoded (an event over the size limit).
    #[error(transparent)]
    Decode(#[from] sluice_sse::DecodeError),
    /// The connection was lost and reconnection is off.
    #[error(transparent)]
    Disconnected(Disconnect),
    /// The URL, a header or the HTTP client settings were not usable.
    #[error("invalid {0}")]
    Invalid(String),
}
