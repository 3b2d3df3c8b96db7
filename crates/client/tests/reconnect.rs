//! The client against a local server that misbehaves on purpose: drops connections at chosen
//! points, asks for a `retry`, redirects, and answers 204, 404 or the wrong content type.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get};
use futures_util::{StreamExt, stream};
use sluice_client::{Disconnect, Error, EventSource, Item, ReadyState};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    method: Method,
    last_event_id: Option<String>,
    accept: Option<String>,
    cache_control: Option<String>,
    custom: Option<String>,
    at: Instant,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Seen>>>);

impl Log {
    fn record(&self, path: &str, method: &Method, headers: &HeaderMap) -> usize {
        let get = |name: &str| {
            headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let mut log = self.0.lock().unwrap();
        log.push(Seen {
            path: path.to_owned(),
            method: method.clone(),
            last_event_id: get("last-event-id"),
            accept: get("accept"),
            cache_control: get("cache-control"),
            custom: get("x-custom"),
            at: Instant::now(),
        });
        log.iter().filter(|s| s.path == path).count()
    }

    fn of(&self, path: &str) -> Vec<Seen> {
        self.0.lock().unwrap().iter().filter(|s| s.path == path).cloned().collect()
    }
}

fn event_stream(chunks: Vec<String>, then: Then) -> Response {
    let body = stream::iter(chunks.into_iter().map(|c| Ok::<_, std::io::Error>(Bytes::from(c))));
    let body = match then {
        Then::End => Body::from_stream(body),
        // The pause lets the server flush what came before: the break comes after the events.
        Then::Abort => Body::from_stream(body.chain(stream::once(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(std::io::Error::other("connection dropped on purpose"))
        }))),
        Then::Stall => Body::from_stream(body.chain(stream::pending())),
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

#[derive(Clone, Copy)]
enum Then {
    End,
    Abort,
    Stall,
}

/// Numbered events resuming after Last-Event-ID; each connection sends three, then odd
/// connections end the body normally and even ones break it.
async fn counter(State(log): State<Log>, method: Method, headers: HeaderMap) -> Response {
    let connection = log.record("/counter", &method, &headers);
    let after: u32 =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    let events = (after + 1..=after + 3).map(|n| format!("id: {n}\ndata: event {n}\n\n")).collect();
    event_stream(events, if connection % 2 == 1 { Then::End } else { Then::Abort })
}

async fn slow_retry(State(log): State<Log>, method: Method, headers: HeaderMap) -> Response {
    log.record("/retry", &method, &headers);
    event_stream(vec!["retry: 300\n\ndata: tick\n\n".into()], Then::End)
}

async fn stall(State(log): State<Log>, method: Method, headers: HeaderMap) -> Response {
    let n = log.record("/stall", &method, &headers);
    event_stream(vec![format!("id: s{n}\ndata: before the stall\n\n")], Then::Stall)
}

async fn clear_id(State(log): State<Log>, method: Method, headers: HeaderMap) -> Response {
    log.record("/clear-id", &method, &headers);
    event_stream(vec!["id: 5\ndata: a\n\nid\ndata: b\n\n".into()], Then::End)
}

async fn echo(State(log): State<Log>, method: Method, headers: HeaderMap, body: Bytes) -> Response {
    log.record("/echo", &method, &headers);
    let data = format!("{method} {}", String::from_utf8_lossy(&body));
    let mut response = event_stream(vec![format!("data: {data}\n\n")], Then::End);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, "Text/Event-Stream; charset=utf-8".parse().unwrap());
    response
}

async fn status(Path(code): Path<u16>) -> Response {
    (StatusCode::from_u16(code).unwrap(), format!("no stream here ({code})")).into_response()
}

/// A redirect with no `Location` at all.
async fn redirect_nowhere(State(log): State<Log>, method: Method, headers: HeaderMap) -> Response {
    log.record("/redirect-nowhere", &method, &headers);
    StatusCode::FOUND.into_response()
}

/// A redirect whose `Location` is empty (which names the same URL: a loop).
async fn redirect_empty(State(log): State<Log>, method: Method, headers: HeaderMap) -> Response {
    log.record("/redirect-empty", &method, &headers);
    (StatusCode::FOUND, [(header::LOCATION, "")]).into_response()
}

async fn start() -> (String, Log) {
    let log = Log::default();
    let app = Router::new()
        .route("/counter", get(counter))
        .route("/retry", get(slow_retry))
        .route("/stall", get(stall))
        .route("/clear-id", get(clear_id))
        .route("/echo", any(echo))
        .route("/redirect", get(|| async { Redirect::temporary("/counter") }))
        .route("/redirect-nowhere", get(redirect_nowhere))
        .route("/redirect-empty", get(redirect_empty))
        .route("/status/{code}", get(status))
        .route("/wrong-type", get(|| async { ([(header::CONTENT_TYPE, "text/plain")], "hello") }))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), log)
}

/// Collects the data of the first `n` messages, and how many opens and reconnects it took.
async fn take_messages(
    source: &mut EventSource,
    n: usize,
) -> (Vec<String>, usize, Vec<Disconnect>) {
    let (mut data, mut opens, mut causes) = (Vec::new(), 0, Vec::new());
    while data.len() < n {
        match source.next().await.expect("stream ended early").expect("stream failed") {
            Item::Open => opens += 1,
            Item::Message(event) => data.push(format!("{}={}", event.last_event_id, event.data)),
            Item::Reconnecting { cause, .. } => causes.push(cause),
        }
    }
    (data, opens, causes)
}

#[tokio::test]
async fn resumes_across_ends_and_breaks_losing_and_repeating_nothing() {
    let (url, log) = start().await;
    let mut source = EventSource::get(&format!("{url}/counter"))
        .retry(Duration::from_millis(5))
        .build()
        .unwrap();
    let (data, opens, causes) = take_messages(&mut source, 12).await;
    let want: Vec<String> = (1..=12).map(|n| format!("{n}=event {n}")).collect();
    assert_eq!(data, want);
    assert_eq!(opens, 4);
    assert!(matches!(causes[0], Disconnect::Ended), "{causes:?}");
    assert!(matches!(causes[1], Disconnect::Network(_)), "{causes:?}");
    let sent: Vec<_> = log.of("/counter").iter().map(|s| s.last_event_id.clone()).collect();
    assert_eq!(sent[..4], [None, Some("3".into()), Some("6".into()), Some("9".into())]);
}

#[tokio::test]
async fn sends_the_eventsource_headers_and_custom_ones() {
    let (url, log) = start().await;
    let mut source = EventSource::get(&format!("{url}/counter"))
        .header("X-Custom", "yes")
        .last_event_id("41")
        .build()
        .unwrap();
    let (data, _, _) = take_messages(&mut source, 1).await;
    assert_eq!(data, ["42=event 42"]);
    let seen = &log.of("/counter")[0];
    assert_eq!(seen.accept.as_deref(), Some("text/event-stream"));
    assert_eq!(seen.cache_control.as_deref(), Some("no-cache"));
    assert_eq!(seen.custom.as_deref(), Some("yes"));
    assert_eq!(seen.last_event_id.as_deref(), Some("41"));
}

#[tokio::test]
async fn an_id_cleared_by_the_server_is_not_sent_on_reconnect() {
    let (url, log) = start().await;
    let mut source = EventSource::get(&format!("{url}/clear-id"))
        .retry(Duration::from_millis(5))
        .build()
        .unwrap();
    let (data, _, _) = take_messages(&mut source, 3).await;
    assert_eq!(data, ["5=a", "=b", "5=a"]);
    let seen = log.of("/clear-id");
    assert_eq!(seen[1].last_event_id, None, "an empty last event id must not be sent");
}

#[tokio::test]
async fn honours_the_servers_retry() {
    let (url, log) = start().await;
    let mut source =
        EventSource::get(&format!("{url}/retry")).retry(Duration::from_millis(1)).build().unwrap();
    let mut delays = Vec::new();
    while log.of("/retry").len() < 3 {
        if let Item::Reconnecting { delay, .. } = source.next().await.unwrap().unwrap() {
            delays.push(delay);
        }
    }
    let seen = log.of("/retry");
    for pair in seen.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(150), "reconnected after {gap:?}, retry was 300 ms");
    }
    assert!(
        delays.iter().all(|d| *d >= Duration::from_millis(150) && *d <= Duration::from_millis(300))
    );
}

#[tokio::test]
async fn follows_redirects() {
    let (url, log) = start().await;
    let mut source = EventSource::get(&format!("{url}/redirect")).build().unwrap();
    let (data, _, _) = take_messages(&mut source, 2).await;
    assert_eq!(data, ["1=event 1", "2=event 2"]);
    assert_eq!(log.of("/counter").len(), 1);
}

/// Issue 18: a redirect that goes nowhere (no `Location`, or an empty one that names the same
/// URL) is a network error, as the WHATWG rules make it for a browser's EventSource: the
/// client reconnects after its delay, with backoff, rather than stopping for good or looping.
#[tokio::test]
async fn a_redirect_to_nowhere_is_a_network_error_that_reconnects() {
    let (url, log) = start().await;
    for path in ["/redirect-nowhere", "/redirect-empty"] {
        let mut source = EventSource::get(&format!("{url}{path}"))
            .retry(Duration::from_millis(50))
            .build()
            .unwrap();
        let mut delays = Vec::new();
        while delays.len() < 3 {
            match source.next().await.expect("it goes on") {
                Ok(Item::Reconnecting { delay, cause }) => {
                    assert!(matches!(cause, Disconnect::Redirect(_)), "{path}: {cause:?}");
                    delays.push(delay);
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert!(delays[2] > delays[0], "{path}: backs off: {delays:?}");
        source.close();
        let requests = log.of(path).len();
        assert!((3..=12).contains(&requests), "{path}: no loop: {requests} requests");
    }
}

#[tokio::test]
async fn posts_a_body_and_accepts_content_type_parameters() {
    let (url, log) = start().await;
    let mut source = EventSource::post(&format!("{url}/echo"), "question")
        .header("Content-Type", "text/plain")
        .reconnect(false)
        .build()
        .unwrap();
    let (data, _, _) = take_messages(&mut source, 1).await;
    assert_eq!(data, ["=POST question"]);
    assert!(source.next().await.is_none(), "a normal end without reconnection ends the stream");
    assert_eq!(source.ready_state(), ReadyState::Closed);
    assert_eq!(log.of("/echo")[0].method, Method::POST);
}

#[tokio::test]
async fn a_read_timeout_reconnects_and_resumes() {
    let (url, log) = start().await;
    let mut source = EventSource::get(&format!("{url}/stall"))
        .retry(Duration::from_millis(5))
        .read_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let (data, _, causes) = take_messages(&mut source, 2).await;
    assert_eq!(data, ["s1=before the stall", "s2=before the stall"]);
    assert!(matches!(causes[..], [Disconnect::ReadTimeout(_)]), "{causes:?}");
    assert_eq!(log.of("/stall")[1].last_event_id.as_deref(), Some("s1"));
}

async fn fatal(url: String) -> Error {
    let mut source = EventSource::get(&url).retry(Duration::from_millis(1)).build().unwrap();
    let error = loop {
        match source.next().await.expect("the stream must fail, not end") {
            Ok(Item::Reconnecting { cause, .. }) => panic!("must not reconnect: {cause}"),
            Ok(_) => {}
            Err(error) => break error,
        }
    };
    assert!(source.next().await.is_none(), "nothing after a fatal error");
    assert_eq!(source.ready_state(), ReadyState::Closed);
    error
}

#[tokio::test]
async fn other_statuses_and_types_stop_for_good() {
    let (url, _) = start().await;
    for code in [204, 404, 500] {
        match fatal(format!("{url}/status/{code}")).await {
            Error::Status { status, body } => {
                assert_eq!(status.as_u16(), code);
                if code != 204 {
                    assert_eq!(body, format!("no stream here ({code})"));
                }
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    match fatal(format!("{url}/wrong-type")).await {
        Error::ContentType { content_type, body } => {
            assert_eq!(content_type.as_deref(), Some("text/plain"));
            assert_eq!(body, "hello");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_refused_connection_backs_off_then_close_stops() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let mut source = EventSource::get(&url)
        .retry(Duration::from_millis(4))
        .max_backoff(Duration::from_millis(64))
        .build()
        .unwrap();
    let mut delays = Vec::new();
    while delays.len() < 8 {
        match source.next().await.unwrap() {
            Ok(Item::Reconnecting { delay, cause: Disconnect::Network(_) }) => delays.push(delay),
            other => panic!("{other:?}"),
        }
    }
    // Doubling per failure, jittered into the upper half, capped at 64 ms.
    for (n, delay) in delays.iter().enumerate() {
        let ceiling = Duration::from_millis((4u64 << n).min(64));
        assert!(*delay >= ceiling / 2 && *delay <= ceiling, "attempt {n}: {delay:?}");
    }
    assert_eq!(source.ready_state(), ReadyState::Connecting);
    source.close();
    assert_eq!(source.ready_state(), ReadyState::Closed);
    assert!(source.next().await.is_none());
}

#[tokio::test]
async fn without_reconnection_a_broken_connection_is_an_error() {
    let (url, _) = start().await;
    // The first connection to /counter ends normally; reach the second, which breaks.
    let mut source =
        EventSource::get(&format!("{url}/counter")).last_event_id("0").build().unwrap();
    take_messages(&mut source, 3).await;
    drop(source);
    let mut source = EventSource::get(&format!("{url}/counter")).reconnect(false).build().unwrap();
    take_messages(&mut source, 3).await;
    match source.next().await {
        Some(Err(Error::Disconnected(Disconnect::Network(_)))) => {}
        other => panic!("{other:?}"),
    }
    assert!(source.next().await.is_none());
}

#[tokio::test]
async fn invalid_settings_are_refused_before_connecting() {
    assert!(matches!(EventSource::get("not a url").build(), Err(Error::Invalid(_))));
    let bad_header = EventSource::get("http://127.0.0.1:1/").header("X-Bad", "a\nb").build();
    assert!(matches!(bad_header, Err(Error::Invalid(_))));
}
