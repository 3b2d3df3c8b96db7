//! Invariants of the server's parsers of untrusted input, shared by the fuzz targets
//! (`make fuzz`) and the tests that replay their corpora: the publish form, where a token is
//! found and how it is checked, and the chat request body.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::auth::{Protocol, Verifier, find_token};
use crate::gateway::chat_completions::wire::CompletionRequest;

/// A form body: parsing never panics; what parses re-encodes to a body that parses to the same
/// pairs; a publication parsed from it is refused or has a topic and data within the limit.
pub fn check_form(input: &[u8]) {
    let Ok(pairs) = crate::form::parse(input) else {
        return;
    };
    let encoded: Vec<String> =
        pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    let again = crate::form::parse(encoded.join("&").as_bytes()).expect("re-encoded parses");
    assert_eq!(again, pairs);
    if let Ok(draft) = crate::mercure::parse_publication(input, 64) {
        assert!(!draft.topics.is_empty());
        assert!(draft.data.len() <= 64);
    }
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A request's `Authorization` header, `authorization` query parameter and `Cookie` header,
/// from the three parts of `input` split at its first two newlines: finding the token (as
/// draft-07 and as draft-08 look for it) never panics, and a token nobody signed is refused
/// with a message that does not repeat it.
pub fn check_token(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let mut parts = text.splitn(3, '\n');
    let (bearer, query, cookie) =
        (parts.next().unwrap_or(""), parts.next(), parts.next().unwrap_or(""));
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(bearer) {
        headers.insert(header::AUTHORIZATION, value);
    }
    if let Ok(value) = HeaderValue::from_str(cookie) {
        headers.insert(header::COOKIE, value);
    }
    let hub = url::Url::parse("https://hub.example/.well-known/mercure").expect("a valid URL");
    let verifier = Verifier::hs256(b"a key the fuzzer does not know");
    // What any malformed token is told: a token that is part of this text (the fuzzer finds
    // "not a well-formed JWT") is not repeated from the input.
    let fixed = verifier.verify("%", &hub).expect_err("nonsense is refused").message().to_owned();
    for protocol in [Protocol::Draft07, Protocol::Draft08] {
        let Ok(Some((token, _))) = find_token(&headers, query, protocol) else { continue };
        let error = verifier.verify(&token, &hub).expect_err("a token nobody signed is refused");
        if token.len() >= 16 && !fixed.contains(&token) {
            assert!(!error.message().contains(&token), "the refusal repeats the token");
        }
    }
}

/// A chat request body: parsing never panics; a refusal is a 400; an accepted request becomes
/// a provider request or a 400.
pub fn check_chat_request(input: &[u8]) {
    match CompletionRequest::parse(input) {
        Ok(request) => {
            if let Err(error) = request.into_chat(Some("default")) {
                assert_eq!(error.status(), 400);
            }
        }
        Err(error) => assert_eq!(error.status(), 400),
    }
}

#[cfg(test)]
mod tests {
    use sluice_sse::testing::replay_corpus;

    /// Replays the fuzz corpora (`fuzz/corpus/{form,token,chat_request}`) through the targets'
    /// checks, so a plain `cargo test` keeps everything the fuzzer found covered.
    #[test]
    fn every_corpus_input_passes_the_checks() {
        assert!(replay_corpus("form", super::check_form) > 0);
        assert!(replay_corpus("token", super::check_token) > 0);
        assert!(replay_corpus("chat_request", super::check_chat_request) > 0);
    }
}
