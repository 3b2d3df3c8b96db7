//! Traces of Sluice's answers over OpenTelemetry: one span per answer, with the GenAI semantic
//! conventions (model, provider, tokens, finish reason) and Sluice's own facts (time to the
//! first token, whether the reader stopped it), sent to an OTLP/HTTP receiver as JSON.
//!
//! [`start`] gives an [`Observer`] for the router: every answer's record goes into a bounded
//! queue (a full queue drops the record and says so in the log: tracing never slows an
//! answer), and a background task sends what is queued in batches, at most a second after the
//! first record of a batch came. JSON is one of OTLP/HTTP's two encodings; it needs no
//! protobuf code here, and every collector and most tracing back ends take it.
//!
//! ```no_run
//! # async fn run() {
//! let observer = sluice_otlp::start(sluice_otlp::OtlpConfig {
//!     endpoint: "http://127.0.0.1:4318".parse().unwrap(),
//!     service_name: "sluice".into(),
//! });
//! let mut router = sluice_llm::Router::new();
//! router.observe(observer);
//! # }
//! ```

mod span;

use std::time::Duration;

use serde_json::{Value, json};
use sluice_llm::{AnswerRecord, Observer};
use tokio::sync::mpsc;
use tokio::time::Instant;
use url::Url;

/// Records waiting to be sent, at most; past it, records are dropped.
const QUEUE: usize = 4096;
/// Spans per request, at most.
const BATCH: usize = 512;
/// How long the first record of a batch waits for others.
const LINGER: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as what the traces go.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// The receiver's base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. `http://127.0.0.1:4318`);
    /// spans are posted to its `/v1/traces`.
    pub endpoint: Url,
    /// The `service.name` of the resource (`OTEL_SERVICE_NAME`).
    pub service_name: String,
}

impl OtlpConfig {
    /// The traces URL: the endpoint's path with `v1/traces` after it, as the OTLP exporter
    /// specification builds it from `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn traces_url(&self) -> Url {
        let mut url = self.endpoint.clone();
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }
}

/// Starts the exporter task (on the current Tokio runtime) and returns the observer that
/// feeds it.
pub fn start(config: OtlpConfig) -> Observer {
    let (queue, records) = mpsc::channel(QUEUE);
    tokio::spawn(export(config, records));
    Observer::new(move |record: &AnswerRecord| {
        if queue.try_send(span::span(record)).is_err() {
            tracing::warn!("the OTLP queue is full: an answer's span is dropped");
        }
    })
}

/// Sends batches until every observer is gone.
async fn export(config: OtlpConfig, mut spans: mpsc::Receiver<Value>) {
    let url = config.traces_url();
    let client = reqwest::Client::builder().timeout(EXPORT_TIMEOUT).build().unwrap_or_default();
    let resource = json!({ "attributes": [
        { "key": "service.name", "value": { "stringValue": config.service_name } },
        { "key": "service.version", "value": { "stringValue": env!("CARGO_PKG_VERSION") } },
    ]});
    let mut failing = false;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let deadline = Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = json!({ "resourceSpans": [{
            "resource": resource,
            "scopeSpans": [{
                "scope": { "name": "sluice", "version": env!("CARGO_PKG_VERSION") },
                "spans": batch,
            }],
        }]});
        let sent = client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        // Said once when exports start failing and once when they work again, not per batch.
        match sent {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(%url, "OTLP exports work again");
            }
            Ok(_) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%url, %error, "OTLP export failed: spans are dropped until it works");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traces_url_follows_the_endpoint() {
        let at = |endpoint: &str| {
            OtlpConfig { endpoint: endpoint.parse().unwrap(), service_name: String::new() }
                .traces_url()
                .to_string()
        };
        assert_eq!(at("http://collector:4318"), "http://collector:4318/v1/traces");
        assert_eq!(at("http://collector:4318/"), "http://collector:4318/v1/traces");
        assert_eq!(at("https://otel.example/base/"), "https://otel.example/base/v1/traces");
    }
}
