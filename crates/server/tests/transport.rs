//! HTTPS and HTTP/2: TLS from certificate files (re-read in place), HTTP/2 by ALPN and with
//! prior knowledge, event streams over HTTP/2 (unbuffered, kept alive), subscriptions over
//! HTTP/1.1 and TLS served past hyper, answers served past hyper on kept-alive HTTP/1.1
//! connections (plain and TLS), and an HTTP/2 stream reset cancelling the upstream like a
//! closed connection does.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{StatusCode, Version};
use rustls::pki_types::pem::PemObject;
use sluice_hub::HubConfig;
use sluice_llm::{Attempts, Router, Script, Scripted};
use sluice_server::{CertificateSource, Config, Grant, Timeouts, Tls, Verifier, mint_hs256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SECRET: &[u8] = b"transport secret";

/// A certificate for 127.0.0.1 written to `dir` as `{name}.pem` and `{name}.key`.
fn certificate(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key, made.cert.pem())
}

fn client_trusting(pem: &str) -> reqwest::Client {
    trusting(pem).build().unwrap()
}

/// A client builder that trusts `pem` alone.
fn trusting(pem: &str) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .tls_built_in_root_certs(false)
}

fn scripted(tokens_per_second: f64) -> (Arc<Scripted>, Router) {
    let scripted =
        Arc::new(Scripted::new("scripted", Script { tokens_per_second, ..Script::default() }));
    let mut router = Router::new();
    router.add(scripted.clone(), vec!["scripted".into()], Attempts::default());
    (scripted, router)
}

fn config(router: Router, tls: Option<Arc<Tls>>) -> Config {
    Config {
        publisher: Some(Verifier::hs256(SECRET)),
        anonymous: true,
        keep_alive: Duration::from_millis(300),
        models: Arc::new(router),
        tls,
        ..Config::default()
    }
}

/// Publishes `data` to `topic` with a publisher's token; the response, which was 200.
async fn publish(
    client: &reqwest::Client,
    base: &str,
    topic: &str,
    data: &str,
) -> reqwest::Response {
    let token = mint_hs256(SECRET, &Grant { publish: vec!["*".into()], ..Grant::default() });
    let published = client
        .post(format!("{base}/.well-known/mercure"))
        .bearer_auth(&token)
        .form(&[("topic", topic), ("data", data)])
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), StatusCode::OK);
    published
}

/// A server over TLS with `timeouts` and a certificate of its own (in the returned
/// directory): the server, its `https://` base URL and the certificate to trust.
async fn serve_over_tls(
    timeouts: Timeouts,
) -> (tempfile::TempDir, common::Running, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(dir.path(), "a");
    let tls = Arc::new(Tls::new(CertificateSource::Files { cert, key }).unwrap());
    let (_scripted, router) = scripted(0.0);
    let config = Config { timeouts, ..config(router, Some(tls)) };
    let server = common::serve(config, HubConfig::default()).await;
    let base = server.url.replace("http://", "https://");
    (dir, server, base, pem)
}

/// Reads a response body until `needle` has arrived (bounded).
async fn read_until(
    body: &mut (impl futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    needle: &str,
) -> String {
    let mut seen = String::new();
    let read = async {
        while !seen.contains(needle) {
            let chunk = body.next().await.expect("the stream ended").unwrap();
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("it arrives");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_http2_by_alpn_and_streams_events_unbuffered() {
    let (_dir, _server, base, pem) = serve_over_tls(Timeouts::default()).await;
    let client = client_trusting(&pem);

    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.version(), Version::HTTP_2, "h2 is chosen by ALPN");
    let old = trusting(&pem).http1_only().build().unwrap();
    assert_eq!(
        old.get(format!("{base}/healthz")).send().await.unwrap().version(),
        Version::HTTP_11
    );

    // An event stream over HTTP/2: each update arrives before the next is published, and
    // keep-alive comments flow while nothing happens.
    let subscription =
        client.get(format!("{base}/.well-known/mercure?topic=/h2")).send().await.unwrap();
    assert_eq!(subscription.version(), Version::HTTP_2);
    let mut body = subscription.bytes_stream();
    read_until(&mut body, ":").await;
    for n in 0..3 {
        publish(&client, &base, "/h2", &format!("update {n}")).await;
        read_until(&mut body, &format!("data: update {n}\n\n")).await;
    }
    let idle = read_until(&mut body, ":\n").await;
    assert!(idle.starts_with(":"), "a keep-alive comment while idle: {idle:?}");
}

/// Over TLS with HTTP/1.1 (by ALPN), a connection that opens with a subscription is served
/// past hyper, as a plain one is (`connection: close`, a body delimited by the close rather
/// than chunked), and every other first request still reaches hyper whole, body included,
/// with its connection kept alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_subscriber_over_tls_is_served_past_hyper_and_the_rest_by_hyper() {
    let (_dir, _server, base, pem) = serve_over_tls(Timeouts::default()).await;
    let http1 = trusting(&pem).http1_only().build().unwrap();

    let subscription =
        http1.get(format!("{base}/.well-known/mercure?topic=/tls")).send().await.unwrap();
    assert_eq!(subscription.version(), Version::HTTP_11);
    assert_eq!(subscription.headers()["connection"], "close", "served past hyper");
    assert!(!subscription.headers().contains_key("transfer-encoding"));
    assert_eq!(subscription.headers()["content-type"], "text/event-stream");
    let mut body = subscription.bytes_stream();
    read_until(&mut body, ":").await;

    // Publishing opens with a POST and a body: hyper's, with the bytes read to tell put back.
    for n in 0..3 {
        let published = publish(&http1, &base, "/tls", &format!("update {n}")).await;
        assert_eq!(published.version(), Version::HTTP_11);
        assert!(!published.headers().contains_key("connection"), "kept alive");
        read_until(&mut body, &format!("data: update {n}\n\n")).await;
    }

    // A refused subscription gets its JSON error the same way (on a new connection: the
    // kept-alive one above is hyper's for good).
    let fresh = trusting(&pem).http1_only().build().unwrap();
    let refused = fresh.get(format!("{base}/.well-known/mercure")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["connection"], "close");
    let error: serde_json::Value = refused.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("topic"), "{error}");
}

/// A TLS subscriber served past hyper that stops reading is reset at the write bound, as a
/// plain one is (`http.rs`, `a_write_timeout_resets_the_connection`): its task neither waits
/// on it for ever nor keeps its unsent records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_subscriber_that_stops_reading_is_reset_at_the_write_bound() {
    let timeouts = Timeouts { write: Duration::from_secs(1), ..Timeouts::default() };
    let (_dir, _server, base, pem) = serve_over_tls(timeouts).await;
    // The publishes and `/metrics` go over HTTP/1.1, where only a full socket counts against
    // the write bound. Over HTTP/2 a response frame left unsent for 1 s counts too, which a
    // starved process reaches on a loaded machine: once in CI the count below moved before the
    // stalled subscriber's own timeout, and the test then read the subscriber's 12.8 MB
    // through its 4 KiB window, which took longer than its bound.
    let client = trusting(&pem).http1_only().build().unwrap();
    let write_timeouts = || metric(&client, &base, r#"sluice_timeouts_total{wait="write"}"#);
    let before = write_timeouts().await;

    // A raw TLS client with a small receive buffer, which subscribes and then never reads.
    let mut stalled = raw_tls(&pem, &base, Some(4096), &rustls::version::TLS13).await;
    stalled
        .write_all(b"GET /.well-known/mercure?topic=/stall HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("text/event-stream") {
        let mut buffer = [0u8; 1024];
        let n = stalled.read(&mut buffer).await.unwrap();
        assert!(n > 0, "closed before the head: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buffer[..n]);
    }
    assert!(String::from_utf8_lossy(&head).contains("connection: close"), "served past hyper");

    // More than the socket buffers hold, fewer than the subscriber's queue (1,024 updates).
    let big = "x".repeat(64 * 1024);
    for _ in 0..200 {
        publish(&client, &base, "/stall", &big).await;
    }
    let timed_out = async {
        while write_timeouts().await < before + 1.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), timed_out).await.expect("the write times out");
    let ended = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match stalled.read(&mut buffer).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => return Some(error.kind()),
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(30), ended).await.expect("it ends");
    assert_eq!(ended, Some(std::io::ErrorKind::ConnectionReset), "reset, not closed");
}

const WRITTEN_DIRECTLY: &str = "sluice_updates_written_directly_total";

/// A subscription over TLS 1.2 and 1.3 reads every update whole, one larger than a TLS
/// record among them: once its request is read, the server seals its records itself rather
/// than through rustls (`tls/records.rs`, whose own tests cover every suite), its task or the
/// hub's fan-out, and the client (rustls here) checks each one. What the subscriber sends
/// meanwhile is dropped, as over a plain socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_subscriber_reads_every_update_in_both_versions() {
    let (_dir, _server, base, pem) = serve_over_tls(Timeouts::default()).await;
    let client = trusting(&pem).http1_only().build().unwrap();
    let big = "z".repeat(40_000);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let topic = format!("/sealed/{:?}", version.version);
        let mut subscriber = raw_tls(&pem, &base, None, version).await;
        let request = format!("GET /.well-known/mercure?topic={topic} HTTP/1.1\r\nHost: x\r\n\r\n");
        subscriber.write_all(request.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        read_raw_until(&mut subscriber, &mut seen, "text/event-stream").await;
        let direct_before = metric(&client, &base, WRITTEN_DIRECTLY).await;
        for n in 0..3 {
            publish(&client, &base, &topic, &format!("small {n}")).await;
        }
        publish(&client, &base, &topic, &big).await;
        publish(&client, &base, &topic, "last").await;
        read_raw_until(&mut subscriber, &mut seen, "data: last\n\n").await;
        let seen = String::from_utf8(seen).unwrap();
        for n in 0..3 {
            assert!(seen.contains(&format!("data: small {n}\n\n")), "{version:?}");
        }
        assert!(seen.contains(&format!("data: {big}\n\n")), "{version:?}: the big update whole");
        // The fan-out sealed and wrote some of them itself (the subscriber was idle between
        // publishes), as it writes to a plain socket.
        let direct = metric(&client, &base, WRITTEN_DIRECTLY).await - direct_before;
        assert!(direct >= 1.0, "{version:?}: {direct} updates written by the fan-out");
        // Bytes after the request are dropped; the subscription goes on.
        subscriber.write_all(b"ignored").await.unwrap();
        subscriber.flush().await.unwrap();
        publish(&client, &base, &topic, "after").await;
        read_raw_until(&mut subscriber, &mut Vec::new(), "data: after\n\n").await;
    }
}

/// A TLS subscription the server ends (here, by shutting down) ends with a `close_notify`, in
/// both versions: the client (rustls, which reports a close without one as an error) reads a
/// clean end of the stream, not a cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_subscription_the_server_ends_ends_with_a_close_notify() {
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let (_dir, server, base, pem) = serve_over_tls(Timeouts::default()).await;
        let mut subscriber = raw_tls(&pem, &base, None, version).await;
        let request = "GET /.well-known/mercure?topic=/closing HTTP/1.1\r\nHost: x\r\n\r\n";
        subscriber.write_all(request.as_bytes()).await.unwrap();
        read_raw_until(&mut subscriber, &mut Vec::new(), "text/event-stream").await;
        let stopped = tokio::spawn(server.stop());
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), subscriber.read_to_end(&mut rest));
        let ended = read.await.expect("the stream ends");
        assert!(ended.is_ok(), "{version:?}: a clean end, not {ended:?}");
        stopped.await.unwrap();
    }
}

/// Reads `stream` into `seen` until `needle` has arrived (bounded); panics if it closes first.
async fn read_raw_until(stream: &mut (impl AsyncRead + Unpin), seen: &mut Vec<u8>, needle: &str) {
    let read = async {
        while !String::from_utf8_lossy(seen).contains(needle) {
            let mut buffer = [0u8; 8192];
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0, "closed before {needle:?}: {}", String::from_utf8_lossy(seen));
            seen.extend_from_slice(&buffer[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("it arrives");
}

/// The value of the series `series` on the server's `/metrics` (0 while absent).
async fn metric(client: &reqwest::Client, base: &str, series: &str) -> f64 {
    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(series));
    line.map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
}

/// A raw TLS connection (HTTP/1.1 by ALPN) to `base` in `version`, trusting `pem`, with a
/// receive buffer of `recv_buffer` bytes when given.
async fn raw_tls(
    pem: &str,
    base: &str,
    recv_buffer: Option<u32>,
    version: &'static rustls::SupportedProtocolVersion,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let tcp = socket.connect(base.trim_start_matches("https://").parse().unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.unwrap()
}

/// A Chat Completions request as written on the wire, streamed or not.
fn chat_request(stream: bool) -> Vec<u8> {
    let body = serde_json::json!({"model": "scripted", "stream": stream,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads one response from `stream`, with `buf` holding what was read past the previous one:
/// its head (lower-cased) and its body, de-chunked or of its length.
async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut Vec<u8>,
) -> (String, Vec<u8>) {
    async fn fill(stream: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) {
        let mut piece = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut piece));
        let n = read.await.expect("the response arrives").unwrap();
        assert!(n > 0, "closed midway: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&piece[..n]);
    }
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(stream, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    buf.drain(..head_end);
    let mut body = Vec::new();
    if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        loop {
            let line_end = loop {
                if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    break end;
                }
                fill(stream, buf).await;
            };
            let size =
                usize::from_str_radix(&String::from_utf8_lossy(&buf[..line_end]), 16).unwrap();
            while buf.len() < line_end + 2 + size + 2 {
                fill(stream, buf).await;
            }
            assert_eq!(
                &buf[line_end + 2 + size..line_end + 4 + size],
                b"\r\n",
                "a chunk ends its line"
            );
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 4 + size);
            if size == 0 {
                return (head, body);
            }
        }
    }
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .map_or(0, |length| length.trim().parse::<usize>().unwrap());
    while buf.len() < length {
        fill(stream, buf).await;
    }
    body.extend(buf.drain(..length));
    (head, body)
}

/// On one kept-alive HTTP/1.1 connection: a streamed answer (chunked, served past hyper), a
/// whole one, a request pipelined behind a streamed answer (kept while it streams, served
/// after it), and then a request that is hyper's, on the same connection.
async fn answers_on_one_connection(mut connection: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buf = Vec::new();
    connection.write_all(&chat_request(true)).await.unwrap();
    let (head, body) = read_response(&mut connection, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.contains(r#""delta":{"content":"#) && body.ends_with("data: [DONE]\n\n"),
        "{body}"
    );

    connection.write_all(&chat_request(false)).await.unwrap();
    let (head, body) = read_response(&mut connection, &mut buf).await;
    assert!(head.starts_with("http/1.1 200") && !head.contains("connection: close"), "{head}");
    let whole: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(whole["object"], "chat.completion", "{whole}");

    let mut two = chat_request(true);
    two.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    connection.write_all(&two).await.unwrap();
    let (_, streamed) = read_response(&mut connection, &mut buf).await;
    assert!(streamed.ends_with(b"data: [DONE]\n\n"));
    let (head, _) = read_response(&mut connection, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "the pipelined request is answered: {head}");

    connection.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (head, _) = read_response(&mut connection, &mut buf).await;
    assert!(head.starts_with("http/1.1 200"), "hyper answers on the same connection: {head}");
    assert!(buf.is_empty(), "nothing more was sent: {:?}", String::from_utf8_lossy(&buf));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_served_past_hyper_on_a_kept_alive_connection() {
    let (_scripted, router) = scripted(0.0);
    let server = common::serve(config(router, None), HubConfig::default()).await;
    let addr = server.url.trim_start_matches("http://");
    answers_on_one_connection(tokio::net::TcpStream::connect(addr).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_served_past_hyper_on_a_kept_alive_tls_connection() {
    let (_dir, _server, base, pem) = serve_over_tls(Timeouts::default()).await;
    answers_on_one_connection(raw_tls(&pem, &base, None, &rustls::version::TLS13).await).await;
}

/// An answer's body that stops arriving midway is refused with its JSON 408 at the body's
/// wait bound, and the connection closes; one asked to close does after its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_answer_body_is_refused_and_a_closing_client_is_closed() {
    let (_scripted, router) = scripted(0.0);
    let timeouts = Timeouts { request_body: Duration::from_millis(300), ..Timeouts::default() };
    let server =
        common::serve(Config { timeouts, ..config(router, None) }, HubConfig::default()).await;
    let addr = server.url.trim_start_matches("http://");

    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = chat_request(true);
    stalled.write_all(&request[..request.len() - 5]).await.unwrap();
    let mut buf = Vec::new();
    let (head, body) = read_response(&mut stalled, &mut buf).await;
    assert!(head.starts_with("http/1.1 408") && head.contains("connection: close"), "{head}");
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
    assert_eq!(stalled.read(&mut [0u8; 16]).await.unwrap(), 0, "closed after");

    let mut closing = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = String::from_utf8(chat_request(true)).unwrap();
    let request = request.replacen("Host: x\r\n", "Host: x\r\nConnection: close\r\n", 1);
    closing.write_all(request.as_bytes()).await.unwrap();
    let mut whole = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), closing.read_to_end(&mut whole));
    read.await.expect("the connection closes").unwrap();
    let whole = String::from_utf8(whole).unwrap();
    assert!(
        whole.contains("connection: close\r\n") && whole.ends_with("data: [DONE]\n\n"),
        "{whole}"
    );
}

/// A connection kept alive after an answer served past hyper, with no next request, is
/// closed at the idle bound, as hyper's are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_with_no_next_request_closes_at_the_idle_bound() {
    let (_scripted, router) = scripted(0.0);
    let timeouts = Timeouts { idle_connection: Duration::from_millis(300), ..Timeouts::default() };
    let server =
        common::serve(Config { timeouts, ..config(router, None) }, HubConfig::default()).await;
    let mut connection =
        tokio::net::TcpStream::connect(server.url.trim_start_matches("http://")).await.unwrap();
    connection.write_all(&chat_request(true)).await.unwrap();
    let mut buf = Vec::new();
    let (head, _) = read_response(&mut connection, &mut buf).await;
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    let started = std::time::Instant::now();
    let mut rest = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(20), connection.read(&mut rest));
    assert_eq!(read.await.expect("the server closes it").unwrap(), 0, "closed, nothing sent");
    assert!(started.elapsed() >= Duration::from_millis(250), "not before the idle bound");
}

/// Shutdown waits for an answer served past hyper to finish, as it does for hyper's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_an_answer_in_flight_finish() {
    let (scripted, router) = scripted(10.0);
    let server = common::serve(config(router, None), HubConfig::default()).await;
    let mut connection =
        tokio::net::TcpStream::connect(server.url.trim_start_matches("http://")).await.unwrap();
    connection.write_all(&chat_request(true)).await.unwrap();
    let mut first = [0u8; 64];
    assert!(connection.read(&mut first).await.unwrap() > 0, "the answer began");
    let stopped = tokio::spawn(server.stop());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), connection.read_to_end(&mut rest));
    read.await.expect("the connection closes after the answer").unwrap();
    assert!(
        rest.ends_with(b"data: [DONE]\n\n\r\n0\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
    assert_eq!(scripted.stats().finished(), 1, "the upstream ran to its end");
    stopped.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_on_the_cleartext_port() {
    let (_scripted, router) = scripted(0.0);
    let server = common::serve(config(router, None), HubConfig::default()).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = client.get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
}

/// A client that stops reading an answer over HTTP/2 resets its stream (RST_STREAM), not the
/// connection: the upstream is cancelled at once, and the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_cancels_the_upstream() {
    let (scripted, router) = scripted(5.0);
    let server = common::serve(config(router, None), HubConfig::default()).await;
    let client = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let body = serde_json::json!({"model": "scripted", "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let response = client
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), Version::HTTP_2);
    let mut chunks = response.bytes_stream();
    // The first text, not the role chunk: that one goes out before the upstream is asked, and
    // a stream dropped then has no upstream request to cancel yet.
    read_until(&mut chunks, r#""delta":{"content":""#).await;
    drop(chunks);
    let cancelled = async {
        while scripted.stats().cancelled() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), cancelled)
        .await
        .expect("the upstream is cancelled");
    let next = client.get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(next.status(), StatusCode::OK, "the connection serves on");
}

/// An HTTP/2 subscription to `topic` on `server` whose stream window (1 KiB) is never opened
/// again: the client reads what arrives but releases no capacity, as a subscriber that stops
/// reading does. The connection's handle (for more requests on it) and the body.
async fn stalled_h2_subscriber(
    url: &str,
    topic: &str,
) -> (h2::client::SendRequest<Bytes>, h2::RecvStream) {
    let tcp = tokio::net::TcpStream::connect(url.trim_start_matches("http://")).await.unwrap();
    let (mut client, connection) =
        h2::client::Builder::new().initial_window_size(1024).handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = axum::http::Request::get(format!("{url}/.well-known/mercure?topic={topic}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    (client, response.into_body())
}

/// Reads `body`, releasing no capacity, until the server resets the stream: its reason.
async fn reset_reason(body: &mut h2::RecvStream) -> h2::Reason {
    let reset = async {
        loop {
            match body.data().await {
                Some(Ok(_)) => {}
                Some(Err(error)) => return error.reason().expect("a stream reset"),
                None => panic!("the stream ended instead of being reset"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reset).await.expect("the stream is reset")
}

async fn publish_many(url: &str, topic: &str, count: usize, size: usize) {
    let token = mint_hs256(SECRET, &Grant { publish: vec!["*".into()], ..Grant::default() });
    let client = reqwest::Client::new();
    let data = "x".repeat(size);
    for _ in 0..count {
        let response = client
            .post(format!("{url}/.well-known/mercure"))
            .bearer_auth(&token)
            .form(&[("topic", topic), ("data", data.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// Issue 16, finding 4: an HTTP/2 subscriber more than `--queue-capacity` updates behind is
/// cut as an HTTP/1.1 one is, its stream reset (RST_STREAM) at once, rather than left open
/// until its window reopens; the connection's other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_subscriber_past_its_queue_is_reset_at_once() {
    let (_scripted, router) = scripted(0.0);
    let hub = HubConfig { queue_capacity: 8, ..HubConfig::default() };
    let server = common::serve(config(router, None), hub).await;
    let (mut client, mut body) = stalled_h2_subscriber(&server.url, "/h2-slow").await;
    publish_many(&server.url, "/h2-slow", 64, 512).await;
    assert_eq!(reset_reason(&mut body).await, h2::Reason::CANCEL);
    still_serves(&mut client, &server.url).await;
}

/// Issue 16, finding 4: the write bound holds per HTTP/2 stream: a stream whose window stays
/// closed with an event waiting is reset once the bound passes, though the connection's
/// socket takes every write (so the connection's own bound never fires), and the
/// connection's other streams go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_window_stays_closed_is_reset_at_the_write_bound() {
    let (_scripted, router) = scripted(0.0);
    let timeouts = Timeouts { write: Duration::from_secs(1), ..Timeouts::default() };
    let server =
        common::serve(Config { timeouts, ..config(router, None) }, HubConfig::default()).await;
    let (mut client, mut body) = stalled_h2_subscriber(&server.url, "/h2-closed").await;
    // More than the window, far fewer updates than the queue holds.
    publish_many(&server.url, "/h2-closed", 8, 512).await;
    assert_eq!(reset_reason(&mut body).await, h2::Reason::CANCEL);
    still_serves(&mut client, &server.url).await;
}

/// A new request on the connection is answered.
async fn still_serves(client: &mut h2::client::SendRequest<Bytes>, url: &str) {
    let request = axum::http::Request::get(format!("{url}/healthz")).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200, "the connection serves on");
}

/// New certificate files take effect without a restart once the server re-reads them (what
/// `sluice serve` does on SIGHUP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_after_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, old_pem) = certificate(dir.path(), "live");
    let tls = Arc::new(
        Tls::new(CertificateSource::Files { cert: cert.clone(), key: key.clone() }).unwrap(),
    );
    let (_scripted, router) = scripted(0.0);
    let server = common::serve(config(router, Some(Arc::clone(&tls))), HubConfig::default()).await;
    let base = server.url.replace("http://", "https://");
    assert!(client_trusting(&old_pem).get(format!("{base}/healthz")).send().await.is_ok());

    let (new_cert, new_key, new_pem) = certificate(dir.path(), "renewed");
    std::fs::rename(new_cert, &cert).unwrap();
    std::fs::rename(new_key, &key).unwrap();
    assert!(
        client_trusting(&new_pem).get(format!("{base}/healthz")).send().await.is_err(),
        "not before the reload"
    );
    tls.reload().unwrap();
    let renewed = client_trusting(&new_pem).get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(renewed.status(), StatusCode::OK);
    assert!(client_trusting(&old_pem).get(format!("{base}/healthz")).send().await.is_err());

    std::fs::write(&key, "not a key").unwrap();
    assert!(tls.reload().is_err(), "a broken file is refused…");
    let still = client_trusting(&new_pem).get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(still.status(), StatusCode::OK, "…and the certificate in use stays");
}
