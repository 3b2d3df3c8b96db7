//! Reading a hub's answers as a client does: an EventSource's first items, and JSON errors.
// Not every test binary reads every kind of answer.
#![allow(dead_code)]

use futures_util::StreamExt;
use reqwest::StatusCode;
use sluice_client::{EventSource, Item, MessageEvent};

/// Waits until the source is open (its subscription is registered before the response).
pub(crate) async fn opened(source: &mut EventSource) {
    match source.next().await {
        Some(Ok(Item::Open)) => {}
        other => panic!("expected the stream to open, got {other:?}"),
    }
}

/// The next `n` messages of the source.
pub(crate) async fn messages(source: &mut EventSource, n: usize) -> Vec<MessageEvent> {
    let mut out = Vec::new();
    while out.len() < n {
        match source.next().await {
            Some(Ok(Item::Message(event))) => out.push(event),
            Some(Ok(_)) => {}
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}

/// The status and JSON body of an error answer, which must say what was wrong.
pub(crate) async fn error_json(response: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = response.status();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(content_type, "application/json", "{status}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    (status, body)
}
