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
        crate::ops::render_metrics,
        crate::ops::healthz,
        crate::ops::readyz,
    ),
    tags((name = "hub", description = "Mercure publish and subscribe"),
         (name = "ops", description = "Health and metrics"))
)]
struct ApiDoc;

/// The OpenAPI document.
pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
