//! Mercure authorization: JWTs (HS256 or RS256) carrying `mercure.publish` and
//! `mercure.subscribe` topic selectors, found in the `Authorization: Bearer` header, else the
//! `authorization` query parameter, else the `mercureAuthorization` cookie.
//!
//! Tokens need not expire (Mercure tokens often do not), but an `exp` that has passed or an
//! `nbf` still to come is refused, and a subscriber's connection is closed when its token
//! expires. A refused token gets a message that says what was wrong in our own words, never
//! the JWT library's (which would tell an attacker what the parser expected), and the token
//! itself is never logged or echoed.

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sluice_hub::Selector;

use crate::error::ApiError;

/// Where a request's token came from. A cookie is sent by the browser on its own, so a
/// publication authorized by one must also come from an allowed origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `Authorization: Bearer …`.
    Header,
    /// `?authorization=…`.
    Query,
    /// The `mercureAuthorization` cookie.
    Cookie,
}

/// The name of the cookie Mercure clients use for the token.
pub(crate) const COOKIE_NAME: &str = "mercureAuthorization";

/// Finds the request's token, in the protocol's order of precedence.
pub(crate) fn find_token(
    headers: &HeaderMap,
    query_token: Option<&str>,
) -> Option<(String, TokenSource)> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    if let Some(token) = bearer {
        return Some((token.trim().to_owned(), TokenSource::Header));
    }
    if let Some(token) = query_token {
        return Some((token.to_owned(), TokenSource::Query));
    }
    cookie(headers, COOKIE_NAME).map(|value| (value, TokenSource::Cookie))
}

/// The value of the cookie `name`, from any `Cookie` header of the request.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

/// What a verified token allows.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// When the token expires, in seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// Topics the bearer may publish to.
    pub publish: Vec<Selector>,
    /// Topics whose private updates the bearer may receive.
    pub subscribe: Vec<Selector>,
    /// The `mercure.payload` claim, shown in subscription events.
    pub payload: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawClaims {
    exp: Option<u64>,
    mercure: Option<RawMercure>,
}

#[derive(Deserialize, Default)]
struct RawMercure {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    payload: Option<serde_json::Value>,
}

/// Checks tokens against one key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("algorithms", &self.validation.algorithms).finish()
    }
}

/// Why a key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT key: {0}")]
pub struct KeyError(String);

impl Verifier {
    /// Verifies HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// Verifies RS256 tokens against a PEM-encoded RSA public key.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let key = DecodingKey::from_rsa_pem(pem).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self::with(key, Algorithm::RS256))
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 0;
        Verifier { key, validation }
    }

    /// The claims of a valid token, in force now.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data =
            jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation).map_err(|e| {
                metrics::counter!("sluice_auth_failures_total").increment(1);
                let why = refusal(e.kind(), &self.validation.algorithms);
                tracing::info!(why, "a token was refused");
                ApiError::unauthorized(format!("invalid token: {why}"))
            })?;
        let mercure = data.claims.mercure.unwrap_or_default();
        let parse = |list: Vec<String>| {
            list.iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::unauthorized(format!("invalid selector in token: {e}")))
        };
        Ok(Claims {
            exp: data.claims.exp,
            publish: parse(mercure.publish)?,
            subscribe: parse(mercure.subscribe)?,
            payload: mercure.payload,
        })
    }
}

/// Why a token was refused, in words that reveal nothing of the parser.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind, accepted: &[Algorithm]) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "it has expired".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "its signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => {
            let names: Vec<String> = accepted.iter().map(|a| format!("{a:?}")).collect();
            format!("its algorithm is not accepted (accepted: {})", names.join(", "))
        }
        ErrorKind::InvalidIssuer => "its issuer is not accepted".to_owned(),
        ErrorKind::InvalidAudience => "its audience is not this hub".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it lacks the {claim} claim"),
        _ => "it is not a well-formed JWT".to_owned(),
    }
}

/// What a minted token grants.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Selectors the bearer may publish to.
    pub publish: Vec<String>,
    /// Selectors whose private updates the bearer may receive.
    pub subscribe: Vec<String>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// The `mercure.payload` claim.
    pub payload: Option<serde_json::Value>,
}

/// Mints an HS256 Mercure token (for `sluice token`, tests and tools).
pub fn mint_hs256(secret: &[u8], grant: &Grant) -> String {
    let mut mercure = serde_json::Map::new();
    mercure.insert("publish".into(), grant.publish.clone().into());
    mercure.insert("subscribe".into(), grant.subscribe.clone().into());
    if let Some(payload) = &grant.payload {
        mercure.insert("payload".into(), payload.clone());
    }
    let mut claims = serde_json::Map::new();
    claims.insert("mercure".into(), mercure.into());
    if let Some(exp) = grant.exp {
        claims.insert("exp".into(), exp.into());
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key)
        .expect("HS256 signing of a JSON object cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_and_a_forged_one_does_not() {
        let grant =
            Grant { publish: vec!["/a".into()], subscribe: vec!["*".into()], ..Grant::default() };
        let token = mint_hs256(b"secret", &grant);
        let claims = Verifier::hs256(b"secret").verify(&token).unwrap();
        assert_eq!(claims.publish[0].as_str(), "/a");
        assert!(claims.subscribe[0].is_any());
        assert!(Verifier::hs256(b"other").verify(&token).is_err());
        let expired = mint_hs256(b"secret", &Grant { exp: Some(1), ..grant });
        let refused = Verifier::hs256(b"secret").verify(&expired).unwrap_err();
        assert!(refused.message().contains("expired"), "{}", refused.message());
    }

    #[test]
    fn refusals_say_what_was_wrong_without_the_parser_internals() {
        let verifier = Verifier::hs256(b"secret");
        let sign = |header: &str, claims: &str| {
            use base64_like::encode;
            format!("{}.{}.", encode(header), encode(claims))
        };
        // alg: none, unsigned.
        let none = sign(r#"{"alg":"none","typ":"JWT"}"#, r#"{"mercure":{"publish":["*"]}}"#);
        let message = verifier.verify(&none).unwrap_err().message().to_owned();
        assert_eq!(message, "invalid token: it is not a well-formed JWT");
        assert!(!message.contains("variant"), "no library internals: {message}");
        // nbf in the future.
        let mut claims = serde_json::Map::new();
        claims.insert("nbf".into(), (u64::MAX / 2).into());
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret");
        let early = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        assert!(verifier.verify(&early).unwrap_err().message().contains("not valid yet"));
        // Signed with another algorithm.
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS384),
            &serde_json::Map::new(),
            &key,
        )
        .unwrap();
        assert!(verifier.verify(&hs384).unwrap_err().message().contains("algorithm"));
    }

    /// Unpadded base64url, enough to forge test tokens by hand.
    mod base64_like {
        pub(super) fn encode(text: &str) -> String {
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let bytes = text.as_bytes();
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        }
    }

    #[test]
    fn the_header_wins_over_the_query_and_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=b; mercureAuthorization=from-cookie".parse().unwrap());
        assert_eq!(find_token(&headers, None), Some(("from-cookie".into(), TokenSource::Cookie)));
        assert_eq!(
            find_token(&headers, Some("from-query")),
            Some(("from-query".into(), TokenSource::Query))
        );
        headers.insert(header::AUTHORIZATION, "Bearer from-header".parse().unwrap());
        assert_eq!(
            find_token(&headers, Some("from-query")),
            Some(("from-header".into(), TokenSource::Header))
        );
    }
}
