//! Reading a request body with a bound on its size and on the wait between its pieces, so
//! that a client sending half a body (or trickling it) cannot hold a request open. A body
//! refused before its end closes the connection (its unread rest cannot be told from the next
//! request), and the answer says so.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use crate::error::ApiError;
use crate::telemetry::count_timeout;

/// Reads all of `body`: at most `limit` bytes (413 past it), with at most `idle` between two
/// pieces (408). A body that is not valid HTTP framing (a broken chunked encoding, a
/// connection closed midway) is a 400.
pub(crate) async fn read_body(body: Body, limit: usize, idle: Duration) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {limit} bytes"),
        )
        .closing()
    };
    let mut body = body;
    let mut collected = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(stalled(idle)),
            Ok(None) => return Ok(collected.freeze()),
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, "malformed request body");
                return Err(ApiError::bad_request(
                    "malformed_body",
                    "the request body is not valid HTTP framing (or ended early)",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if collected.len() + data.len() > limit {
                return Err(too_large());
            }
            collected.extend_from_slice(&data);
        }
    }
}

/// A body that stalled for `idle` between two pieces (counted): 408, and the connection
/// closes.
pub(crate) fn stalled(idle: Duration) -> ApiError {
    count_timeout("request_body");
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        format!("the request body stalled for {} s", idle.as_secs()),
    )
    .closing()
}
