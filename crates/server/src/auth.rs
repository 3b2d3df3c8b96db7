//! Mercure authorization: JWTs (HS256 or RS256) carrying `mercure.publish` and
//! `mercure.subscribe` topic selectors, found in the `Authorization: Bearer` header, else the
//! `authorization` query parameter, else the `mercureAuthorization` cookie.
//!
//! Tokens need not expire (Mercure tokens often do not), but an `exp` that has passed is
//! refused, and a subscriber's connection is closed when its token expires.

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
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| (value.to_owned(), TokenSource::Cookie))
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
        validation.leeway = 0;
        Verifier { key, validation }
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<RawClaims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
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
        assert!(Verifier::hs256(b"secret").verify(&expired).is_err());
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
