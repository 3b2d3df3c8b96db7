//! What every protocol does before its answer: admit the caller and read the body under the
//! server's bounds ([`Admitted`], [`Allowed`]), and ask the providers, reporting their
//! refusals as HTTP errors.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream;
use sluice_llm::{ChatRequest, DeltaStream, ProviderError};

use crate::conn::ClientAddr;
use crate::error::ApiError;
use crate::keys::Caller;
use crate::state::AppState;

/// A chat request's body, read once the caller passed the checks every chat request goes
/// through: its key and rate limits, then the body's size and pace; and who the caller is.
pub(crate) struct Admitted(pub(crate) Bytes, pub(crate) Caller);

impl FromRequest<AppState> for Admitted {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let caller = admit(request.headers(), request.extensions(), state, true).await?;
        let config = state.config();
        let limit = (config.max_body_bytes, config.timeouts.request_body);
        let body = crate::body::read_body(request.into_body(), limit.0, limit.1).await?;
        Ok(Admitted(body, caller))
    }
}

/// A request with no body that reads or stops an answer: the caller's key and the
/// server-wide rate limit (not the key's own limits, so that a key at its limit can still
/// stop its answers).
pub(crate) struct Allowed;

impl FromRequestParts<AppState> for Allowed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        admit(&parts.headers, &parts.extensions, state, false).await.map(|_| Allowed)
    }
}

async fn admit(
    headers: &HeaderMap,
    extensions: &Extensions,
    state: &AppState,
    charged: bool,
) -> Result<Caller, ApiError> {
    let client = extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), |ConnectInfo(ClientAddr(address))| {
            address.ip()
        });
    state.admission().admit(headers, client, state.hub().store(), charged).await
}

/// A provider's failure before anything was sent, as the HTTP error a client expects.
pub(crate) fn provider_error(error: ProviderError) -> ApiError {
    match error {
        ProviderError::UnknownModel(model) => unknown_model(&model),
        ProviderError::InvalidRequest(message) => ApiError::bad_request("invalid_request", message),
        ProviderError::Busy { message, retry_after } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "busy", message)
                .with_retry_after(retry_after.map_or(1, |d| d.as_secs().max(1)))
        }
        ProviderError::Timeout(after) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("the upstream did not answer within {after:?}"),
        ),
        ProviderError::Internal(detail) => ApiError::internal(detail),
        other => ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", other.to_string()),
    }
}

fn unknown_model(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!("The model `{model}` does not exist or you do not have access to it."),
    )
    .with_param("model")
}

/// Asks the providers for `chat` and waits until one accepted it: for an answer given whole,
/// where nothing can reach the client before the answer does, so a refusal is still an HTTP
/// error status.
pub(crate) async fn ask(
    state: &AppState,
    caller: &Caller,
    chat: ChatRequest,
) -> Result<DeltaStream, ApiError> {
    let models = &state.config().models;
    if !models.serves(&chat.model) {
        return Err(unknown_model(&chat.model));
    }
    let chat = caller.limit(chat)?;
    let meter = caller.meter(&chat);
    Ok(meter.wrap(models.stream(chat).await.map_err(provider_error)?))
}

/// Asks the providers for `chat` when the answer is first read: for a streamed answer, whose
/// head (and keep-alives) go out at once however slow the upstream is to answer. A model no
/// provider serves is refused here (404); anything the upstream says before its first token,
/// refusals included, becomes the answer's error, bounded by the first-token timeout.
pub(crate) fn ask_lazily(
    state: &AppState,
    caller: &Caller,
    chat: ChatRequest,
) -> Result<DeltaStream, ApiError> {
    let models = Arc::clone(&state.config().models);
    if !models.serves(&chat.model) {
        return Err(unknown_model(&chat.model));
    }
    let chat = caller.limit(chat)?;
    let meter = caller.meter(&chat);
    let opened = stream::once(async move { models.stream(chat).await });
    let deltas = opened
        .flat_map(|opened| match opened {
            Ok(deltas) => deltas,
            Err(error) => stream::once(std::future::ready(Err(error))).boxed(),
        })
        .boxed();
    Ok(meter.wrap(deltas))
}

/// A token limit in a request body: a whole number of at least 1 (absent: none).
pub(crate) fn token_count<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    // A whole number, written as JSON may write one (`5` or `5.0`).
    let Some(n) = super::chat_completions::wire::whole_number::<D, u32>(deserializer)? else {
        return Ok(None);
    };
    (n >= 1)
        .then_some(Some(n))
        .ok_or_else(|| serde::de::Error::custom("must be a whole number of at least 1"))
}

#[cfg(test)]
mod token_count_tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Limit {
        #[serde(default, deserialize_with = "super::token_count")]
        n: Option<u32>,
    }

    fn parse(body: &str) -> Option<Option<u32>> {
        serde_json::from_str::<Limit>(body).ok().map(|limit| limit.n)
    }

    #[test]
    fn a_token_count_is_a_whole_number_however_json_writes_it() {
        assert_eq!(parse(r#"{"n": 5}"#), Some(Some(5)));
        assert_eq!(parse(r#"{"n": 5.0}"#), Some(Some(5)));
        assert_eq!(parse(r#"{"n": null}"#), Some(None));
        assert_eq!(parse("{}"), Some(None));
        assert_eq!(parse(r#"{"n": 4294967295}"#), Some(Some(u32::MAX)));
        for refused in ["0", "0.0", "5.5", "-1", "4294967296", "\"5\""] {
            assert_eq!(parse(&format!(r#"{{"n": {refused}}}"#)), None, "{refused}");
        }
    }
}
