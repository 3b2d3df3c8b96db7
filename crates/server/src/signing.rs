//! Signing JWTs with HS256: what minting a draft-07 token (`auth`) and a draft-08 access token
//! (`grants`) share, in a module of its own so that neither has to import the other.

use serde_json::Value;

/// Signs `claims` with HS256 under `header`.
pub(crate) fn sign(secret: &[u8], header: &jsonwebtoken::Header, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret);
    jsonwebtoken::encode(header, claims, &key).expect("HS256 signing of a JSON object cannot fail")
}
