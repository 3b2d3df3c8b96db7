//! Draft-08's OAuth 2.0 Protected Resource Metadata (RFC 9728) for the hub: how a client
//! learns which tokens the hub takes, where, and what it supports. Its presence is also how a
//! client tells a draft-08 hub from an earlier one.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use serde::Serialize;

use super::hub_url;
use crate::auth::ACCESS_COOKIE_NAME;
use crate::grants::DETAIL_TYPE;
use crate::state::AppState;

/// Where the metadata of the hub at `/.well-known/mercure` is.
pub(super) const PATH: &str = "/.well-known/oauth-protected-resource/.well-known/mercure";

/// The hub as an OAuth 2.0 protected resource.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ProtectedResource {
    /// The hub's resource identifier: the audience its access tokens name.
    resource: String,
    /// Always `["https://mercure.rocks/authorization-detail"]`.
    authorization_details_types_supported: [&'static str; 1],
    /// Always `["header"]` (the cookie is a Mercure extension, named below).
    bearer_methods_supported: [&'static str; 1],
    /// The cookie that may carry the access token.
    mercure_cookie: &'static str,
    /// Always `["exact", "urlpattern"]`.
    mercure_matcher_types_supported: [&'static str; 2],
    /// Whether subscription events and the subscription API are on.
    mercure_subscriptions: bool,
}

/// The hub's protected resource metadata (RFC 9728).
#[utoipa::path(get, path = "/.well-known/oauth-protected-resource/.well-known/mercure", tag = "hub",
    responses((status = 200, description = "The metadata", content_type = "application/json", body = ProtectedResource)))]
pub(crate) async fn protected_resource(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Json<ProtectedResource> {
    let config = state.config();
    let resource = config
        .publisher
        .as_ref()
        .or(config.subscriber.as_ref())
        .and_then(|verifier| verifier.audience().map(str::to_owned))
        .unwrap_or_else(|| hub_url(config, &headers, &uri).to_string());
    Json(ProtectedResource {
        resource,
        authorization_details_types_supported: [DETAIL_TYPE],
        bearer_methods_supported: ["header"],
        mercure_cookie: ACCESS_COOKIE_NAME,
        mercure_matcher_types_supported: ["exact", "urlpattern"],
        mercure_subscriptions: config.subscription_events,
    })
}
