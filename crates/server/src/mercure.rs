//! The Mercure draft-07 routes: subscribe, publish, and the subscription API.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use serde_json::{Value, json};
use sluice_hub::{
    Cursor, Draft, Hangup, LimitError, PublishError, RESERVED_TOPIC_PREFIX, Selector, StoreError,
    SubscribeError, SubscribeRequest,
};

use crate::answers::store_unavailable;
use crate::auth::{Claims, TokenSource, find_token};
use crate::conn::{ClientAddr, ConnHandle};
use crate::error::{ApiError, ErrorBody};
use crate::sse::{event_stream, opening};
use crate::state::{ActiveSubscription, AppState};

/// The hub's URL path.
pub const HUB_PATH: &str = "/.well-known/mercure";
const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(HUB_PATH, get(subscribe).post(publish))
        .route(SUBSCRIPTIONS_PATH, get(list_all))
        .route("/.well-known/mercure/subscriptions/{topic}", get(list_topic))
        .route("/.well-known/mercure/subscriptions/{topic}/{subscriber}", get(show_one))
}

/// The query parameters of a subscription, with `topic` repeatable.
#[derive(Debug, Default)]
struct SubscribeQuery {
    topics: Vec<String>,
    last_event_id: Option<String>,
    authorization: Option<String>,
}

fn parse_query(raw: Option<&str>) -> Result<SubscribeQuery, ApiError> {
    let mut query = SubscribeQuery::default();
    for (key, value) in crate::form::parse(raw.unwrap_or_default().as_bytes())? {
        match &*key {
            "topic" => query.topics.push(value),
            "lastEventID" => query.last_event_id = Some(value),
            "authorization" => query.authorization = Some(value),
            _ => {}
        }
    }
    Ok(query)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, as topic IRIs are encoded
/// inside subscription URLs.
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

fn subscription_topic(topic: &str, subscriber: &str) -> String {
    format!("{SUBSCRIPTIONS_PATH}/{}/{}", encode_component(topic), encode_component(subscriber))
}

fn selects(selector: &Selector, topic: &str) -> bool {
    selector.exact() == Some(topic) || selector.matches(topic)
}

/// The verified claims of the request's token, `None` for an anonymous subscriber.
fn subscriber_claims(
    state: &AppState,
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Result<Option<Claims>, ApiError> {
    let config = state.config();
    match (find_token(headers, query_token), &config.subscriber) {
        (Some((token, _)), Some(verifier)) => Ok(Some(verifier.verify(&token)?)),
        (_, _) if config.anonymous => Ok(None),
        _ => Err(ApiError::unauthorized("a subscriber token is required")),
    }
}

/// Subscribes to updates: an event stream of every update whose topics match.
#[utoipa::path(get, path = "/.well-known/mercure", tag = "hub",
    params(
        ("topic" = Vec<String>, Query, description = "Topic selectors: a topic, a URI template, or *; repeatable", explode = true),
        ("lastEventID" = Option<String>, Query, description = "Resume after this id (the Last-Event-ID header wins); earliest for all history"),
        ("authorization" = Option<String>, Query, description = "A subscriber JWT, when no header or cookie can carry it"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id; earliest for all history"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = crate::sse::SseEvent,
            headers(("Last-Event-ID" = String, description = "When a cursor was sent: the id of the event before the first one sent, or earliest"))),
        (status = 400, description = "No topic, too many topics, an invalid or too large selector", body = ErrorBody),
        (status = 401, description = "A token is required, or the token is invalid or expired", body = ErrorBody),
        (status = 429, description = "Too many subscriptions from this client", body = ErrorBody),
        (status = 503, description = "Shutting down, or the store does not answer (Retry-After)", body = ErrorBody),
    ),
    security((), ("mercure_jwt" = [])))]
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    ConnectInfo(ClientAddr(client)): ConnectInfo<ClientAddr>,
    connection: Option<Extension<ConnHandle>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let query = parse_query(raw.as_deref())?;
    let config = state.config();
    if query.topics.is_empty() {
        return Err(ApiError::bad_request(
            "missing_topic",
            "at least one topic parameter is required",
        ));
    }
    if query.topics.len() > config.max_topics_per_subscription {
        return Err(ApiError::bad_request(
            "too_many_topics",
            format!("at most {} topics per subscription", config.max_topics_per_subscription),
        ));
    }
    let selectors = query
        .topics
        .iter()
        .map(|t| Selector::parse(t))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request("invalid_topic", e.to_string()))?;
    let claims = subscriber_claims(&state, &headers, query.authorization.as_deref())?;
    let slot = state.admission().claim_subscription(client.ip())?;

    let header_cursor = headers
        .get("last-event-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .filter(|v| !v.is_empty());
    let cursor = match header_cursor.or(query.last_event_id) {
        None => Cursor::Live,
        Some(id) if id == "earliest" => Cursor::Earliest,
        Some(id) => Cursor::After(id),
    };
    let (allowed_private, payload, exp) = match claims {
        Some(claims) => (claims.subscribe, claims.payload, claims.exp),
        None => (Vec::new(), None, None),
    };
    // Cut off as too slow, the connection is closed at once, even mid-write.
    let hangup = connection.map(|Extension(connection)| Hangup::new(move || connection.hang_up()));
    let request =
        SubscribeRequest { selectors, allowed_private, cursor, until_event_type: None, hangup };
    let subscription = state.hub().subscribe(request).await.map_err(subscribe_error)?;

    let subscriber = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let active =
        ActiveSubscription { subscriber: subscriber.clone(), topics: query.topics, payload };
    announce(&state, &active, true);
    state.add_active(active);
    let guard = EndGuard { state: state.clone(), subscriber, _slot: slot };

    let deadline = exp.map(|exp| {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
    });
    let mut response = event_stream(
        Some(opening(config.retry)),
        subscription.frames,
        config.keep_alive,
        deadline,
        guard,
    );
    if let Some(resumed) = subscription.resumed_after
        && let Ok(value) = HeaderValue::from_str(&resumed)
    {
        response.headers_mut().insert("last-event-id", value);
    }
    Ok(response)
}

/// Runs when a subscriber's stream ends: it leaves the subscription API, and a subscription
/// event says so.
struct EndGuard {
    state: AppState,
    subscriber: String,
    _slot: crate::admission::ClientSlot,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(active) = self.state.remove_active(&self.subscriber) {
            announce(&self.state, &active, false);
        }
    }
}

/// Publishes a subscription event for each topic of `active` (when enabled and running).
fn announce(state: &AppState, active: &ActiveSubscription, is_active: bool) {
    if !state.config().subscription_events || state.is_shutting_down() {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    for topic in &active.topics {
        let update = Draft {
            topics: vec![subscription_topic(topic, &active.subscriber)],
            private: true,
            ..Draft::new("", json!(subscription_json(topic, active, is_active)).to_string())
        };
        let hub = state.hub().clone();
        runtime.spawn(async move {
            if let Err(error) = hub.publish(update).await {
                tracing::debug!(%error, "subscription event not published");
            }
        });
    }
}

/// A subscription, as the subscription API and subscription events show it (JSON-LD).
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

/// A collection of subscriptions (JSON-LD).
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

fn subscription_json(topic: &str, active: &ActiveSubscription, is_active: bool) -> SubscriptionLd {
    SubscriptionLd {
        context: "https://mercure.rocks/",
        id: subscription_topic(topic, &active.subscriber),
        r#type: "Subscription",
        topic: topic.to_owned(),
        subscriber: active.subscriber.clone(),
        active: is_active,
        payload: active.payload.clone().unwrap_or(Value::Null),
        last_event_id: None,
    }
}

fn store_error(error: StoreError) -> ApiError {
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

fn publish_error(error: PublishError) -> ApiError {
    match error {
        PublishError::NoTopic => ApiError::bad_request("missing_topic", error.to_string()),
        PublishError::ReservedId => ApiError::bad_request("invalid_id", error.to_string()),
        PublishError::Limit(e) => limit_error(&e),
        PublishError::Store(e) => store_error(e),
        other => ApiError::internal(other),
    }
}

/// The form of a publication (draft-07). The topics' and data's limits are the defaults.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)] // a schema for the document only: the form is parsed by `parse_publication`
pub(crate) struct PublishForm {
    /// The topics: the first is canonical, the rest alternates. Repeatable. Topics under
    /// `/.well-known/sluice/` are the hub's own (403).
    #[schema(min_items = 1, max_items = 32)]
    topic: Vec<Topic>,
    /// The event's data (at most 512 KiB).
    #[schema(max_length = 524288, nullable = false)]
    data: Option<String>,
    /// Present (with any value): only authorized subscribers receive it.
    #[schema(nullable = false)]
    private: Option<String>,
    /// The event id; the hub makes one when absent. Not empty, not starting with `#`, no
    /// line break or NUL.
    #[schema(min_length = 1, pattern = r"^[^#\r\n\u0000][^\r\n\u0000]*$", nullable = false)]
    id: Option<String>,
    /// The SSE event type: no line break or NUL.
    #[schema(pattern = r"^[^\r\n\u0000]*$", nullable = false)]
    r#type: Option<String>,
    /// The SSE reconnection time, in milliseconds (digits only).
    #[schema(pattern = "^[0-9]{1,19}$", nullable = false)]
    retry: Option<String>,
}

/// A topic (an IRI, or any text) in the document: at most 1024 characters (the default limit).
#[derive(Debug)]
pub(crate) struct Topic;

impl utoipa::PartialSchema for Topic {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .max_length(Some(sluice_hub::Limits::default().max_topic_length))
            .into()
    }
}

impl utoipa::ToSchema for Topic {}

/// Publishes an update (form fields of draft-07); the response body is its id.
#[utoipa::path(post, path = "/.well-known/mercure", tag = "hub",
    request_body(content = PublishForm, content_type = "application/x-www-form-urlencoded",
        description = "topic (required, repeatable), data, private, id, type, retry"),
    params(("authorization" = Option<String>, Query, description = "A publisher JWT, when no header or cookie can carry it")),
    responses(
        (status = 200, description = "The id of the update", content_type = "text/plain; charset=utf-8", body = String),
        (status = 400, description = "A malformed field, invalid UTF-8, or a topic past the limits", body = ErrorBody),
        (status = 401, description = "No valid publisher token", body = ErrorBody),
        (status = 403, description = "The token may not publish to a topic", body = ErrorBody),
        (status = 408, description = "The request body stalled", body = ErrorBody),
        (status = 409, description = "An update with this id exists", body = ErrorBody),
        (status = 413, description = "The body or the data is too large", body = ErrorBody),
        (status = 415, description = "Not application/x-www-form-urlencoded", body = ErrorBody),
        (status = 503, description = "The store cannot take the update now (Retry-After)", body = ErrorBody),
    ),
    security(("mercure_jwt" = [])))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: Body,
) -> Result<Response, ApiError> {
    let config = state.config();
    let Some(verifier) = &config.publisher else {
        return Err(ApiError::unauthorized(
            "publishing is disabled: the hub has no publisher key (--jwt-secret)",
        ));
    };
    let query_token = parse_query(raw.as_deref())?.authorization;
    let Some((token, source)) = find_token(&headers, query_token.as_deref()) else {
        return Err(ApiError::unauthorized("a publisher token is required"));
    };
    if source == TokenSource::Cookie && !origin_allowed(&headers, &config.publish_origins) {
        return Err(ApiError::forbidden("this origin may not publish with a cookie"));
    }
    let claims = verifier.verify(&token)?;
    let is_form =
        headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "publish with Content-Type: application/x-www-form-urlencoded",
        ));
    }
    let body =
        crate::body::read_body(body, config.max_body_bytes, config.timeouts.request_body).await?;
    let draft = parse_publication(&body, config.max_event_bytes)?;
    for topic in &draft.topics {
        if topic.starts_with(RESERVED_TOPIC_PREFIX) {
            return Err(ApiError::forbidden(format!("topic {topic:?} is reserved for the hub")));
        }
        if !claims.publish.iter().any(|s| selects(s, topic)) {
            return Err(ApiError::forbidden(format!("the token may not publish to {topic:?}")));
        }
    }
    let update = state.hub().publish(draft).await.map_err(publish_error)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], update.id().to_owned())
        .into_response())
}

fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    allowed.iter().any(|a| a == "*" || Some(a.as_str()) == origin)
}

/// The draft-07 form fields: `topic` (repeatable), `data`, `private`, `id`, `type`, `retry`.
pub(crate) fn parse_publication(body: &[u8], max_data: usize) -> Result<Draft, ApiError> {
    let mut draft = Draft { topics: Vec::new(), ..Draft::new("", "") };
    for (key, value) in crate::form::parse(body)? {
        match &*key {
            "topic" => draft.topics.push(value),
            "data" => draft.data = value,
            "private" => draft.private = true,
            "id" => draft.id = Some(value),
            "type" => draft.event_type = Some(value),
            "retry" => {
                draft.retry = Some(value.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_retry",
                        "retry must be a whole number of milliseconds",
                    )
                })?);
            }
            _ => {}
        }
    }
    if draft.topics.is_empty() {
        return Err(ApiError::bad_request("missing_topic", "at least one topic field is required"));
    }
    if draft.data.len() > max_data {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "event_too_large",
            format!("data exceeds {max_data} bytes"),
        ));
    }
    Ok(draft)
}

/// The subscriptions the caller's token may see, filtered by topic and subscriber.
fn visible(
    state: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
    topic: Option<&str>,
    subscriber: Option<&str>,
) -> Result<Vec<SubscriptionLd>, ApiError> {
    if state.config().subscriber.is_none() {
        return Err(ApiError::unauthorized("the subscription API needs a subscriber key"));
    }
    let query_token = parse_query(raw)?.authorization;
    let claims = subscriber_claims(state, headers, query_token.as_deref())?
        .ok_or_else(|| ApiError::unauthorized("a subscriber token is required"))?;
    let mut found = Vec::new();
    for active in state.active_subscriptions() {
        if subscriber.is_some_and(|s| s != active.subscriber) {
            continue;
        }
        for t in active.topics.iter().filter(|t| topic.is_none_or(|want| want == t.as_str())) {
            let id = subscription_topic(t, &active.subscriber);
            if claims.subscribe.iter().any(|s| selects(s, &id)) {
                found.push(subscription_json(t, &active, true));
            }
        }
    }
    Ok(found)
}

fn json_ld(value: &impl Serialize) -> Response {
    ([(header::CONTENT_TYPE, "application/ld+json")], json!(value).to_string()).into_response()
}

fn last_event_id(state: &AppState) -> String {
    state.hub().last_event_id().unwrap_or_else(|| "earliest".to_owned())
}

fn collection(state: &AppState, id: &str, subscriptions: Vec<SubscriptionLd>) -> Response {
    json_ld(&SubscriptionsLd {
        context: "https://mercure.rocks/",
        id: id.to_owned(),
        r#type: "Subscriptions",
        last_event_id: last_event_id(state),
        subscriptions,
    })
}

/// The active subscriptions the token may see (JSON-LD).
#[utoipa::path(get, path = "/.well-known/mercure/subscriptions", tag = "hub",
    params(("authorization" = Option<String>, Query, description = "A subscriber JWT, when no header or cookie can carry it")),
    responses((status = 200, description = "Subscriptions", content_type = "application/ld+json", body = SubscriptionsLd),
              (status = 400, description = "A malformed query", body = ErrorBody),
              (status = 401, description = "No valid subscriber token", body = ErrorBody)),
    security(("mercure_jwt" = [])))]
pub(crate) async fn list_all(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let found = visible(&state, &headers, raw.as_deref(), None, None)?;
    Ok(collection(&state, SUBSCRIPTIONS_PATH, found))
}

/// The active subscriptions to one topic selector (JSON-LD).
#[utoipa::path(get, path = "/.well-known/mercure/subscriptions/{topic}", tag = "hub",
    params(("topic" = String, Path, description = "The selector, URL-encoded"),
           ("authorization" = Option<String>, Query, description = "A subscriber JWT, when no header or cookie can carry it")),
    responses((status = 200, description = "Subscriptions", content_type = "application/ld+json", body = SubscriptionsLd),
              (status = 400, description = "A malformed query", body = ErrorBody),
              (status = 401, description = "No valid subscriber token", body = ErrorBody)),
    security(("mercure_jwt" = [])))]
pub(crate) async fn list_topic(
    State(state): State<AppState>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let found = visible(&state, &headers, raw.as_deref(), Some(&topic), None)?;
    let id = format!("{SUBSCRIPTIONS_PATH}/{}", encode_component(&topic));
    Ok(collection(&state, &id, found))
}

/// One active subscription (JSON-LD).
#[utoipa::path(get, path = "/.well-known/mercure/subscriptions/{topic}/{subscriber}", tag = "hub",
    params(("topic" = String, Path, description = "The selector, URL-encoded"),
           ("subscriber" = String, Path, description = "The subscriber id, URL-encoded"),
           ("authorization" = Option<String>, Query, description = "A subscriber JWT, when no header or cookie can carry it")),
    responses((status = 200, description = "The subscription", content_type = "application/ld+json", body = SubscriptionLd),
              (status = 400, description = "A malformed query", body = ErrorBody),
              (status = 401, description = "No valid subscriber token", body = ErrorBody),
              (status = 404, description = "No such active subscription", body = ErrorBody)),
    security(("mercure_jwt" = [])))]
pub(crate) async fn show_one(
    State(state): State<AppState>,
    Path((topic, subscriber)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut found = visible(&state, &headers, raw.as_deref(), Some(&topic), Some(&subscriber))?;
    let mut one = found.pop().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such active subscription")
    })?;
    one.last_event_id = Some(last_event_id(&state));
    Ok(json_ld(&one))
}
