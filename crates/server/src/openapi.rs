//! The OpenAPI document served at `/openapi.json`, generated from the route annotations.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice", description = "Server-Sent Events hub (Mercure draft-07) and AI streaming gateway."),
    paths(
        crate::mercure::subscribe,
        crate::mercure::publish,
        crate::mercure::list_all,
        crate::mercure::list_topic,
        crate::mercure::show_one,
        crate::openai::chat_completions,
        crate::openai::models,
        crate::generations::create,
        crate::generations::events,
        crate::generations::cancel,
        crate::generations::one_shot,
        crate::ops::render_metrics,
        crate::ops::healthz,
        crate::ops::readyz,
    ),
    tags((name = "hub", description = "Mercure publish and subscribe"),
         (name = "gateway", description = "OpenAI-compatible chat completions"),
         (name = "answers", description = "Resumable answers"),
         (name = "ops", description = "Health and metrics"))
)]
struct ApiDoc;

/// The OpenAPI document.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
