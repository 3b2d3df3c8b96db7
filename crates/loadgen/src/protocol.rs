//! The hubs the load generator drives, and how each is spoken to: Mercure (Sluice, or any
//! Mercure hub) and Nchan (nginx's pub/sub module, Sluice's peer in BENCHMARKS.md).
//!
//! Both get the same subscribers (raw HTTP/1.1 `GET`s with `Accept: text/event-stream`), the
//! same publish schedule and the same measurement: the publish time travels in each update's
//! data, so only the way a topic is named, subscribed to and published to differs.
//!
//! ```
//! use sluice_loadgen::protocol::HubProtocol;
//! # let url: reqwest::Url = "http://127.0.0.1:8090/".parse().unwrap();
//! assert_eq!(HubProtocol::Nchan.subscribe_path(&url, "bench", None), "/sub/bench");
//! assert_eq!(HubProtocol::Nchan.subscribe_path(&url, "bench", Some(7)), "/sub/bench-7");
//! assert_eq!(HubProtocol::Nchan.topic("bench", Some(7)), "bench-7");
//! ```

use reqwest::Url;
use serde::{Deserialize, Serialize};

/// How to subscribe and publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HubProtocol {
    /// A Mercure hub: `GET <hub>?topic=T` to subscribe, a form `POST <hub>` (`topic`, `data`)
    /// with a publisher JWT to publish.
    #[default]
    Mercure,
    /// Nchan with an EventSource subscriber location `GET /sub/<channel>` and a publisher
    /// location `POST /pub/<channel>` whose body is the data (as in
    /// `bench/peers/nchan.conf.template`). The hub URL's path is the prefix of both.
    Nchan,
}

impl HubProtocol {
    /// The name used in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HubProtocol::Mercure => "mercure",
            HubProtocol::Nchan => "nchan",
        }
    }

    /// The topic (Mercure) or channel id (Nchan) of topic number `index` of `base`, or of
    /// `base` itself when there is one topic. Nchan takes its channel id from a path segment,
    /// so anything but `[A-Za-z0-9._-]` becomes `_`.
    pub fn topic(self, base: &str, index: Option<u64>) -> String {
        match (self, index) {
            (HubProtocol::Mercure, None) => base.to_owned(),
            (HubProtocol::Mercure, Some(n)) => format!("{base}/{n}"),
            (HubProtocol::Nchan, None) => channel(base),
            (HubProtocol::Nchan, Some(n)) => format!("{}-{n}", channel(base)),
        }
    }

    /// The path and query of a subscription to topic `index` of `base` on the hub at `url`.
    /// The topic's number always comes last, so a worker given the path of topic 0 without
    /// its number (see [`HubProtocol::subscribe_prefix`]) can append any other.
    pub fn subscribe_path(self, url: &Url, base: &str, index: Option<u64>) -> String {
        match index {
            None => self.subscribe_with(url, &self.topic(base, None)),
            Some(n) => format!("{}{n}", self.subscribe_prefix(url, base)),
        }
    }

    /// The path and query of a subscription to topic number N of `base`, without N.
    pub fn subscribe_prefix(self, url: &Url, base: &str) -> String {
        let topic_zero = self.topic(base, Some(0));
        let topic_prefix = &topic_zero[..topic_zero.len() - 1];
        self.subscribe_with(url, topic_prefix)
    }

    fn subscribe_with(self, url: &Url, topic: &str) -> String {
        match self {
            HubProtocol::Mercure => {
                let mut url = url.clone();
                url.query_pairs_mut().append_pair("topic", topic);
                match url.query() {
                    Some(query) => format!("{}?{query}", url.path()),
                    None => url.path().to_owned(),
                }
            }
            HubProtocol::Nchan => format!("{}/sub/{topic}", url.path().trim_end_matches('/')),
        }
    }

    /// A publish request of `data` to `topic` (as made by [`HubProtocol::topic`]).
    pub fn publish(
        self,
        client: &reqwest::Client,
        url: &Url,
        topic: &str,
        token: &str,
        data: String,
    ) -> reqwest::RequestBuilder {
        match self {
            HubProtocol::Mercure => client
                .post(url.clone())
                .bearer_auth(token)
                .form(&[("topic", topic), ("data", data.as_str())]),
            HubProtocol::Nchan => {
                let mut url = url.clone();
                let path = format!("{}/pub/{topic}", url.path().trim_end_matches('/'));
                url.set_path(&path);
                url.set_query(None);
                client.post(url).header("content-type", "text/plain").body(data)
            }
        }
    }

    /// Whether publishing needs a token.
    pub fn needs_token(self) -> bool {
        self == HubProtocol::Mercure
    }
}

impl std::str::FromStr for HubProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mercure" | "sluice" => Ok(HubProtocol::Mercure),
            "nchan" => Ok(HubProtocol::Nchan),
            other => Err(format!("unknown hub protocol {other:?} (mercure or nchan)")),
        }
    }
}

fn channel(topic: &str) -> String {
    topic
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mercure_paths_end_with_the_topic_number() {
        let url = Url::parse("http://127.0.0.1:8080/.well-known/mercure").unwrap();
        let p = HubProtocol::Mercure;
        assert_eq!(
            p.subscribe_path(&url, "https://example.com/a b", None),
            "/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fa+b"
        );
        assert_eq!(
            p.subscribe_path(&url, "https://example.com/bench", Some(42)),
            "/.well-known/mercure?topic=https%3A%2F%2Fexample.com%2Fbench%2F42"
        );
        assert_eq!(p.topic("https://example.com/bench", Some(42)), "https://example.com/bench/42");
    }

    #[test]
    fn nchan_channels_are_path_segments() {
        let url = Url::parse("http://127.0.0.1:8090").unwrap();
        let p = HubProtocol::Nchan;
        assert_eq!(p.topic("https://example.com/bench", None), "https___example.com_bench");
        assert_eq!(p.subscribe_path(&url, "bench", Some(3)), "/sub/bench-3");
        let client = reqwest::Client::new();
        let request = p.publish(&client, &url, "bench-3", "", "x".into()).build().unwrap();
        assert_eq!(request.url().as_str(), "http://127.0.0.1:8090/pub/bench-3");
        assert!(request.headers().get("authorization").is_none());
    }

    #[test]
    fn parses_names() {
        assert_eq!("nchan".parse::<HubProtocol>().unwrap(), HubProtocol::Nchan);
        assert_eq!("mercure".parse::<HubProtocol>().unwrap(), HubProtocol::Mercure);
        assert!("redis".parse::<HubProtocol>().is_err());
    }
}
