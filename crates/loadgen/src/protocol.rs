//! The hubs the load generator drives, and how each is spoken to: Mercure (Sluice, or any
//! Mercure hub), Nchan (nginx's pub/sub module, Sluice's peer in BENCHMARKS.md) and Durable
//! Streams (Sluice's `/v1/stream/`, or the protocol's reference server), read live over SSE.
//!
//! All get the same subscribers (raw HTTP/1.1 `GET`s with `Accept: text/event-stream`), the
//! same publish schedule and the same measurement: the publish time travels in each update's
//! data, so only the way a topic is named, subscribed to and published to differs.
//!
//! ```
//! use sluice_loadgen::protocol::HubProtocol;
//! # let url: reqwest::Url = "http://127.0.0.1:8090/".parse().unwrap();
//! assert_eq!(HubProtocol::Nchan.subscribe_path(&url, "bench", None), "/sub/bench");
//! assert_eq!(HubProtocol::Nchan.subscribe_path(&url, "bench", Some(7)), "/sub/bench-7");
//! assert_eq!(HubProtocol::Nchan.topic("bench", Some(7)), "bench-7");
//! # let url: reqwest::Url = "http://127.0.0.1:8080/v1/stream".parse().unwrap();
//! // A durable stream is read from an offset, which each reader appends.
//! assert_eq!(
//!     HubProtocol::Durable.subscribe_path(&url, "bench", None),
//!     "/v1/stream/bench?live=sse&offset="
//! );
//! ```

use reqwest::Url;
use serde::{Deserialize, Serialize};

use crate::stamp::{stamped_data, stamped_json};

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
    /// A Durable Streams server whose streams live under the URL's path: the topic is a JSON
    /// stream (`PUT` before anyone reads it), an update is a `POST` of one JSON message
    /// ([`stamped_json`]), and a subscriber reads `GET <stream>?live=sse&offset=O` from `now`,
    /// and after the server ends its response, from the last offset it was given.
    Durable,
}

impl HubProtocol {
    /// The name used in results and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            HubProtocol::Mercure => "mercure",
            HubProtocol::Nchan => "nchan",
            HubProtocol::Durable => "durable",
        }
    }

    /// The topic (Mercure), channel id (Nchan) or stream name (Durable Streams) of topic
    /// number `index` of `base`, or of `base` itself when there is one topic. Nchan and
    /// Durable Streams take it from a path segment, so anything but `[A-Za-z0-9._-]` becomes
    /// `_`.
    pub fn topic(self, base: &str, index: Option<u64>) -> String {
        match (self, index) {
            (HubProtocol::Mercure, None) => base.to_owned(),
            (HubProtocol::Mercure, Some(n)) => format!("{base}/{n}"),
            (HubProtocol::Nchan | HubProtocol::Durable, None) => channel(base),
            (HubProtocol::Nchan | HubProtocol::Durable, Some(n)) => {
                format!("{}-{n}", channel(base))
            }
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
            HubProtocol::Durable => {
                format!("{}?live=sse&offset=", stream_url(url, topic).path())
            }
        }
    }

    /// What `data` (a stamp from [`stamped_data`], padded to the message size) is sent as:
    /// itself, or for Durable Streams the JSON message [`stamped_json`] of the same size.
    pub fn payload(self, sent_nanos: u64, step: u32, size: usize) -> String {
        match self {
            HubProtocol::Mercure | HubProtocol::Nchan => stamped_data(sent_nanos, step, size),
            HubProtocol::Durable => stamped_json(sent_nanos, step, size),
        }
    }

    /// The request that makes `topic` ready to be subscribed to, if it needs one: a Durable
    /// stream is created (`PUT`, JSON mode; an existing one with the same settings is fine).
    pub fn prepare(
        self,
        client: &reqwest::Client,
        url: &Url,
        topic: &str,
    ) -> Option<reqwest::RequestBuilder> {
        (self == HubProtocol::Durable)
            .then(|| client.put(stream_url(url, topic)).header("content-type", "application/json"))
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
            HubProtocol::Durable => client
                .post(stream_url(url, topic))
                .header("content-type", "application/json")
                .body(data),
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
            "durable" => Ok(HubProtocol::Durable),
            other => Err(format!("unknown hub protocol {other:?} (mercure, nchan or durable)")),
        }
    }
}

/// The URL of the stream `name` under the streams' root `root` (`http://h/v1/stream`).
pub fn stream_url(root: &Url, name: &str) -> Url {
    let mut url = root.clone();
    url.set_path(&format!("{}/{name}", root.path().trim_end_matches('/')));
    url.set_query(None);
    url
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
    fn durable_streams_are_created_then_read_from_an_offset() {
        let url = Url::parse("http://127.0.0.1:8080/v1/stream/").unwrap();
        let p = HubProtocol::Durable;
        assert_eq!(p.topic("bench/a", None), "bench_a");
        assert_eq!(p.subscribe_path(&url, "bench", None), "/v1/stream/bench?live=sse&offset=");
        let client = reqwest::Client::new();
        let create = p.prepare(&client, &url, "bench").unwrap().build().unwrap();
        assert_eq!(create.method(), reqwest::Method::PUT);
        assert_eq!(create.url().as_str(), "http://127.0.0.1:8080/v1/stream/bench");
        let data = p.payload(1_000, 3, 100);
        assert_eq!(data.len(), 100);
        let message: serde_json::Value = serde_json::from_str(&data).unwrap();
        assert_eq!(crate::parse_stamp(message["stamp"].as_str().unwrap()), Some((1_000, 3)));
        let append = p.publish(&client, &url, "bench", "", data).build().unwrap();
        assert_eq!(append.url().as_str(), "http://127.0.0.1:8080/v1/stream/bench");
        assert_eq!(append.headers()["content-type"], "application/json");
        assert!(HubProtocol::Mercure.prepare(&client, &url, "bench").is_none());
    }

    #[test]
    fn parses_names() {
        assert_eq!("durable".parse::<HubProtocol>().unwrap(), HubProtocol::Durable);
        assert_eq!("nchan".parse::<HubProtocol>().unwrap(), HubProtocol::Nchan);
        assert_eq!("mercure".parse::<HubProtocol>().unwrap(), HubProtocol::Mercure);
        assert!("redis".parse::<HubProtocol>().is_err());
    }
}
