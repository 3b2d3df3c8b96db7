//! The one error type of every endpoint: a status and a JSON body that says what was wrong.
//!
//! The body has OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, so that one
//! client-side handler serves the hub and the gateway alike. A 5xx never shows internals: the
//! detail goes to the log, the client gets a generic message.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use sluice_hub::{LimitError, PublishError, StoreError, SubscribeError};

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: Option<&'static str>,
    retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge (RFC 6750), for errors about the bearer token.
    challenge: Option<&'static str>,
    /// Whether the answer ends the connection (`Connection: close`): the request's body was
    /// left unread, so the connection cannot carry another request, and a client that reused
    /// it would have its next request fail on a closed socket.
    closes: bool,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: &'a str,
}

/// The body of every error response, for the OpenAPI document (the same shape as OpenAI's).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // describes what `ApiError::body` writes
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorDetail {
    /// For people.
    message: String,
    /// The class of error: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `not_found_error`, `conflict_error`, `rate_limit_error` or
    /// `server_error`.
    r#type: String,
    /// The request parameter that was wrong, if one was.
    #[schema(nullable)]
    param: Option<String>,
    /// For programs: a stable code such as `missing_topic` or `rate_limit_exceeded`.
    code: String,
}

impl ApiError {
    /// An error with this status, machine-readable code and human-readable message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
            challenge: None,
            closes: false,
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Names the request parameter that was wrong (OpenAI's `param`).
    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// Sets `Retry-After`, in seconds.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Ends the connection after this answer (a request body left unread).
    pub(crate) fn closing(mut self) -> Self {
        self.closes = true;
        self
    }

    fn challenging(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// 401: credentials are needed and none were sent (a bare `Bearer` challenge).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message).challenging("Bearer")
    }

    /// 401: the token sent is not valid (expired, forged, not for this hub, malformed grants).
    pub fn invalid_token(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
            .challenging(r#"Bearer error="invalid_token""#)
    }

    /// 403: a valid token that does not grant this.
    pub fn insufficient_scope(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "insufficient_scope", message)
            .challenging(r#"Bearer error="insufficient_scope""#)
    }

    /// 400: the token's presentation is malformed (RFC 6750's `invalid_request`).
    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
            .challenging(r#"Bearer error="invalid_request""#)
    }

    /// 404: nothing here by that name.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 403: credentials that do not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 503 with `Retry-After`: over capacity for now.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            .with_retry_after(retry_after_secs)
    }

    /// 500: logs `detail` and tells the client only that something failed.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "internal server error")
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON body, as bytes.
    pub fn body(&self) -> Vec<u8> {
        let error = Detail {
            message: &self.message,
            kind: self.kind(),
            param: self.param,
            code: self.code,
        };
        let body = Body { error };
        serde_json::to_vec(&body).expect("an error body always serializes")
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if self.closes {
            // HTTP/1.1 only: hyper leaves connection headers out of HTTP/2 answers.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A store failure as the client sees it: try again later (counted, and logged here).
#[allow(clippy::needless_pass_by_value)] // for `map_err(store_unavailable)`
pub(crate) fn store_unavailable(error: sluice_hub::StoreError) -> ApiError {
    metrics::counter!("sluice_store_failures_total").increment(1);
    tracing::warn!(%error, "the store failed");
    ApiError::unavailable("the store is unavailable; retry shortly", 1)
}

/// The hub's refusals, as a client of any route sees them.
pub(crate) fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::Conflict(id) => ApiError::new(
            StatusCode::CONFLICT,
            "duplicate_id",
            format!("an update with id {id:?} exists"),
        ),
        StoreError::Invalid(e) => ApiError::bad_request("invalid_update", e.to_string()),
        StoreError::Closed => ApiError::unavailable("the hub is shutting down", 1),
        other => store_unavailable(other),
    }
}

fn limit_error(error: &LimitError) -> ApiError {
    let code = match error {
        LimitError::TopicTooLong { .. } => "topic_too_long",
        LimitError::TooManyTopics { .. } => "too_many_topics",
        LimitError::TemplateTooLong { .. } => "selector_too_long",
        LimitError::TooManyVariables { .. } => "selector_too_complex",
        _ => "limit_exceeded",
    };
    ApiError::bad_request(code, error.to_string())
}

/// A refused subscription as the client sees it.
pub(crate) fn subscribe_error(error: SubscribeError) -> ApiError {
    match error {
        SubscribeError::Limit(e) => limit_error(&e),
        SubscribeError::Store(e) => store_error(e),
        other => ApiError::internal(other),
    }
}

pub(crate) fn publish_error(error: PublishError) -> ApiError {
    match error {
        PublishError::NoTopic => ApiError::bad_request("missing_topic", error.to_string()),
        PublishError::ReservedId => ApiError::bad_request("invalid_id", error.to_string()),
        PublishError::Limit(e) => limit_error(&e),
        PublishError::Store(e) => store_error(e),
        other => ApiError::internal(other),
    }
}
