//! An update as a stream entry and back: the JSON written by an append, and the entries of an
//! `XREAD` or `XRANGE` reply read into updates.

use std::sync::Arc;

use redis::Value;
use serde_json::json;

use super::error::backend;
use crate::store::StoreError;
use crate::update::{Draft, Update};

/// The update as stored: everything but its seq and time, which are the entry's.
pub(super) fn encode(draft: &Draft) -> String {
    json!({
        "id": draft.id,
        "topics": draft.topics,
        "data": draft.data,
        "type": draft.event_type,
        "retry": draft.retry,
        "private": draft.private,
    })
    .to_string()
}

fn decode(seq: u64, ms: u64, json: &str) -> Result<Update, StoreError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(backend)?;
    let text = |key: &str| value[key].as_str().map(str::to_owned);
    let topics = value["topics"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let draft = Draft {
        id: text("id"),
        topics,
        data: text("data").unwrap_or_default(),
        event_type: text("type"),
        retry: value["retry"].as_u64(),
        private: value["private"].as_bool().unwrap_or(false),
    };
    Ok(Update::new(seq, ms, draft)?)
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

/// One stream entry (`[id, [field, value, …]]`) as an update, `offset` added to its seq.
fn entry(value: &Value, offset: u64) -> Result<Update, StoreError> {
    let bad = || backend("a malformed stream entry");
    let Value::Array(parts) = value else { return Err(bad()) };
    let [id, Value::Array(fields)] = parts.as_slice() else { return Err(bad()) };
    let id = std::str::from_utf8(bytes(id).ok_or_else(bad)?).map_err(|_| bad())?;
    let seq = id.split('-').next().and_then(|s| s.parse::<u64>().ok()).ok_or_else(bad)?;
    let (mut json, mut ms) = (None, 0);
    for pair in fields.chunks(2) {
        match (pair.first().and_then(bytes), pair.get(1).and_then(bytes)) {
            (Some(b"u"), Some(value)) => {
                json = Some(std::str::from_utf8(value).map_err(|_| bad())?);
            }
            (Some(b"ms"), Some(value)) => {
                ms = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
            }
            _ => {}
        }
    }
    decode(seq + offset, ms, json.ok_or_else(bad)?)
}

/// The entries of an `XRANGE` reply, `offset` added to their seqs.
pub(super) fn entries(reply: &Value, offset: u64) -> Result<Vec<Arc<Update>>, StoreError> {
    match reply {
        Value::Array(items) => items.iter().map(|item| entry(item, offset).map(Arc::new)).collect(),
        Value::Nil => Ok(Vec::new()),
        _ => Err(backend("a malformed range reply")),
    }
}
