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

use crate::error::{ApiError, store_error};
use crate::state::AppState;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/keys", get(list).post(create))
        .route("/admin/keys/{name}", delete(revoke))
        .route("/admin/usage", get(usage))
}

/// Refuses a request without the admin key: 404 when there is no admin API at all.
fn guard(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(admin_key) = &state.config().admin_key else {
        return Err(ApiError::not_found("the admin API is off: start with --admin-key"));
    };
    let presented = crate::admission::presented_key(headers).unwrap_or_default();
    if bool::from(crate::keys::hash(presented).ct_eq(&crate::keys::hash(admin_key))) {
        return Ok(());
    }
    metrics::counter!("sluice_auth_failures_total").increment(1);
    Err(ApiError::unauthorized("the admin API needs the admin key (Authorization: Bearer)"))
}

/// A key to make: its name and limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default)]
    models: Vec<String>,
    requests_per_minute: Option<u64>,
    tokens_per_minute: Option<u64>,
    token_budget: Option<u64>,
    #[serde(default)]
    budget_period: sluice_hub::BudgetPeriod,
    /// Seconds until it stops working.
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

async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    let new: NewKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid request body: {e}")))?;
    let name = new.name.trim();
    if name.is_empty() || name.len() > 128 || name.contains('/') {
        let message = "name: 1 to 128 characters, no `/`";
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

fn taken(name: &str) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "name_taken", format!("a key named {name} exists"))
        .with_param("name")
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    guard(&state, &headers)?;
    let configured = state.admission().keys().configured().iter().map(|k| shown(k, "config"));
    let stored = state.hub().store().ledger().keys().await.map_err(store_error)?;
    let live = stored.iter().filter(|k| k.revoked_ms.is_none()).map(|k| shown(k, "admin"));
    Ok(axum::Json(json!({"keys": configured.chain(live).collect::<Vec<_>>()})).into_response())
}

async fn revoke(
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

async fn usage(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
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
