//! The OpenAPI document served at `/openapi.json`, generated from the route annotations: every
//! request body, parameter, response and error is described, with the security schemes, so
//! that a client generator (or schemathesis) can take it as the contract.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Server-Sent Events hub (Mercure draft-07 and draft-08) and AI streaming gateway."),
    paths(
        crate::mercure::subscribe,
        crate::mercure::publish,
        crate::mercure::list_all,
        crate::mercure::list_topic,
        crate::mercure::list_matcher,
        crate::mercure::show_one,
        crate::mercure::protected_resource,
        crate::gateway::chat_completions::chat_completions,
        crate::gateway::chat_completions::models,
        crate::gateway::generations::create,
        crate::gateway::generations::events,
        crate::gateway::generations::cancel,
        crate::gateway::chat_stream::one_shot,
        crate::gateway::responses::create,
        crate::gateway::responses::retrieve,
        crate::gateway::responses::cancel,
        crate::gateway::messages::messages,
        crate::gateway::messages::count_tokens,
        crate::gateway::ui_stream::chat,
        crate::gateway::ui_stream::resume,
        crate::gateway::ui_stream::stop,
        crate::admin::create,
        crate::admin::list,
        crate::admin::revoke,
        crate::admin::usage,
        crate::ops::render_metrics,
        crate::ops::healthz,
        crate::ops::readyz,
    ),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail,
        crate::gateway::ui_stream::doc::ChatId, crate::gateway::messages::doc::AnthropicError)),
    modifiers(&SecuritySchemes),
    tags((name = "hub", description = "Mercure publish and subscribe"),
         (name = "gateway", description = "OpenAI-compatible chat completions"),
         (name = "answers", description = "Resumable answers"),
         (name = "responses", description = "OpenAI's Responses API: stored, resumable, cancellable responses"),
         (name = "messages", description = "Anthropic's Messages API (errors in Anthropic's shape)"),
         (name = "ui-chat", description = "The AI SDK's UI message stream (useChat): resume and stop"),
         (name = "admin", description = "API keys made at run time, and usage (with --admin-key)"),
         (name = "ops", description = "Health and metrics"))
)]
struct ApiDoc;

/// The ways a client proves who it is.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "mercure_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A Mercure JWT with `mercure.publish` / `mercure.subscribe` claims; also \
                         accepted in the `authorization` query parameter or the \
                         `mercureAuthorization` cookie",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "mercure_access_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A draft-08 OAuth access token (RFC 9068, `typ: at+jwt`) whose                          `authorization_details` grant `publish` / `subscribe` on topic                          matchers; also accepted in the `__Secure-mercure_access_token` cookie,                          never in the URL",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "mercure_cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new("mercureAuthorization"))),
        );
        components.add_security_scheme(
            "admin_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin key (--admin-key)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A gateway API key, when the server is configured with keys; or, with \
                         --chat-audience, an end-user token (a JWT with `sub`, `aud`, `exp` and \
                         a `sluice.chat` claim), also accepted in `x-api-key` or the \
                         `sluiceChatToken` cookie",
                    ))
                    .build(),
            ),
        );
    }
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi))
}

async fn openapi() -> Response {
    axum::Json(document()).into_response()
}

/// The OpenAPI document.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn every_operation_has_its_own_id_and_the_gateway_protocols_and_admin_api_are_documented() {
        let document = serde_json::to_value(super::document()).unwrap();
        let mut ids = HashSet::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                assert!(ids.insert(id.clone()), "{method} {path}: operationId {id} twice");
            }
        }
        for (path, method) in [
            ("/admin/keys", "post"),
            ("/admin/keys", "get"),
            ("/admin/keys/{name}", "delete"),
            ("/admin/usage", "get"),
        ] {
            let operation = &document["paths"][path][method];
            assert_eq!(operation["security"][0]["admin_key"], serde_json::json!([]), "{path}");
            assert!(operation["responses"]["401"].is_object(), "{method} {path}");
        }
        for (path, method) in [
            ("/v1/responses", "post"),
            ("/v1/responses/{id}", "get"),
            ("/v1/responses/{id}/cancel", "post"),
            ("/v1/messages", "post"),
            ("/v1/messages/count_tokens", "post"),
            ("/api/chat", "post"),
            ("/api/chat/{id}/stream", "get"),
            ("/api/chat/{id}/stop", "post"),
        ] {
            let operation = &document["paths"][path][method];
            assert_eq!(operation["security"][1]["api_key"], serde_json::json!([]), "{path}");
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    let name = schema.as_str().unwrap().rsplit('/').next().unwrap();
                    assert!(document["components"]["schemas"][name].is_object(), "{path} {status}");
                }
            }
        }
    }
}
