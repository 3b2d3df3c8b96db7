//! Pieces of the OpenAPI document that the routes' annotations share: schemas written out in
//! JSON Schema (for bodies read by hand), and the sets of refusals many operations answer. A
//! leaf module, so that the routes can use them and `openapi` can list the routes.

/// A schema written out in JSON Schema, for the bodies whose handlers read JSON by hand: it
/// says what they accept in words utoipa's model lacks (`const`, `not`, lists of types).
pub(crate) fn written(
    schema: serde_json::Value,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType};
    let serde_json::Value::Object(keywords) = schema else {
        panic!("a written schema is a JSON object");
    };
    // Extensions are written as they are, flattened into the schema object.
    let keywords = keywords.into_iter().collect::<utoipa::openapi::extensions::Extensions>();
    ObjectBuilder::new().schema_type(SchemaType::AnyValue).extensions(Some(keywords)).into()
}

/// A type for the document only, whose schema [`written`] gives.
macro_rules! written_schema {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::api_schema::written($schema)
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}
pub(crate) use written_schema;

/// The refusals of an operation that takes a body for a model: before the model answers.
const BODY_REFUSALS: &[(&str, &str)] = &[
    ("400", "A malformed request"),
    ("401", "A missing or wrong API key"),
    ("403", "The API key may not use the model"),
    ("404", "No provider serves the model"),
    ("408", "The request body stalled"),
    ("413", "The request body is too large"),
    ("429", "Rate limited, the key at a limit or its budget, or the model busy (Retry-After)"),
];

/// The refusals of an operation on a stored answer.
const STORE_REFUSALS: &[(&str, &str)] = &[
    ("401", "A missing or wrong API key"),
    ("429", "Rate limited (Retry-After)"),
    ("503", "The store is unavailable"),
];

/// The failures of an operation that starts a stored answer (the upstream is asked after).
const UPSTREAM_FAILURES: &[(&str, &str)] = &[
    ("502", "The upstream failed before answering"),
    ("503", "The store is unavailable"),
    ("504", "The upstream did not answer in time"),
];

/// `statuses`, each answered with the error body the schema `body` names.
fn refusals(
    body: &str,
    statuses: &[(&str, &str)],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>
{
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let content = || ContentBuilder::new().schema(Some(Ref::from_schema_name(body))).build();
    statuses
        .iter()
        .map(|(status, description)| {
            let response = ResponseBuilder::new()
                .description(*description)
                .content("application/json", content())
                .build();
            ((*status).to_owned(), response.into())
        })
        .collect()
}

/// A set of responses for `responses(...)`: `statuses` with the error body `body` names.
macro_rules! refusal_set {
    ($(#[$doc:meta])* $name:ident, $body:literal, $statuses:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                refusals($body, $statuses)
            }
        }
    };
}

refusal_set!(
    /// [`BODY_REFUSALS`] with OpenAI's error body.
    BodyRefusals,
    "ErrorBody",
    BODY_REFUSALS
);
refusal_set!(
    /// [`BODY_REFUSALS`] with Anthropic's error body.
    AnthropicBodyRefusals,
    "AnthropicError",
    BODY_REFUSALS
);
refusal_set!(
    /// [`STORE_REFUSALS`] with OpenAI's error body.
    StoreRefusals,
    "ErrorBody",
    STORE_REFUSALS
);
refusal_set!(
    /// [`UPSTREAM_FAILURES`] with OpenAI's error body.
    UpstreamFailures,
    "ErrorBody",
    UPSTREAM_FAILURES
);

/// The refusals of every admin operation.
const ADMIN_REFUSALS: &[(&str, &str)] = &[
    ("401", "A missing or wrong admin key"),
    ("404", "The admin API is off (no --admin-key), or no such key"),
    ("503", "The store is unavailable"),
];

refusal_set!(
    /// [`ADMIN_REFUSALS`] with OpenAI's error body.
    AdminRefusals,
    "ErrorBody",
    ADMIN_REFUSALS
);
