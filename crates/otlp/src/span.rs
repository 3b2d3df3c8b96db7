//! One answer as one OTLP span, in OTLP/HTTP's JSON encoding, with OpenTelemetry's GenAI
//! semantic conventions (`gen_ai.*`) and Sluice's own facts beside them (`sluice.*`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sluice_llm::{AnswerRecord, ProviderError};

/// `SpanKind::SPAN_KIND_CLIENT`: Sluice calls the model service.
const KIND_CLIENT: u8 = 3;
/// `StatusCode::STATUS_CODE_ERROR`.
const STATUS_ERROR: u8 = 2;

/// The span of `record`, with fresh random trace and span ids (hex, as OTLP/JSON writes them).
pub(crate) fn span(record: &AnswerRecord) -> Value {
    let start = nanos(record.started);
    let end = start.saturating_add(record.duration.as_nanos() as u64);
    let mut attributes = vec![
        string("gen_ai.operation.name", "chat"),
        string("gen_ai.provider.name", record.system),
        string("gen_ai.request.model", &record.model),
        string("sluice.provider", &record.provider),
        int("sluice.deltas", u64::from(record.deltas)),
        attribute("sluice.cancelled", json!({ "boolValue": record.cancelled })),
    ];
    if let Some(max_tokens) = record.max_tokens {
        attributes.push(int("gen_ai.request.max_tokens", u64::from(max_tokens)));
    }
    if let Some(temperature) = record.temperature {
        attributes.push(double("gen_ai.request.temperature", f64::from(temperature)));
    }
    if let Some(usage) = record.usage {
        attributes.push(string("gen_ai.response.model", &record.model));
        attributes.push(int("gen_ai.usage.input_tokens", u64::from(usage.prompt_tokens)));
        attributes.push(int("gen_ai.usage.output_tokens", u64::from(usage.completion_tokens)));
    }
    if let Some(reason) = record.finish_reason {
        let reasons = json!({ "arrayValue": { "values": [{ "stringValue": reason.as_str() }] } });
        attributes.push(attribute("gen_ai.response.finish_reasons", reasons));
    }
    if let Some(first) = record.time_to_first_token {
        attributes.push(double("sluice.time_to_first_token", first.as_secs_f64()));
    }
    let mut span = json!({
        "traceId": hex(&rand::random::<[u8; 16]>()),
        "spanId": hex(&rand::random::<[u8; 8]>()),
        "name": format!("chat {}", record.model),
        "kind": KIND_CLIENT,
        "startTimeUnixNano": start.to_string(),
        "endTimeUnixNano": end.to_string(),
        "attributes": attributes,
    });
    if let Some(error) = &record.error {
        span["attributes"]
            .as_array_mut()
            .expect("an array")
            .push(string("error.type", kind(error)));
        span["status"] = json!({ "code": STATUS_ERROR, "message": error.to_string() });
    }
    span
}

/// The `error.type` of an answer's error: a low-cardinality name of what went wrong.
fn kind(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::UnknownModel(_) => "unknown_model",
        ProviderError::InvalidRequest(_) => "invalid_request",
        ProviderError::Busy { .. } => "busy",
        ProviderError::Unauthorized(_) => "unauthorized",
        ProviderError::Upstream { .. } => "upstream",
        ProviderError::Network(_) => "network",
        ProviderError::Timeout(_) => "timeout",
        _ => "_OTHER",
    }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as u64
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(key: &str, value: Value) -> Value {
    let mut attribute = serde_json::Map::new();
    attribute.insert("key".into(), key.into());
    attribute.insert("value".into(), value);
    Value::Object(attribute)
}

fn string(key: &str, value: &str) -> Value {
    attribute(key, json!({ "stringValue": value }))
}

/// An integer: OTLP/JSON writes 64-bit integers as strings.
fn int(key: &str, value: u64) -> Value {
    attribute(key, json!({ "intValue": value.to_string() }))
}

fn double(key: &str, value: f64) -> Value {
    attribute(key, json!({ "doubleValue": value }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_llm::{FinishReason, Usage};

    fn record() -> AnswerRecord {
        AnswerRecord {
            model: "m".into(),
            provider: "up".into(),
            system: "openai",
            max_tokens: Some(64),
            temperature: None,
            started: UNIX_EPOCH + Duration::from_secs(1),
            duration: Duration::from_millis(250),
            time_to_first_token: Some(Duration::from_millis(20)),
            usage: Some(Usage::new(12, 30)),
            deltas: 30,
            finish_reason: Some(FinishReason::Length),
            error: None,
            cancelled: false,
        }
    }

    fn value<'a>(span: &'a Value, key: &str) -> &'a Value {
        let attributes = span["attributes"].as_array().unwrap();
        &attributes.iter().find(|a| a["key"] == key).unwrap_or_else(|| panic!("{key}"))["value"]
    }

    #[test]
    fn an_answer_is_a_client_span_with_the_genai_attributes() {
        let span = span(&record());
        assert_eq!(span["name"], "chat m");
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], "1000000000");
        assert_eq!(span["endTimeUnixNano"], "1250000000");
        assert_eq!(span["traceId"].as_str().unwrap().len(), 32);
        assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
        assert_eq!(value(&span, "gen_ai.provider.name")["stringValue"], "openai");
        assert_eq!(value(&span, "gen_ai.usage.input_tokens")["intValue"], "12");
        assert_eq!(value(&span, "gen_ai.usage.output_tokens")["intValue"], "30");
        assert_eq!(value(&span, "gen_ai.request.max_tokens")["intValue"], "64");
        let reasons = &value(&span, "gen_ai.response.finish_reasons")["arrayValue"]["values"];
        assert_eq!(reasons[0]["stringValue"], "length");
        assert_eq!(value(&span, "sluice.time_to_first_token")["doubleValue"], 0.02);
        assert_eq!(value(&span, "sluice.cancelled")["boolValue"], false);
        assert!(span.get("status").is_none());
    }

    #[test]
    fn an_error_sets_the_status_and_error_type() {
        let failed = AnswerRecord {
            error: Some(ProviderError::Timeout(Duration::from_secs(1))),
            usage: None,
            ..record()
        };
        let span = span(&failed);
        assert_eq!(span["status"]["code"], 2);
        assert_eq!(value(&span, "error.type")["stringValue"], "timeout");
        assert!(
            span["attributes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|a| a["key"] != "gen_ai.usage.input_tokens")
        );
    }
}
