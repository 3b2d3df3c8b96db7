//! What a request body becomes in a stream, and what records become in a response.
//!
//! A byte stream stores each append's body as one record. A JSON stream (the protocol's JSON
//! mode) stores one record per message: a body that is an array is flattened one level, each
//! element's text kept exactly as sent, and reads frame the messages as one JSON array.

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;

/// Why a body cannot be appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON, on a JSON stream.
    #[error("the body is not valid JSON: {0}")]
    InvalidJson(String),
    /// `[]` appended: no messages, most likely a client's bug.
    #[error("an empty JSON array appends no messages")]
    EmptyArray,
}

/// The records a body appends. `empty_array_allowed` is for creation, where `[]` makes an
/// empty stream.
pub(crate) fn records(
    json: bool,
    body: &Bytes,
    empty_array_allowed: bool,
) -> Result<Vec<Bytes>, BodyError> {
    if body.is_empty() {
        // Only a creation or a close comes without a body: no messages.
        return Ok(Vec::new());
    }
    if !json {
        return Ok(vec![body.clone()]);
    }
    let text = std::str::from_utf8(body).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    if !value.get().starts_with('[') {
        return Ok(vec![Bytes::copy_from_slice(value.get().as_bytes())]);
    }
    let elements: Vec<&RawValue> =
        serde_json::from_str(value.get()).map_err(|e| BodyError::InvalidJson(e.to_string()))?;
    if elements.is_empty() && !empty_array_allowed {
        return Err(BodyError::EmptyArray);
    }
    Ok(elements.iter().map(|e| Bytes::copy_from_slice(e.get().as_bytes())).collect())
}

/// A read's body: the records as they were appended, or for JSON a JSON array of them.
pub(crate) fn frame(json: bool, records: &[Bytes]) -> Bytes {
    if !json {
        return match records {
            [one] => one.clone(),
            _ => records.concat().into(),
        };
    }
    let len = records.iter().map(|r| r.len() + 1).sum::<usize>() + 2;
    let mut out = BytesMut::with_capacity(len);
    out.extend_from_slice(b"[");
    for (i, record) in records.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(record);
    }
    out.extend_from_slice(b"]");
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Result<Vec<String>, BodyError> {
        records(true, &Bytes::copy_from_slice(text.as_bytes()), false)
            .map(|rs| rs.iter().map(|r| String::from_utf8(r.to_vec()).unwrap()).collect())
    }

    #[test]
    fn arrays_flatten_exactly_one_level() {
        assert_eq!(json(r#"{"event": "created"}"#).unwrap(), [r#"{"event": "created"}"#]);
        assert_eq!(json(r#" [{"a":1}, {"b":2}] "#).unwrap(), [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert_eq!(json("[[1,2], [3,4]]").unwrap(), ["[1,2]", "[3,4]"]);
        assert_eq!(json("[[[1,2,3]]]").unwrap(), ["[[1,2,3]]"]);
        assert_eq!(json("1.50").unwrap(), ["1.50"], "numbers keep their text");
        assert_eq!(json("[]"), Err(BodyError::EmptyArray));
        assert!(records(true, &Bytes::from_static(b"[]"), true).unwrap().is_empty());
        assert!(matches!(json("{"), Err(BodyError::InvalidJson(_))));
        assert!(json("").unwrap().is_empty(), "no body, no messages");
        assert!(matches!(json(" "), Err(BodyError::InvalidJson(_))));
    }

    #[test]
    fn reads_frame_records() {
        let rs = [Bytes::from_static(b"{\"a\":1}"), Bytes::from_static(b"2")];
        assert_eq!(frame(true, &rs), Bytes::from_static(b"[{\"a\":1},2]"));
        assert_eq!(frame(true, &[]), Bytes::from_static(b"[]"));
        assert_eq!(frame(false, &rs), Bytes::from_static(b"{\"a\":1}2"));
        assert_eq!(frame(false, &[]), Bytes::new());
    }
}
