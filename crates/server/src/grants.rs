//! Draft-08 grants: the Mercure entries of an access token's `authorization_details` (RFC
//! 9396), and minting access tokens that carry them.
//!
//! An entry of type `https://mercure.rocks/authorization-detail` has `actions` (`publish`,
//! `subscribe`; others are ignored), `topics` (matcher objects `{"match": …, "match_type":
//! "exact" | "urlpattern"}`, `match_type` defaulting to exact, `*` matching every topic) and,
//! for subscribers, a `payload` object shown in their subscription events. Entries of other
//! types are another resource's business and are skipped. Anything malformed in a Mercure
//! entry, or past the limits, refuses the whole token: acting on the rest would grant what
//! the issuer may not have meant.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sluice_hub::{Limits, Selector, SelectorError};
use url::Url;

/// The `type` of Mercure's authorization details.
pub(crate) const DETAIL_TYPE: &str = "https://mercure.rocks/authorization-detail";
/// The most Mercure authorization details one token may hold.
const MAX_DETAILS: usize = 32;
/// The most topic matchers one detail may hold.
const MAX_MATCHERS_PER_DETAIL: usize = 64;

/// The draft-08 topic matcher types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchType {
    /// Byte-for-byte comparison (`match=`, `match_exact=`).
    Exact,
    /// A WHATWG URL pattern (`match_urlpattern=`).
    Urlpattern,
}

impl MatchType {
    /// Its canonical name, as in `match_<name>` and subscription topics.
    pub fn name(self) -> &'static str {
        match self {
            MatchType::Exact => "exact",
            MatchType::Urlpattern => "urlpattern",
        }
    }

    /// The type of a canonical name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "exact" => Some(MatchType::Exact),
            "urlpattern" => Some(MatchType::Urlpattern),
            _ => None,
        }
    }

    /// Compiles a matcher of this type; URL patterns resolve against `hub`.
    pub fn compile(self, text: &str, hub: &Url) -> Result<Selector, SelectorError> {
        match self {
            MatchType::Exact => Ok(Selector::exact_match(text)),
            MatchType::Urlpattern => Selector::url_pattern(text, hub),
        }
    }
}

/// What a token's Mercure details grant, compiled.
#[derive(Debug, Default)]
pub(crate) struct Grants {
    pub(crate) publish: Vec<Selector>,
    pub(crate) subscribe: Vec<Selector>,
    pub(crate) payloads: Vec<(Vec<Selector>, Value)>,
}

/// Compiles the Mercure entries of `details`; the error says what is wrong, for the 401.
pub(crate) fn parse(details: &[Value], hub: &Url, limits: &Limits) -> Result<Grants, String> {
    let mut grants = Grants::default();
    let mut count = 0;
    for (index, detail) in details.iter().enumerate() {
        let Some(detail) = detail.as_object() else {
            return Err(format!("authorization_details[{index}] is not an object"));
        };
        if detail.get("type").and_then(Value::as_str) != Some(DETAIL_TYPE) {
            continue;
        }
        count += 1;
        if count > MAX_DETAILS {
            return Err(format!("more than {MAX_DETAILS} Mercure authorization details"));
        }
        let at = |what: &str| format!("authorization_details[{index}].{what}");
        let actions = non_empty_array(detail, "actions").map_err(|e| at(&e))?;
        let mut publish = false;
        let mut subscribe = false;
        for action in actions {
            match action.as_str() {
                Some("publish") => publish = true,
                Some("subscribe") => subscribe = true,
                Some(_) => {}
                None => return Err(at("actions holds a value that is not a string")),
            }
        }
        let topics = non_empty_array(detail, "topics").map_err(|e| at(&e))?;
        if topics.len() > MAX_MATCHERS_PER_DETAIL {
            return Err(at(&format!("topics has more than {MAX_MATCHERS_PER_DETAIL} matchers")));
        }
        let selectors = topics
            .iter()
            .map(|topic| matcher(topic, hub, limits))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| at(&format!("topics: {e}")))?;
        let payload = match detail.get("payload") {
            None => None,
            Some(payload @ Value::Object(_)) => Some(payload.clone()),
            Some(_) => return Err(at("payload is not an object")),
        };
        if publish {
            grants.publish.extend(selectors.iter().cloned());
        }
        if subscribe {
            if let Some(payload) = payload {
                grants.payloads.push((selectors.clone(), payload));
            }
            grants.subscribe.extend(selectors);
        }
    }
    Ok(grants)
}

fn non_empty_array<'a>(detail: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match detail.get(key) {
        Some(Value::Array(items)) if !items.is_empty() => Ok(items),
        _ => Err(format!("{key} must be a non-empty array")),
    }
}

/// One topic matcher object, compiled.
fn matcher(topic: &Value, hub: &Url, limits: &Limits) -> Result<Selector, String> {
    let text = topic
        .get("match")
        .and_then(Value::as_str)
        .ok_or("each matcher must be an object with a string \"match\"")?;
    let match_type = match topic.get("match_type") {
        None => MatchType::Exact,
        Some(name) => name
            .as_str()
            .and_then(MatchType::from_name)
            .ok_or_else(|| format!("unsupported match_type {name} (exact or urlpattern)"))?,
    };
    let selector = match_type.compile(text, hub).map_err(|e| e.to_string())?;
    limits.check_selector(&selector).map_err(|e| e.to_string())?;
    Ok(selector)
}

/// A matcher an access token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMatcher {
    /// How it matches.
    pub match_type: MatchType,
    /// The topic, URL pattern or `*`.
    pub text: String,
}

impl TopicMatcher {
    fn to_json(&self) -> Value {
        match self.match_type {
            MatchType::Exact => json!({ "match": self.text }),
            other => json!({ "match": self.text, "match_type": other.name() }),
        }
    }
}

/// What a minted draft-08 access token says and grants.
#[derive(Debug, Clone)]
pub struct AccessGrant {
    /// `iss`: who issued it (a hub trusts configured issuers only).
    pub issuer: String,
    /// `aud`: the hub's resource identifier, normally its URL
    /// (`https://hub.example/.well-known/mercure`).
    pub audience: String,
    /// `exp`: when it expires, in seconds since the Unix epoch (required).
    pub exp: u64,
    /// `sub`: whom it was issued to.
    pub subject: String,
    /// Topics the bearer may publish to.
    pub publish: Vec<TopicMatcher>,
    /// Topics whose private updates the bearer may receive.
    pub subscribe: Vec<TopicMatcher>,
    /// Shown in the bearer's subscription events.
    pub payload: Option<Value>,
}

/// Mints an HS256 draft-08 access token (`typ: at+jwt`) with the claims RFC 9068 asks of an
/// issuer (`iss`, `exp`, `aud`, `sub`, `client_id`, `iat`, `jti`).
pub fn mint_access_hs256(secret: &[u8], grant: &AccessGrant) -> String {
    let detail = |action: &str, matchers: &[TopicMatcher], payload: Option<&Value>| {
        let mut detail = json!({
            "type": DETAIL_TYPE,
            "actions": [action],
            "topics": matchers.iter().map(TopicMatcher::to_json).collect::<Vec<_>>(),
        });
        if let Some(payload) = payload {
            detail["payload"] = payload.clone();
        }
        detail
    };
    let mut details = Vec::new();
    if !grant.publish.is_empty() {
        details.push(detail("publish", &grant.publish, None));
    }
    if !grant.subscribe.is_empty() {
        details.push(detail("subscribe", &grant.subscribe, grant.payload.as_ref()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = json!({
        "iss": grant.issuer,
        "aud": grant.audience,
        "sub": grant.subject,
        "client_id": grant.issuer,
        "iat": now,
        "exp": grant.exp,
        "jti": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "authorization_details": details,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".to_owned());
    crate::signing::sign(secret, &header, &claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Url {
        "https://hub.example/.well-known/mercure".parse().unwrap()
    }

    #[test]
    fn a_malformed_mercure_detail_refuses_the_whole_token() {
        let limits = Limits::default();
        let detail = |value: Value| parse(&[value], &hub(), &limits);
        let ok = json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "*"}]});
        assert!(detail(ok).unwrap().subscribe[0].is_any());
        for (broken, why) in [
            (json!({"type": DETAIL_TYPE, "actions": [], "topics": [{"match": "*"}]}), "actions"),
            (json!({"type": DETAIL_TYPE, "actions": [1], "topics": [{"match": "*"}]}), "string"),
            (json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": "*"}), "topics"),
            (
                json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "*", "match_type": "regex"}]}),
                "match_type",
            ),
            (
                json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{"match": "https://[", "match_type": "urlpattern"}]}),
                "URL pattern",
            ),
            (json!({"type": DETAIL_TYPE, "actions": ["subscribe"], "topics": [{}]}), "match"),
            (json!("a string"), "not an object"),
        ] {
            let error = detail(broken.clone()).unwrap_err();
            assert!(error.contains(why), "{broken}: {error}");
        }
        // Unknown actions and other types of detail are skipped, not refused.
        let skipped = parse(
            &[
                json!({"type": "https://other.example"}),
                json!({"type": DETAIL_TYPE, "actions": ["read"], "topics": [{"match": "*"}]}),
            ],
            &hub(),
            &limits,
        )
        .unwrap();
        assert!(skipped.publish.is_empty() && skipped.subscribe.is_empty());
    }
}
