//! The admin API, guarded by the admin key (`--admin-key`): API keys made at run time
//! (`POST /admin/keys`, which shows the key once; `GET /admin/keys`, never a secret;
//! `DELETE /admin/keys/{name}`) and what every key and every end user's subject used
//! (`GET /admin/usage`). Keys made here
//! live in the store, so every node sharing it knows them; keys of `sluice.toml` are listed
//! but cannot be revoked here (the file would bring them back).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_hub::{KeyLimits, KeyRecord, StoreError};
use subtle::ConstantTimeEq;

use crate::api_schema::AdminRefusals;
use crate::error::{ApiError, store_error};
use crate::gateway::chat_completions::wire::whole_number;
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(list).post(create))
        .route("/admin/keys/{name}", delete(revoke))
        .route("/admin/usage", get(usage))
}

/// Refuses a request without the admin key: 401 without credentials, 404 with some when
/// there is no admin API at all.
fn guard(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let refused = || {
        metrics::counter!("sluice_auth_failures_total").increment(1);
        ApiError::unauthorized("the admin API needs the admin key (Authorization: Bearer)")
    };
    let Some(presented) = crate::admission::presented_key(headers) else {
        return Err(refused());
    };
    let Some(admin_key) = &state.config().admin_key else {
        return Err(ApiError::not_found("the admin API is off: start with --admin-key"));
    };
    if bool::from(crate::keys::hash(presented).ct_eq(&crate::keys::hash(admin_key))) {
        return Ok(());
    }
    Err(refused())
}

/// A key to make: its name and limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default, deserialize_with = "whole_number")]
    requests_per_minute: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    tokens_per_minute: Option<u64>,
    #[serde(default, deserialize_with = "whole_number")]
    token_budget: Option<u64>,
    #[serde(default)]
    budget_period: sluice_hub::BudgetPeriod,
    /// Seconds until it stops working.
    #[serde(default, deserialize_with = "whole_number")]
    expires_in: Option<u64>,
}

/// A key as the admin API shows it: never its hash.
fn shown(key: &KeyRecord, source: &str) -> Value {
    json!({
        "id": key.id, "name": key.name, "prefix": key.prefix, "source": source,
        "models": key.limits.models,
        "requests_per_minute": key.limits.requests_per_minute,
        "tokens_per_minute": key.limits.tokens_per_minute,
        "token_budget": key.limits.token_budget,
        "budget_period": key.limits.budget_period,
        "created_ms": key.created_ms, "expires_ms": key.expires_ms,
    })
}

/// Makes a key with these limits; the key is in the answer, and only there.
#[utoipa::path(post, path = "/admin/keys", operation_id = "create_key", tag = "admin",
    request_body(content = doc::NewKey, content_type = "application/json",
        description = "The key's name and limits"),
    responses(
        (status = 201, description = "The key made, with the key itself (shown this once)", body = doc::MadeKey),
        (status = 400, description = "A malformed body or name", body = crate::error::ErrorBody),
        (status = 409, description = "A key with this name exists", body = crate::error::ErrorBody),
        AdminRefusals,
    ),
    security(("admin_key" = [])))]
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    let new: NewKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid request body: {e}")))?;
    let name = new.name.as_str();
    if !is_key_name(name) {
        let message = "name: 1 to 128 letters, digits, `.`, `_` or `-`";
        return Err(ApiError::bad_request("invalid_request", message).with_param("name"));
    }
    if state.admission().keys().configured().iter().any(|k| k.name == name) {
        return Err(taken(name));
    }
    let key =
        format!("sk-sluice-{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let now = sluice_hub::now_ms();
    let record = KeyRecord {
        id: format!("key_{}", uuid::Uuid::new_v4().simple()),
        name: name.to_owned(),
        hash: crate::keys::hash(&key),
        prefix: key[..14].to_owned(),
        limits: KeyLimits {
            models: new.models,
            requests_per_minute: new.requests_per_minute,
            tokens_per_minute: new.tokens_per_minute,
            token_budget: new.token_budget,
            budget_period: new.budget_period,
        },
        created_ms: now,
        expires_ms: new.expires_in.map(|s| now.saturating_add(s.saturating_mul(1000))),
        revoked_ms: None,
    };
    match state.hub().store().ledger().put_key(record.clone()).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => return Err(taken(name)),
        Err(error) => return Err(store_error(error)),
    }
    let mut body = shown(&record, "admin");
    body["key"] = Value::String(key);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// Whether `name` may name a key made here: it goes in URLs (`/admin/keys/{name}`) and in
/// the metrics' `key` label as it is, so it is kept to characters that need no escaping.
fn is_key_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn taken(name: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "name_taken", format!("a key named {name} exists"))
        .with_param("name")
}

/// Every live key: those of the settings and those made here, never a key or its hash.
#[utoipa::path(get, path = "/admin/keys", operation_id = "list_keys", tag = "admin",
    responses((status = 200, description = "The keys", body = doc::KeyList), AdminRefusals),
    security(("admin_key" = [])))]
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    let configured = state.admission().keys().configured().iter().map(|k| shown(k, "config"));
    let stored = state.hub().store().ledger().keys().await.map_err(store_error)?;
    let live = stored.iter().filter(|k| k.revoked_ms.is_none()).map(|k| shown(k, "admin"));
    Ok(axum::Json(json!({"keys": configured.chain(live).collect::<Vec<_>>()})).into_response())
}

/// Revokes a key made through this API (a key of the settings file is removed there).
#[utoipa::path(delete, path = "/admin/keys/{name}", operation_id = "revoke_key", tag = "admin",
    params(("name" = String, Path, description = "The key's name")),
    responses(
        (status = 204, description = "Revoked: it is refused from now on, on every node"),
        (status = 409, description = "The key comes from the settings file", body = crate::error::ErrorBody),
        AdminRefusals,
    ),
    security(("admin_key" = [])))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    if state.admission().keys().configured().iter().any(|k| k.name == name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "configured_key",
            format!("the key {name} comes from the settings file: remove it there"),
        ));
    }
    let ledger = state.hub().store().ledger();
    let keys = ledger.keys().await.map_err(store_error)?;
    let Some(key) = keys.iter().find(|k| k.name == name && k.revoked_ms.is_none()) else {
        return Err(ApiError::not_found(format!("no key is named {name}")));
    };
    ledger.revoke_key(&key.id, sluice_hub::now_ms()).await.map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What every key and every end user's subject used.
#[utoipa::path(get, path = "/admin/usage", operation_id = "usage", tag = "admin",
    responses((status = 200, description = "Usage per key and per subject", body = doc::Usage), AdminRefusals),
    security(("admin_key" = [])))]
pub(crate) async fn usage(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    let ledger = state.hub().store().ledger();
    let stored = ledger.keys().await.map_err(store_error)?;
    let names: HashMap<&str, &str> = state
        .admission()
        .keys()
        .configured()
        .iter()
        .chain(&stored)
        .map(|k| (k.id.as_str(), k.name.as_str()))
        .collect();
    let mut usage = ledger.usage().await.map_err(store_error)?;
    usage.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut keys, mut subjects) = (Vec::new(), Vec::new());
    for (id, used) in &usage {
        let mut shown = json!({
            "id": id,
            "requests": used.requests,
            "prompt_tokens": used.prompt_tokens,
            "completion_tokens": used.completion_tokens,
            "cancelled": used.cancelled,
            "cancelled_tokens": used.cancelled_tokens,
            "period_tokens": used.period_tokens,
            "minute_requests": used.minute_requests,
            "minute_tokens": used.minute_tokens,
        });
        if let Some(subject) = id.strip_prefix(crate::end_users::SUBJECT_PREFIX) {
            shown["subject"] = json!(subject);
            subjects.push(shown);
        } else {
            shown["name"] = json!(names.get(id.as_str()));
            keys.push(shown);
        }
    }
    Ok(axum::Json(json!({"keys": keys, "subjects": subjects})).into_response())
}

/// The admin API's bodies, for the OpenAPI document.
pub(crate) mod doc {
    use serde_json::{Map, Value, json};

    use crate::api_schema::written_schema;

    /// `properties` as a JSON object's map.
    fn object(properties: Value) -> Map<String, Value> {
        match properties {
            Value::Object(map) => map,
            _ => unreachable!("properties are an object"),
        }
    }

    /// The limits a key is made with and shown with (`null`: no limit).
    pub(super) fn limits() -> Map<String, Value> {
        let count = json!({"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX});
        object(json!({
            "models": {"type": "array", "items": {"type": "string"},
                "description": "The models it may use; empty: every model"},
            "requests_per_minute": count,
            "tokens_per_minute": count,
            "token_budget": count,
            "budget_period": {"enum": ["day", "month"],
                "description": "The budget's period, a UTC calendar day or month"},
        }))
    }

    /// A key as it is shown; `with_key`: just made, with the key itself.
    pub(super) fn shown(with_key: bool) -> Value {
        let mut properties = limits();
        properties.extend(object(json!({
            "id": {"type": "string"},
            "name": {"type": "string"},
            "prefix": {"type": "string", "description": "The key's first characters"},
            "source": {"enum": ["config", "admin"]},
            "created_ms": {"type": "integer", "description": "ms since the epoch"},
            "expires_ms": {"type": ["integer", "null"], "description": "ms since the epoch"},
        })));
        let mut required = vec!["id", "name", "prefix", "source", "models", "created_ms"];
        if with_key {
            properties.insert("key".into(), json!({"type": "string"}));
            required.push("key");
        }
        json!({"type": "object", "required": required, "properties": properties})
    }

    /// What one key or subject used, named by `who`.
    pub(super) fn used(who: &str, who_schema: Value) -> Value {
        let counts = [
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "cancelled",
            "cancelled_tokens",
            "period_tokens",
            "minute_requests",
            "minute_tokens",
        ];
        let mut properties: Map<String, Value> = counts
            .iter()
            .map(|c| ((*c).to_owned(), json!({"type": "integer", "minimum": 0})))
            .collect();
        properties.insert("id".into(), json!({"type": "string"}));
        properties.insert(who.into(), who_schema);
        let required: Vec<&str> = counts.iter().copied().chain(["id", who]).collect();
        json!({"type": "object", "required": required, "properties": properties})
    }

    /// `POST /admin/keys`'s body.
    pub(super) fn new_key() -> Value {
        let mut properties = limits();
        properties.extend(object(json!({
            "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$",
                "description": "1 to 128 letters, digits, `.`, `_` or `-`"},
            "expires_in": {"type": ["integer", "null"], "minimum": 0, "maximum": u64::MAX,
                "description": "Seconds until it stops working"},
        })));
        json!({"type": "object", "required": ["name"], "additionalProperties": false,
            "properties": properties})
    }

    written_schema!(
        /// `POST /admin/keys`'s body.
        NewKey,
        new_key()
    );
    written_schema!(
        /// A key just made, with the key.
        MadeKey,
        shown(true)
    );
    written_schema!(
        /// `GET /admin/keys`'s answer.
        KeyList,
        json!({"type": "object", "required": ["keys"],
            "properties": {"keys": {"type": "array", "items": shown(false)}}})
    );
    written_schema!(
        /// `GET /admin/usage`'s answer.
        Usage,
        json!({"type": "object", "required": ["keys", "subjects"], "properties": {
            "keys": {"type": "array", "items": used("name", json!({"type": ["string", "null"]}))},
            "subjects": {"type": "array", "items": used("subject", json!({"type": "string"}))},
        }})
    );
}
