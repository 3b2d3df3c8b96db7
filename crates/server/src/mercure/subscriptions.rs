//! Active subscriptions: the events that announce them and the API that lists them, in the
//! shape of the version each subscriber spoke.
//!
//! | | draft-07 | draft-08 |
//! |---|---|---|
//! | event topic | `…/subscriptions/{topic}/{subscriber}` | `…/subscriptions/{match_type}/{match}/{subscriber}` |
//! | body | JSON-LD (`@context`, `type: Subscription`, `topic`) | JSON (`type: subscription`, `match_type`, `match`) |
//! | SSE event type | default (`message`) | `mercure` |
//! | API last event id | `lastEventID` in the body | `last-event-id` on the `Link: rel="mercure"` header |
//! | API authorization | each subscription's topic must be granted | the request's path must be granted |
//!
//! Which version an API request speaks comes from its token: an access token (`typ: at+jwt`)
//! gets draft-08 documents about draft-08 subscriptions, any other token draft-07 ones.
//! Segments are percent-encoded once, the whole matcher or subscriber id at a time.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_hub::Draft;
use url::Url;

use super::{hub_url, query_token};
use crate::auth::{Claims, Protocol, TokenKind, TokenSource, find_token};
use crate::error::{ApiError, ErrorBody};
use crate::grants::MatchType;
use crate::state::{ActiveMatcher, ActiveSubscription, AppState};

const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(SUBSCRIPTIONS_PATH, get(list_all))
        .route("/.well-known/mercure/subscriptions/{topic}", get(list_topic))
        .route("/.well-known/mercure/subscriptions/{first}/{second}", get(list_matcher))
        .route(
            "/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}",
            get(show_one),
        )
}

/// Percent-encodes everything but RFC 3986 unreserved characters, as matchers and subscriber
/// ids are encoded inside subscription URLs (once: a `%` becomes `%25`).
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The topic of a matcher's subscription events, which is also its URL in the API.
fn subscription_topic(matcher: &ActiveMatcher, subscriber: &str) -> String {
    let (matcher_text, subscriber) =
        (encode_component(&matcher.text), encode_component(subscriber));
    match matcher.match_type {
        None => format!("{SUBSCRIPTIONS_PATH}/{matcher_text}/{subscriber}"),
        Some(kind) => format!("{SUBSCRIPTIONS_PATH}/{}/{matcher_text}/{subscriber}", kind.name()),
    }
}

/// A subscriber's presence: entering lists it in the API and announces it; dropping (when its
/// stream ends) removes it and announces that.
pub(super) struct Presence {
    state: AppState,
    subscriber: String,
}

impl Presence {
    pub(super) fn enter(state: &AppState, active: ActiveSubscription) -> Presence {
        announce(state, &active, true);
        let subscriber = active.subscriber.clone();
        state.add_active(active);
        Presence { state: state.clone(), subscriber }
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Some(active) = self.state.remove_active(&self.subscriber) {
            announce(&self.state, &active, false);
        }
    }
}

/// Publishes a private subscription event for each matcher of `active` (when enabled and
/// running), in its version's shape.
fn announce(state: &AppState, active: &ActiveSubscription, is_active: bool) {
    if !state.config().subscription_events || state.is_shutting_down() {
        return;
    }
    let drafts = active.matchers.iter().map(|matcher| {
        let (data, event_type) = match active.protocol {
            Protocol::Draft07 => (json!(draft07_document(matcher, active, is_active)), None),
            Protocol::Draft08 => {
                (json!(draft08_document(matcher, active, is_active)), Some("mercure".to_owned()))
            }
        };
        Draft {
            topics: vec![subscription_topic(matcher, &active.subscriber)],
            private: true,
            event_type,
            ..Draft::new("", data.to_string())
        }
    });
    state.announcer().announce(state.hub(), drafts);
}

/// A draft-07 subscription, as its events and the API show it (JSON-LD).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionLd {
    /// Always `https://mercure.rocks/`.
    #[serde(rename = "@context")]
    context: &'static str,
    /// The subscription's IRI (also the topic of its subscription events).
    id: String,
    /// Always `Subscription`.
    #[serde(rename = "type")]
    r#type: &'static str,
    /// The topic selector subscribed to.
    topic: String,
    /// The subscriber's id.
    subscriber: String,
    /// Whether it is connected.
    active: bool,
    /// The `mercure.payload` claim of the subscriber's token.
    #[schema(value_type = Option<Object>)]
    payload: Value,
    /// The id of the last update (`earliest` before any), for a single subscription.
    #[serde(rename = "lastEventID", skip_serializing_if = "Option::is_none")]
    last_event_id: Option<String>,
}

/// A collection of draft-07 subscriptions (JSON-LD).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SubscriptionsLd {
    /// Always `https://mercure.rocks/`.
    #[serde(rename = "@context")]
    context: &'static str,
    id: String,
    /// Always `Subscriptions`.
    #[serde(rename = "type")]
    r#type: &'static str,
    /// The id of the last update (`earliest` before any): subscribe from it to miss nothing.
    #[serde(rename = "lastEventID")]
    last_event_id: String,
    subscriptions: Vec<SubscriptionLd>,
}

fn draft07_document(
    matcher: &ActiveMatcher,
    active: &ActiveSubscription,
    is_active: bool,
) -> SubscriptionLd {
    SubscriptionLd {
        context: "https://mercure.rocks/",
        id: subscription_topic(matcher, &active.subscriber),
        r#type: "Subscription",
        topic: matcher.text.clone(),
        subscriber: active.subscriber.clone(),
        active: is_active,
        payload: matcher.payload.clone(),
        last_event_id: None,
    }
}

/// A draft-08 subscription, as its events and the API show it (plain JSON).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Subscription {
    /// The subscription's URL, relative to the hub (also its events' topic).
    id: String,
    /// Always `subscription`.
    #[serde(rename = "type")]
    r#type: &'static str,
    /// How the matcher matches.
    #[schema(value_type = String, example = "urlpattern")]
    match_type: &'static str,
    /// The matcher, as subscribed.
    r#match: String,
    /// The subscriber's id, assigned by the hub for its connection.
    subscriber: String,
    /// Whether it is connected.
    active: bool,
    /// The payload the subscriber's token grants for this matcher.
    #[serde(skip_serializing_if = "Value::is_null")]
    #[schema(value_type = Option<Object>)]
    payload: Value,
}

/// A collection of draft-08 subscriptions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Subscriptions {
    /// The collection's URL, relative to the hub.
    id: String,
    /// Always `subscriptions`.
    #[serde(rename = "type")]
    r#type: &'static str,
    subscriptions: Vec<Subscription>,
}

fn draft08_document(
    matcher: &ActiveMatcher,
    active: &ActiveSubscription,
    is_active: bool,
) -> Subscription {
    Subscription {
        id: subscription_topic(matcher, &active.subscriber),
        r#type: "subscription",
        match_type: matcher.match_type.map_or("exact", MatchType::name),
        r#match: matcher.text.clone(),
        subscriber: active.subscriber.clone(),
        active: is_active,
        payload: matcher.payload.clone(),
    }
}

/// The caller's verified token (the API always needs one) and the hub's URL.
fn caller(
    state: &AppState,
    headers: &HeaderMap,
    uri: &Uri,
    raw: Option<&str>,
) -> Result<(Claims, Url), ApiError> {
    let Some(verifier) = &state.config().subscriber else {
        return Err(ApiError::unauthorized("the subscription API needs a subscriber key"));
    };
    let query_token = query_token(raw)?;
    let (token, source) = find_token(headers, query_token.as_deref(), Protocol::Draft07)?
        .ok_or_else(|| ApiError::unauthorized("a subscriber token is required"))?;
    let hub = hub_url(state.config(), headers, uri);
    let claims = verifier.verify(&token, &hub)?;
    if claims.kind == TokenKind::Access && source == TokenSource::Query {
        return Err(ApiError::invalid_request("an access token cannot be sent in the URL"));
    }
    Ok((claims, hub))
}

/// Which subscriptions a request asks for.
#[derive(Default)]
struct Filter<'a> {
    match_type: Option<MatchType>,
    matcher: Option<&'a str>,
    subscriber: Option<&'a str>,
}

/// The connected subscriptions of `protocol` the filter selects, as `(matcher, subscription)`.
fn selected(
    state: &AppState,
    protocol: Protocol,
    filter: &Filter<'_>,
) -> Vec<(ActiveMatcher, ActiveSubscription)> {
    let mut found = Vec::new();
    for active in state.active_subscriptions() {
        if active.protocol != protocol || filter.subscriber.is_some_and(|s| s != active.subscriber)
        {
            continue;
        }
        for matcher in &active.matchers {
            let type_ok = filter.match_type.is_none_or(|t| matcher.match_type == Some(t));
            if type_ok && filter.matcher.is_none_or(|m| m == matcher.text) {
                found.push((matcher.clone(), active.clone()));
            }
        }
    }
    found
}

fn last_event_id(state: &AppState) -> String {
    state.hub().last_event_id().unwrap_or_else(|| "earliest".to_owned())
}

/// Draft-07: the subscriptions whose topics the token grants, as JSON-LD.
fn draft07_response(
    state: &AppState,
    claims: &Claims,
    filter: &Filter<'_>,
    id: String,
    one: bool,
) -> Result<Response, ApiError> {
    let mut documents: Vec<SubscriptionLd> = selected(state, Protocol::Draft07, filter)
        .iter()
        .map(|(matcher, active)| draft07_document(matcher, active, true))
        .filter(|document| claims.may_subscribe(&document.id))
        .collect();
    let json_ld = |value: Value| {
        ([(header::CONTENT_TYPE, "application/ld+json")], value.to_string()).into_response()
    };
    if one {
        let mut document = documents.pop().ok_or_else(no_such_subscription)?;
        document.last_event_id = Some(last_event_id(state));
        return Ok(json_ld(json!(document)));
    }
    Ok(json_ld(json!(SubscriptionsLd {
        context: "https://mercure.rocks/",
        id,
        r#type: "Subscriptions",
        last_event_id: last_event_id(state),
        subscriptions: documents,
    })))
}

/// Draft-08: the request's own path must be granted; the documents are plain JSON, and the
/// last event id rides on the `Link` header.
fn draft08_response(
    state: &AppState,
    claims: &Claims,
    hub: &Url,
    uri: &Uri,
    filter: &Filter<'_>,
    one: bool,
) -> Result<Response, ApiError> {
    let path = uri.path();
    if !claims.may_subscribe(path) {
        return Err(ApiError::insufficient_scope(format!(
            "the token does not grant subscribe on {path}"
        )));
    }
    let mut documents: Vec<Subscription> = selected(state, Protocol::Draft08, filter)
        .iter()
        .map(|(matcher, active)| draft08_document(matcher, active, true))
        .collect();
    let body = if one {
        json!(documents.pop().ok_or_else(no_such_subscription)?)
    } else {
        json!(Subscriptions {
            id: path.to_owned(),
            r#type: "subscriptions",
            subscriptions: documents
        })
    };
    let quoted = last_event_id(state).replace('\\', "\\\\").replace('"', "\\\"");
    let link = format!(
        r#"<{hub}>; rel="mercure"; last-event-id="{quoted}"; type="mercure"; content-type="application/json""#
    );
    let mut response =
        ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if let Ok(link) = HeaderValue::from_bytes(link.as_bytes()) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("must-revalidate"));
    Ok(response)
}

fn no_such_subscription() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such active subscription")
}

/// The active subscriptions the token may see: draft-08 ones for an access token (JSON),
/// draft-07 ones for a draft-07 token (JSON-LD).
#[utoipa::path(get, path = "/.well-known/mercure/subscriptions", tag = "hub",
    params(("authorization" = Option<String>, Query, description = "A draft-07 subscriber JWT, when no header or cookie can carry it")),
    responses((status = 200, description = "Subscriptions: JSON-LD for a draft-07 token, JSON (with a Link: rel=\"mercure\" header holding last-event-id) for an access token", content_type = "application/ld+json", body = SubscriptionsLd),
              (status = 400, description = "A malformed query or Authorization header, or an access_token parameter", body = ErrorBody),
              (status = 401, description = "No valid subscriber token", body = ErrorBody),
              (status = 403, description = "The access token does not grant subscribe on this URL", body = ErrorBody)),
    security(("mercure_jwt" = []), ("mercure_access_token" = [])))]
pub(crate) async fn list_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (claims, hub) = caller(&state, &headers, &uri, raw.as_deref())?;
    let filter = Filter::default();
    match claims.kind {
        TokenKind::Access => draft08_response(&state, &claims, &hub, &uri, &filter, false),
        TokenKind::Draft07 => {
            draft07_response(&state, &claims, &filter, SUBSCRIPTIONS_PATH.to_owned(), false)
        }
    }
}

/// The active draft-07 subscriptions to one topic selector (JSON-LD).
#[utoipa::path(get, path = "/.well-known/mercure/subscriptions/{topic}", tag = "hub",
    params(("topic" = String, Path, description = "The selector, URL-encoded"),
           ("authorization" = Option<String>, Query, description = "A draft-07 subscriber JWT, when no header or cookie can carry it")),
    responses((status = 200, description = "Subscriptions", content_type = "application/ld+json", body = SubscriptionsLd),
              (status = 400, description = "A malformed query or Authorization header, or an access_token parameter", body = ErrorBody),
              (status = 401, description = "No valid subscriber token", body = ErrorBody)),
    security(("mercure_jwt" = [])))]
pub(crate) async fn list_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (claims, _) = caller(&state, &headers, &uri, raw.as_deref())?;
    let filter = Filter { matcher: Some(&topic), ..Filter::default() };
    let id = format!("{SUBSCRIPTIONS_PATH}/{}", encode_component(&topic));
    draft07_response(&state, &claims, &filter, id, false)
}

/// With an access token and a matcher type first: the draft-08 subscriptions to one matcher
/// (JSON). Otherwise draft-07's one subscription of a topic selector by a subscriber.
#[utoipa::path(get, path = "/.well-known/mercure/subscriptions/{first}/{second}", tag = "hub",
    params(("first" = String, Path, description = "Draft-08: the matcher type (exact or urlpattern). Draft-07: the topic selector, URL-encoded"),
           ("second" = String, Path, description = "Draft-08: the matcher, URL-encoded. Draft-07: the subscriber id, URL-encoded"),
           ("authorization" = Option<String>, Query, description = "A draft-07 subscriber JWT, when no header or cookie can carry it")),
    responses((status = 200, description = "Draft-08: the subscriptions to the matcher (JSON, Link: rel=\"mercure\" with last-event-id). Draft-07: the subscription (JSON-LD)", content_type = "application/json", body = Subscriptions),
              (status = 400, description = "A malformed query or Authorization header, or an access_token parameter", body = ErrorBody),
              (status = 401, description = "No valid subscriber token", body = ErrorBody),
              (status = 403, description = "The access token does not grant subscribe on this URL", body = ErrorBody),
              (status = 404, description = "Draft-07: no such active subscription", body = ErrorBody)),
    security(("mercure_jwt" = []), ("mercure_access_token" = [])))]
pub(crate) async fn list_matcher(
    State(state): State<AppState>,
    Path((first, second)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (claims, hub) = caller(&state, &headers, &uri, raw.as_deref())?;
    match (claims.kind, MatchType::from_name(&first)) {
        (TokenKind::Access, Some(match_type)) => {
            let filter =
                Filter { match_type: Some(match_type), matcher: Some(&second), subscriber: None };
            draft08_response(&state, &claims, &hub, &uri, &filter, false)
        }
        _ => {
            let filter =
                Filter { matcher: Some(&first), subscriber: Some(&second), ..Filter::default() };
            draft07_response(&state, &claims, &filter, String::new(), true)
        }
    }
}

/// One active draft-08 subscription (JSON).
#[utoipa::path(get, path = "/.well-known/mercure/subscriptions/{match_type}/{match}/{subscriber}", tag = "hub",
    params(("match_type" = String, Path, description = "exact or urlpattern"),
           ("match" = String, Path, description = "The matcher, URL-encoded"),
           ("subscriber" = String, Path, description = "The subscriber id, URL-encoded")),
    responses((status = 200, description = "The subscription (with a Link: rel=\"mercure\" header holding last-event-id)", content_type = "application/json", body = Subscription),
              (status = 400, description = "A malformed Authorization header, or an access_token parameter", body = ErrorBody),
              (status = 401, description = "No valid subscriber token", body = ErrorBody),
              (status = 403, description = "The token does not grant subscribe on this URL", body = ErrorBody),
              (status = 404, description = "No such active subscription", body = ErrorBody)),
    security(("mercure_access_token" = [])))]
pub(crate) async fn show_one(
    State(state): State<AppState>,
    Path((match_type, matcher, subscriber)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let (claims, hub) = caller(&state, &headers, &uri, raw.as_deref())?;
    let match_type = MatchType::from_name(&match_type).ok_or_else(no_such_subscription)?;
    let filter = Filter {
        match_type: Some(match_type),
        matcher: Some(&matcher),
        subscriber: Some(&subscriber),
    };
    draft08_response(&state, &claims, &hub, &uri, &filter, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_topics_encode_each_segment_once() {
        let matcher = ActiveMatcher {
            match_type: Some(MatchType::Urlpattern),
            text: "https://example.com/:selector".into(),
            payload: Value::Null,
        };
        let topic = subscription_topic(&matcher, "urn:uuid:bb3de268-05b0-4c65-b44e-8f9acefc29d6");
        assert_eq!(
            topic,
            "/.well-known/mercure/subscriptions/urlpattern/https%3A%2F%2Fexample.com%2F%3Aselector/\
             urn%3Auuid%3Abb3de268-05b0-4c65-b44e-8f9acefc29d6"
        );
        let percent = ActiveMatcher { text: "a%20b".into(), match_type: None, ..matcher };
        assert_eq!(subscription_topic(&percent, "s"), format!("{SUBSCRIPTIONS_PATH}/a%2520b/s"));
        // The hub keeps these events out of its window of recent updates by this prefix.
        for topic in [topic, subscription_topic(&percent, "s")] {
            assert!(topic.starts_with(sluice_hub::SUBSCRIPTIONS_TOPIC_PREFIX), "{topic}");
        }
    }
}
