//! Mercure authorization, in both protocol versions the hub speaks:
//!
//! - **draft-07**: a JWT with a `mercure` claim holding `publish` and `subscribe` lists of
//!   topic selectors (and a `payload`), found in the `Authorization: Bearer` header, else the
//!   `authorization` query parameter, else the `mercureAuthorization` cookie. It need not
//!   expire (such tokens often do not), but an `exp` that has passed or an `nbf` still to
//!   come is refused.
//! - **draft-08**: an OAuth 2.0 access token (RFC 9068, header `typ: at+jwt`) whose `iss` is
//!   a trusted issuer, whose `aud` names this hub, and which must expire; its grants are RFC
//!   9396 `authorization_details` (see [`crate::grants`]). Found in the `Authorization`
//!   header, else the `__Secure-mercure_access_token` cookie; never in the URL.
//!
//! Which kind a token is comes from its own header, so one hub verifies both with one key. A
//! subscriber's connection is closed when its token expires. A refused token gets a message
//! that says what was wrong in our own words, never the JWT library's (which would tell an
//! attacker what the parser expected), and the token itself is never logged or echoed.

use axum::http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sluice_hub::{Limits, Selector};
use url::Url;

use crate::error::ApiError;
use crate::grants::{self, Grants};

/// Where a request's token came from. A cookie is sent by the browser on its own, so a
/// publication authorized by one must also come from an allowed origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// `Authorization: Bearer …`.
    Header,
    /// `?authorization=…` (draft-07 only).
    Query,
    /// The `mercureAuthorization` (draft-07) or `__Secure-mercure_access_token` (draft-08)
    /// cookie.
    Cookie,
}

/// The cookie draft-07 clients use for the token.
pub(crate) const COOKIE_NAME: &str = "mercureAuthorization";
/// The cookie draft-08 clients use for the access token.
pub(crate) const ACCESS_COOKIE_NAME: &str = "__Secure-mercure_access_token";

/// Which protocol version a request speaks, which decides where its token may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// Mercure draft-07 (`topic=`, the `mercure` claim).
    Draft07,
    /// Mercure draft-08 (`match=`, access tokens).
    Draft08,
}

/// Finds the request's token, in its protocol's order of precedence: the `Authorization`
/// header, then (draft-07) the `authorization` query parameter, then the cookie(s). A
/// draft-07 request (which cannot tell from its parameters, as a publication) also takes the
/// draft-08 cookie.
///
/// Errors (400 `invalid_request`) when the token's presentation is malformed: several
/// `Authorization` headers, or a `Bearer` one that does not hold exactly one token.
pub(crate) fn find_token(
    headers: &HeaderMap,
    query_token: Option<&str>,
    protocol: Protocol,
) -> Result<Option<(String, TokenSource)>, ApiError> {
    let mut authorizations = headers.get_all(header::AUTHORIZATION).iter();
    if let Some(value) = authorizations.next() {
        if authorizations.next().is_some() {
            return Err(ApiError::invalid_request("several Authorization headers were sent"));
        }
        if let Some(token) = bearer(value.as_bytes())? {
            return Ok(Some((token, TokenSource::Header)));
        }
    }
    if protocol == Protocol::Draft07
        && let Some(token) = query_token
    {
        return Ok(Some((token.to_owned(), TokenSource::Query)));
    }
    let from_cookie = match protocol {
        Protocol::Draft07 => {
            cookie(headers, COOKIE_NAME).or_else(|| cookie(headers, ACCESS_COOKIE_NAME))
        }
        Protocol::Draft08 => cookie(headers, ACCESS_COOKIE_NAME),
    };
    Ok(from_cookie.map(|value| (value, TokenSource::Cookie)))
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case, RFC 6750's
/// token68 characters); `None` for another scheme, which is not ours to judge.
fn bearer(value: &[u8]) -> Result<Option<String>, ApiError> {
    let text = String::from_utf8_lossy(value);
    let Some((scheme, rest)) = text.split_once(' ') else {
        return if text.eq_ignore_ascii_case("bearer") {
            Err(ApiError::invalid_request("the Authorization header has no token"))
        } else {
            Ok(None)
        };
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches(' ');
    let token68 = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if token.is_empty() || !token.chars().all(token68) {
        return Err(ApiError::invalid_request(
            "the Authorization header must be `Bearer` and one token",
        ));
    }
    Ok(Some(token.to_owned()))
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

/// Which kind of token was verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenKind {
    /// A draft-07 JWT with a `mercure` claim.
    #[default]
    Draft07,
    /// A draft-08 access token (`typ: at+jwt`).
    Access,
}

/// What a verified token allows.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    /// Which kind of token it is.
    pub kind: TokenKind,
    /// When the token expires, in seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// Topics the bearer may publish to.
    pub publish: Vec<Selector>,
    /// Topics whose private updates the bearer may receive.
    pub subscribe: Vec<Selector>,
    /// Payloads for subscription events, each with the matchers it applies to: the first
    /// whose matchers match a subscription's own matcher is that subscription's payload.
    pub payloads: Vec<(Vec<Selector>, Value)>,
}

impl Claims {
    /// Whether the token grants publishing to `topic`.
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|s| s.matches(topic))
    }

    /// Whether the token grants receiving private updates of `topic`.
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.subscribe.iter().any(|s| s.matches(topic))
    }

    /// The payload subscription events show for a subscription to `matcher`.
    pub fn payload_for(&self, matcher: &str) -> Option<Value> {
        self.payloads
            .iter()
            .find(|(selectors, _)| selectors.iter().any(|s| s.matches(matcher)))
            .map(|(_, payload)| payload.clone())
    }
}

#[derive(Deserialize)]
struct Draft07Claims {
    exp: Option<u64>,
    mercure: Option<RawMercure>,
}

#[derive(Deserialize, Default)]
struct RawMercure {
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    payload: Option<Value>,
}

#[derive(Deserialize)]
struct AccessClaims {
    exp: u64,
    #[serde(default)]
    authorization_details: Vec<Value>,
}

/// The issuer an access token must name when no `--jwt-issuer` is configured: the one
/// `sluice token --access` writes.
pub const DEFAULT_ISSUER: &str = "sluice";

/// Checks tokens against one key, with the issuers and audience access tokens must name.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    algorithm: Algorithm,
    issuers: Vec<String>,
    audience: Option<String>,
    limits: Limits,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("issuers", &self.issuers)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
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
        Verifier {
            key,
            algorithm,
            issuers: vec![DEFAULT_ISSUER.to_owned()],
            audience: None,
            limits: Limits::default(),
        }
    }

    /// Trusts access tokens from these issuers only (exact `iss` values).
    pub fn trusting(mut self, issuers: Vec<String>) -> Self {
        if !issuers.is_empty() {
            self.issuers = issuers;
        }
        self
    }

    /// Requires access tokens' `aud` to hold `audience`, instead of the hub's URL as the
    /// request names it.
    pub fn for_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// The audience access tokens must name, when configured.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    /// Refuses access tokens whose URL patterns are past these limits.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The claims of a valid token, in force now. `hub` is the hub's URL: the audience an
    /// access token must name (unless one is configured), and the base its relative URL
    /// patterns resolve against. Every refusal is 401 `invalid_token`.
    pub fn verify(&self, token: &str, hub: &Url) -> Result<Claims, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| self.refuse(e.kind()))?;
        if header.typ.as_deref().is_some_and(is_access_token_type) {
            self.verify_access(token, hub)
        } else {
            self.verify_draft07(token)
        }
    }

    fn validation(&self) -> Validation {
        let mut validation = Validation::new(self.algorithm);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        validation.validate_nbf = true;
        validation.leeway = 0;
        validation
    }

    fn verify_draft07(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Draft07Claims>(token, &self.key, &self.validation())
            .map_err(|e| self.refuse(e.kind()))?;
        let mercure = data.claims.mercure.unwrap_or_default();
        let parse = |list: Vec<String>| {
            list.iter()
                .map(|s| Selector::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ApiError::invalid_token(format!("invalid selector in token: {e}")))
        };
        Ok(Claims {
            kind: TokenKind::Draft07,
            exp: data.claims.exp,
            publish: parse(mercure.publish)?,
            subscribe: parse(mercure.subscribe)?,
            payloads: mercure
                .payload
                .map(|payload| vec![(vec![Selector::exact_match("*")], payload)])
                .unwrap_or_default(),
        })
    }

    fn verify_access(&self, token: &str, hub: &Url) -> Result<Claims, ApiError> {
        let mut validation = self.validation();
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&self.issuers);
        validation.validate_aud = true;
        let audience = self.audience.clone().unwrap_or_else(|| hub.to_string());
        validation.set_audience(&[audience]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.key, &validation)
            .map_err(|e| self.refuse(e.kind()))?;
        let Grants { publish, subscribe, payloads } =
            grants::parse(&data.claims.authorization_details, hub, &self.limits)
                .map_err(|why| ApiError::invalid_token(format!("invalid token: {why}")))?;
        Ok(Claims {
            kind: TokenKind::Access,
            exp: Some(data.claims.exp),
            publish,
            subscribe,
            payloads,
        })
    }

    /// The claims of an end-user token (see `end_users`): it must be signed with this
    /// key, name this verifier's audience, have a subject and an expiry, and be in force now.
    /// Every refusal is 401 `invalid_token`, in the same words as the hub's.
    pub(crate) fn verify_end_user(&self, token: &str) -> Result<Value, ApiError> {
        let mut validation = self.validation();
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.validate_aud = true;
        validation.set_audience(&[self.audience.as_deref().unwrap_or_default()]);
        let data = jsonwebtoken::decode::<Value>(token, &self.key, &validation)
            .map_err(|e| self.refuse(e.kind()))?;
        Ok(data.claims)
    }

    fn refuse(&self, kind: &jsonwebtoken::errors::ErrorKind) -> ApiError {
        metrics::counter!("sluice_auth_failures_total").increment(1);
        let why = refusal(kind, self.algorithm);
        tracing::info!(why, "a token was refused");
        ApiError::invalid_token(format!("invalid token: {why}"))
    }
}

/// Whether a JWT's `typ` says it is an RFC 9068 access token: `at+jwt`, with or without
/// `application/`, in any case.
fn is_access_token_type(typ: &str) -> bool {
    let lower = typ.to_ascii_lowercase();
    lower.strip_prefix("application/").unwrap_or(&lower) == "at+jwt"
}

/// Why a token was refused, in words that reveal nothing of the parser.
fn refusal(kind: &jsonwebtoken::errors::ErrorKind, accepted: Algorithm) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::ExpiredSignature => "it has expired".to_owned(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".to_owned(),
        ErrorKind::InvalidSignature => "its signature does not verify".to_owned(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => {
            format!("its algorithm is not accepted (accepted: {accepted:?})")
        }
        ErrorKind::InvalidIssuer => "its issuer is not trusted".to_owned(),
        ErrorKind::InvalidAudience => "its audience (aud) is not this server".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it lacks the {claim} claim"),
        _ => "it is not a well-formed JWT".to_owned(),
    }
}

/// What a minted draft-07 token grants.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    /// Selectors the bearer may publish to.
    pub publish: Vec<String>,
    /// Selectors whose private updates the bearer may receive.
    pub subscribe: Vec<String>,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: Option<u64>,
    /// The `mercure.payload` claim.
    pub payload: Option<Value>,
}

/// Mints an HS256 draft-07 Mercure token (for `sluice token`, tests and tools).
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
    crate::signing::sign(secret, &jsonwebtoken::Header::new(Algorithm::HS256), &claims.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Url {
        "http://127.0.0.1:8080/.well-known/mercure".parse().unwrap()
    }

    #[test]
    fn a_minted_token_verifies_and_a_forged_one_does_not() {
        let grant =
            Grant { publish: vec!["/a".into()], subscribe: vec!["*".into()], ..Grant::default() };
        let token = mint_hs256(b"secret", &grant);
        let claims = Verifier::hs256(b"secret").verify(&token, &hub()).unwrap();
        assert_eq!(claims.kind, TokenKind::Draft07);
        assert_eq!(claims.publish[0].as_str(), "/a");
        assert!(claims.subscribe[0].is_any());
        assert!(Verifier::hs256(b"other").verify(&token, &hub()).is_err());
        let expired = mint_hs256(b"secret", &Grant { exp: Some(1), ..grant });
        let refused = Verifier::hs256(b"secret").verify(&expired, &hub()).unwrap_err();
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
        let message = verifier.verify(&none, &hub()).unwrap_err().message().to_owned();
        assert_eq!(message, "invalid token: it is not a well-formed JWT");
        assert!(!message.contains("variant"), "no library internals: {message}");
        // nbf in the future.
        let mut claims = serde_json::Map::new();
        claims.insert("nbf".into(), (u64::MAX / 2).into());
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret");
        let early = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
        assert!(verifier.verify(&early, &hub()).unwrap_err().message().contains("not valid yet"));
        // Signed with another algorithm.
        let hs384 = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS384),
            &serde_json::Map::new(),
            &key,
        )
        .unwrap();
        assert!(verifier.verify(&hs384, &hub()).unwrap_err().message().contains("algorithm"));
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
        let draft07 = Protocol::Draft07;
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, "a=b; mercureAuthorization=from-cookie".parse().unwrap());
        let found = |headers: &HeaderMap, query, protocol| {
            find_token(headers, query, protocol).unwrap().map(|(token, _)| token)
        };
        assert_eq!(found(&headers, None, draft07).as_deref(), Some("from-cookie"));
        assert_eq!(found(&headers, Some("from-query"), draft07).as_deref(), Some("from-query"));
        // Draft-08 takes neither the query parameter nor the draft-07 cookie.
        assert_eq!(found(&headers, Some("from-query"), Protocol::Draft08), None);
        headers.insert(header::AUTHORIZATION, "bearer from-header".parse().unwrap());
        assert_eq!(
            find_token(&headers, Some("from-query"), draft07).unwrap(),
            Some(("from-header".into(), TokenSource::Header))
        );
    }

    #[test]
    fn a_malformed_bearer_presentation_is_an_invalid_request() {
        for value in ["Bearer", "Bearer a b", "Bearer tok\"en"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            let error = find_token(&headers, None, Protocol::Draft08).unwrap_err();
            assert_eq!(error.status(), 400, "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        headers.insert(header::COOKIE, format!("{ACCESS_COOKIE_NAME}=c").parse().unwrap());
        let found = find_token(&headers, None, Protocol::Draft08).unwrap();
        assert_eq!(found, Some(("c".into(), TokenSource::Cookie)), "another scheme is not ours");
    }

    /// Draft-08 access tokens as `grants` mints them, verified here.
    mod access_tokens {
        use serde_json::json;

        use super::super::*;
        use crate::grants::{AccessGrant, MatchType, TopicMatcher, mint_access_hs256};

        fn hub() -> Url {
            "https://hub.example/.well-known/mercure".parse().unwrap()
        }

        fn grant() -> AccessGrant {
            AccessGrant {
                issuer: "https://issuer.example".into(),
                audience: hub().to_string(),
                exp: 4_102_444_800,
                subject: "alice".into(),
                publish: vec![TopicMatcher {
                    match_type: MatchType::Exact,
                    text: "https://example.com/books/1".into(),
                }],
                subscribe: vec![TopicMatcher {
                    match_type: MatchType::Urlpattern,
                    text: "https://example.com/books/:id".into(),
                }],
                payload: Some(json!({"name": "alice"})),
            }
        }

        fn verifier() -> Verifier {
            Verifier::hs256(b"secret").trusting(vec!["https://issuer.example".into()])
        }

        #[test]
        fn a_minted_access_token_grants_what_it_says() {
            let claims =
                verifier().verify(&mint_access_hs256(b"secret", &grant()), &hub()).unwrap();
            assert_eq!(claims.kind, TokenKind::Access);
            assert!(claims.may_publish("https://example.com/books/1"));
            assert!(!claims.may_publish("https://example.com/books/2"));
            assert!(claims.may_subscribe("https://example.com/books/2"));
            assert!(!claims.may_subscribe("https://example.com/books/2/reviews"));
            assert_eq!(
                claims.payload_for("https://example.com/books/7"),
                Some(json!({"name": "alice"}))
            );
            assert_eq!(claims.payload_for("https://example.com/authors/7"), None);
        }

        #[test]
        fn issuer_audience_and_expiry_are_enforced() {
            let refused = |grant: &AccessGrant, verifier: &Verifier| {
                let error =
                    verifier.verify(&mint_access_hs256(b"secret", grant), &hub()).unwrap_err();
                assert_eq!(error.status(), 401);
                error.message().to_owned()
            };
            let other_issuer = AccessGrant { issuer: "https://evil.example".into(), ..grant() };
            assert!(refused(&other_issuer, &verifier()).contains("issuer"));
            let other_hub = AccessGrant { audience: "https://other.example/".into(), ..grant() };
            assert!(refused(&other_hub, &verifier()).contains("audience"));
            let expired = AccessGrant { exp: 1, ..grant() };
            assert!(refused(&expired, &verifier()).contains("expired"));
            // A configured audience replaces the hub's URL.
            let configured = verifier().for_audience(Some("urn:hub".into()));
            assert!(refused(&grant(), &configured).contains("audience"));
            let for_urn = AccessGrant { audience: "urn:hub".into(), ..grant() };
            assert!(configured.verify(&mint_access_hs256(b"secret", &for_urn), &hub()).is_ok());
        }
    }
}
