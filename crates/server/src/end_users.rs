//! End-user tokens: what a browser presents to the chat routes instead of an API key, which
//! it cannot keep secret. The app's back end mints a short-lived JWT for its signed-in user
//! (as a Mercure hub's app mints its subscribers' tokens), with the server's `--jwt-secret`
//! (HS256) or the private half of `--jwt-public-key` (RS256):
//!
//! ```json
//! {"sub": "user-42", "aud": "sluice-chat", "exp": 1765000000,
//!  "sluice": {"chat": {"models": ["gpt-4o-mini"], "max_tokens": 1024,
//!                      "requests_per_minute": 20, "tokens_per_minute": 20000}}}
//! ```
//!
//! `aud` must be the server's `--chat-audience`; `sub`, `exp` and the `sluice.chat` claim are
//! required (a limit left out is no limit; `models` left out or empty is every model). The
//! token comes in `Authorization: Bearer`, `x-api-key`, or the [`COOKIE`] cookie. Its subject
//! is charged in the store's ledger under `sub:{subject}`, like a key, so that one subject
//! cannot pass its limits whichever route or node it uses.

use serde::{Deserialize, Serialize};
use sluice_hub::{KeyLimits, KeyRecord};

use crate::auth::Verifier;
use crate::error::ApiError;

/// The cookie a browser may carry the token in (a page cannot set a header on every request
/// its libraries make).
pub const COOKIE: &str = "sluiceChatToken";

/// The prefix of a subject's id in the ledger, which no key's id has (`config:…`, `key_…`).
pub(crate) const SUBJECT_PREFIX: &str = "sub:";

/// What an end-user token grants, as it is minted and read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatGrant {
    /// The end user (`sub`): whose limits these are, and under whom usage is counted.
    #[serde(rename = "sub")]
    pub subject: String,
    /// The audience (`aud`): the server's `--chat-audience`.
    #[serde(rename = "aud")]
    pub audience: String,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// The limits (`sluice.chat`).
    pub sluice: ChatClaim,
}

/// The `sluice` claim: only `chat` so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatClaim {
    /// The chat routes' limits.
    pub chat: ChatLimits,
}

/// What the subject may ask the chat routes for; `None` is no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatLimits {
    /// The models it may use (empty: every model).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The most tokens one answer may generate: a request asking for more, or for no bound,
    /// is held to this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Requests per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt and completion) per minute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
}

impl ChatGrant {
    /// The record the ledger charges: the subject as a key that cannot be revoked (its token
    /// expires instead), and the most tokens an answer may take.
    pub(crate) fn record(&self) -> (KeyRecord, Option<u32>) {
        let chat = &self.sluice.chat;
        let record = KeyRecord {
            id: format!("{SUBJECT_PREFIX}{}", self.subject),
            name: self.subject.clone(),
            hash: [0; 32],
            prefix: String::new(),
            limits: KeyLimits {
                models: chat.models.clone(),
                requests_per_minute: chat.requests_per_minute,
                tokens_per_minute: chat.tokens_per_minute,
                ..KeyLimits::default()
            },
            created_ms: 0,
            expires_ms: Some(self.exp.saturating_mul(1000)),
            revoked_ms: None,
        };
        (record, chat.max_tokens)
    }
}

/// Whether a presented credential is a JWT (three base64url parts whose first is a JOSE
/// header) rather than an API key: a key never decodes as one.
pub(crate) fn is_jwt(credential: &str) -> bool {
    credential.split('.').count() == 3 && jsonwebtoken::decode_header(credential).is_ok()
}

/// The grant of a valid end-user token; 401 `invalid_token` saying what was wrong.
pub(crate) fn verify(verifier: &Verifier, token: &str) -> Result<ChatGrant, ApiError> {
    let claims = verifier.verify_end_user(token)?;
    let grant: ChatGrant = serde_json::from_value(claims).map_err(|_| {
        ApiError::invalid_token(
            "invalid token: it is not an end-user token (sub, aud, exp and a sluice.chat claim)",
        )
    })?;
    if grant.subject.is_empty() {
        return Err(ApiError::invalid_token("invalid token: its subject (sub) is empty"));
    }
    Ok(grant)
}

/// Mints an HS256 end-user token (for `sluice token --chat`, tests and back ends in Rust).
pub fn mint_chat_hs256(secret: &[u8], grant: &ChatGrant) -> String {
    let claims = serde_json::to_value(grant).expect("a grant always serializes");
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    crate::signing::sign(secret, &header, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> ChatGrant {
        ChatGrant {
            subject: "alice".into(),
            audience: "sluice-chat".into(),
            exp: 4_102_444_800,
            sluice: ChatClaim { chat: ChatLimits { max_tokens: Some(8), ..ChatLimits::default() } },
        }
    }

    fn verifier() -> Verifier {
        Verifier::hs256(b"secret").for_audience(Some("sluice-chat".into()))
    }

    #[test]
    fn a_minted_token_reads_back_and_is_told_from_a_key() {
        let token = mint_chat_hs256(b"secret", &grant());
        assert!(is_jwt(&token));
        assert!(!is_jwt("sk-sluice-0123") && !is_jwt("a.b.c"));
        assert_eq!(verify(&verifier(), &token).unwrap(), grant());
        let (record, max_tokens) = grant().record();
        assert_eq!((record.id.as_str(), max_tokens), ("sub:alice", Some(8)));
    }

    #[test]
    fn a_token_without_the_chat_claim_is_refused_in_words() {
        let mercure = crate::auth::mint_hs256(b"secret", &crate::auth::Grant::default());
        let refused = verify(&verifier(), &mercure).unwrap_err();
        assert_eq!(refused.status(), 401);
        assert!(refused.message().contains("it lacks the"), "{}", refused.message());
        let claims = serde_json::json!({"sub": "a", "aud": "sluice-chat", "exp": 4_102_444_800u64});
        let header = jsonwebtoken::Header::default();
        let bare = crate::signing::sign(b"secret", &header, &claims);
        let refused = verify(&verifier(), &bare).unwrap_err();
        assert!(refused.message().contains("not an end-user token"), "{}", refused.message());
    }
}
