//! Waiting on `GET /admin/usage`: tokens are spent just after an answer ends, by a task of
//! their own, so a test polls until the entry it watches gets there.

#![allow(dead_code)] // only the keys and end-user tests read usage

use std::time::Duration;

use serde_json::Value;

/// The entry of `GET /admin/usage` a test waits on.
pub(crate) enum Who<'a> {
    /// The key of this name.
    Key(&'a str),
    /// The end-user token's subject.
    Subject(&'a str),
}

/// Polls `{url}/admin/usage` (with the admin key `admin`) until `who`'s entry satisfies
/// `done`; returns it.
pub(crate) async fn usage_when(
    url: &str,
    admin: &str,
    who: Who<'_>,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let (list, field, id) = match who {
        Who::Key(name) => ("keys", "name", name),
        Who::Subject(subject) => ("subjects", "subject", subject),
    };
    let client = reqwest::Client::new();
    let mut last = Value::Null;
    for _ in 0..600 {
        let request = client.get(format!("{url}/admin/usage")).bearer_auth(admin);
        let usage: Value = request.send().await.unwrap().json().await.unwrap();
        let entries = usage[list].as_array().unwrap();
        if let Some(found) = entries.iter().find(|e| e[field] == id) {
            if done(found) {
                return found.clone();
            }
            last = found.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the usage of {id} never got there: {last}");
}
