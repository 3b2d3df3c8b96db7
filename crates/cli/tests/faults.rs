//! Faults, as the real process meets them: restarts and kill -9 (what a *new* process replays),
//! clients that hold connections open without sending, subscribers that stop reading, floods
//! past the connection limit, answers interrupted by a crash. Each bound asserted here is
//! generous (seconds): tests say what must happen, benchmarks say how fast.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    PATIENCE, Server, data, events_until, kinds, metric_from, publish, publisher_token,
    start_answer,
};
use futures_util::StreamExt;
use sluice_client::{EventSource, Item, MessageEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The next `n` events of `url` (from `last_event_id`, if any), without reconnecting.
async fn events(url: &str, last_event_id: Option<&str>, n: usize) -> Vec<MessageEvent> {
    events_until(url, last_event_id, |seen| seen.len() >= n).await
}

/// Issue 10, finding 1: after SIGTERM or kill -9, a subscriber resuming with Last-Event-ID
/// (or `earliest`) gets what was stored, from the *new* process, before anything new is
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_replays_what_a_resuming_subscriber_missed() {
    let client = reqwest::Client::new();
    let token = publisher_token();
    for kill in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Server::start(dir.path(), &[]);
        let mut ids = Vec::new();
        for data in ["a1", "a2", "a3"] {
            ids.push(publish(&client, &server.hub(), &token, "/log", data).await.unwrap());
        }
        if kill {
            server.kill();
        } else {
            server.stop();
        }
        server.restart();
        let url = format!("{}?topic=/log", server.hub());
        let response = client.get(&url).header("last-event-id", &ids[0]).send().await.unwrap();
        assert_eq!(response.headers()["last-event-id"], ids[0].as_str(), "the resume is known");
        drop(response);
        let resumed = events(&url, Some(&ids[0]), 2).await;
        assert_eq!(data(&resumed), ["a2", "a3"], "kill -9: {kill}");
        assert_eq!(resumed[1].last_event_id, ids[2]);
        let everything = events(&url, Some("earliest"), 3).await;
        assert_eq!(data(&everything), ["a1", "a2", "a3"], "kill -9: {kill}");
    }
}

/// kill -9 in the middle of heavy publishing, twenty times over one history: every update the
/// hub acknowledged is replayed by the restarted process, each publisher's in the order it
/// published them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kill_9s_under_heavy_publishing_lose_no_acknowledged_update() {
    const PUBLISHERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let token = publisher_token();
    let client = reqwest::Client::new();
    // Each publisher's acknowledged ids, in the order it published them.
    let acknowledged: Arc<Mutex<Vec<Vec<String>>>> =
        Arc::new(Mutex::new(vec![Vec::new(); PUBLISHERS]));
    for round in 0..20 {
        let hub = server.hub();
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                let (client, hub, token, acknowledged) =
                    (client.clone(), hub.clone(), token.clone(), Arc::clone(&acknowledged));
                tokio::spawn(async move {
                    for n in 0.. {
                        let data = format!("r{round}-p{p}-{n}");
                        match publish(&client, &hub, &token, "/log", &data).await {
                            Ok(id) => acknowledged.lock().unwrap()[p].push(id),
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        let before: usize = acknowledged.lock().unwrap().iter().map(Vec::len).sum();
        while acknowledged.lock().unwrap().iter().map(Vec::len).sum::<usize>() < before + 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.kill();
        for publisher in publishers {
            publisher.await.unwrap();
        }
        server.restart();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let total: usize = acknowledged.iter().map(Vec::len).sum();
    // Everything kept, from the start, by the last process.
    let marker = publish(&client, &server.hub(), &token, "/log", "end").await.unwrap();
    let url = format!("{}?topic=/log", server.hub());
    let history = events_until(&url, Some("earliest"), |seen| {
        seen.last().is_some_and(|e| e.last_event_id == marker)
    })
    .await;
    let positions: std::collections::HashMap<&str, usize> =
        history.iter().enumerate().map(|(i, e)| (e.last_event_id.as_str(), i)).collect();
    for (p, ids) in acknowledged.iter().enumerate() {
        let mut last = None;
        for id in ids {
            let at = *positions.get(id.as_str()).unwrap_or_else(|| {
                panic!("publisher {p}: acknowledged {id} is missing after the kill -9s")
            });
            assert!(last.is_none_or(|last| last < at), "publisher {p}: {id} out of order");
            last = Some(at);
        }
    }
    assert!(total >= 2000, "{total} acknowledged in 20 rounds");
    eprintln!(
        "kill -9 x20: {total} acknowledged, all {} replayed by the last process, each publisher's in order",
        history.len() - 1
    );
}

/// Reads until the server closes the connection; returns what it sent. Fails after PATIENCE.
async fn until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let read = async {
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    };
    tokio::time::timeout(PATIENCE, read).await.expect("the server closes the connection");
    received
}

/// Issue 10, finding 3: connections that send nothing, half a request head (slowloris), half
/// a body, or sit idle after a response, are all closed at their bounds, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_slow_half_and_idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--store", "memory", "--request-head-timeout", "1", "--request-body-timeout", "1"],
    );
    let server = Arc::new(server);
    let address = format!("127.0.0.1:{}", server.port);

    let silent = {
        let address = address.clone();
        tokio::spawn(async move {
            let mut socket = TcpStream::connect(&address).await.unwrap();
            until_closed(&mut socket).await
        })
    };
    // A subscription's head is read past hyper (conn/direct/), under the same bound.
    let slowloris = ["GET /healthz", "GET /.well-known/mercure?topic=/a"].map(|target| {
        let address = address.clone();
        tokio::spawn(async move {
            let mut socket = TcpStream::connect(&address).await.unwrap();
            let head = format!("{target} HTTP/1.1\r\nX-Slow: ");
            socket.write_all(head.as_bytes()).await.unwrap();
            let trickle = async {
                // One byte every 200 ms: the head never completes.
                while socket.write_all(b"a").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            };
            let _ = tokio::time::timeout(PATIENCE, trickle).await;
            until_closed(&mut socket).await
        })
    });
    let half_body = {
        let address = address.clone();
        tokio::spawn(async move {
            let mut socket = TcpStream::connect(&address).await.unwrap();
            let head = "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nContent-Type: \
                application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntopic=/a";
            socket.write_all(head.as_bytes()).await.unwrap();
            until_closed(&mut socket).await
        })
    };
    assert!(silent.await.unwrap().is_empty(), "a silent connection is closed without a word");
    for slowloris in slowloris {
        slowloris.await.unwrap();
    }
    let answered = String::from_utf8(half_body.await.unwrap()).unwrap();
    // No token: refused before the body is read, or the body timed out (408). Either way the
    // connection did not stay open waiting for the other 92 bytes.
    assert!(
        answered.starts_with("HTTP/1.1 401") || answered.starts_with("HTTP/1.1 408"),
        "{answered}"
    );

    let metrics =
        reqwest::get(format!("{}/metrics", server.url())).await.unwrap().text().await.unwrap();
    assert!(
        metric_from(&metrics, "sluice_timeouts_total{wait=\"request_head\"}") >= 3.0,
        "{metrics}"
    );
}

/// A kept-alive connection with nothing in flight is closed after the idle bound, and a body
/// that stalls gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_and_stalled_bodies_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--store", "memory", "--idle-timeout", "1", "--request-body-timeout", "1"],
    );
    let token = publisher_token();
    let mut socket = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    socket.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let received = String::from_utf8(until_closed(&mut socket).await).unwrap();
    assert!(received.starts_with("HTTP/1.1 200"), "answered, then closed when idle: {received}");

    let mut socket = TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let head = format!(
        "POST /.well-known/mercure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntopic=/a"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let received = String::from_utf8(until_closed(&mut socket).await).unwrap();
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("\"code\":\"request_timeout\""), "{received}");
    assert!(server.metric("sluice_timeouts_total{wait=\"idle_connection\"}").await >= 1.0);
    assert!(server.metric("sluice_timeouts_total{wait=\"request_body\"}").await >= 1.0);
}

/// A flood of silent connections past the limit: clients get 503 with Retry-After and a JSON
/// body while it lasts, and are served again once the flood's connections reach their bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_is_refused_politely_and_passes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--store", "memory", "--max-connections", "40", "--request-head-timeout", "2"],
    );
    let mut flood = Vec::new();
    for _ in 0..40 {
        flood.push(TcpStream::connect(("127.0.0.1", server.port)).await.unwrap());
    }
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    // The server accepts the flood's connections as fast as it can; once it has, it refuses.
    let refused = async {
        loop {
            let response = client.get(format!("{}/healthz", server.url())).send().await.unwrap();
            if response.status() == 503 {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let refused = tokio::time::timeout(PATIENCE, refused).await.expect("the flood is refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    for mut socket in flood {
        until_closed(&mut socket).await;
    }
    let served = client.get(format!("{}/healthz", server.url())).send().await.unwrap();
    assert_eq!(served.status(), 200);
}

/// Issue 10, finding 4: a subscriber that stops reading is cut off at once: its socket is
/// reset (the kernel drops what it held for it), it leaves `sluice_subscribers_connected`, and
/// publishing goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_disconnected_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A write timeout far away: what closes the sockets here is the hang-up.
    let server = Server::start(
        dir.path(),
        &["--store", "memory", "--queue-capacity", "8", "--write-timeout", "600"],
    );
    let token = publisher_token();
    let client = reqwest::Client::new();
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(2048).unwrap();
        let mut stream = socket.connect(([127, 0, 0, 1], server.port).into()).await.unwrap();
        let request = "GET /.well-known/mercure?topic=/firehose HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n";
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 256];
        let n = stream.read(&mut head).await.unwrap();
        assert!(head[..n].starts_with(b"HTTP/1.1 200"));
        stalled.push(stream); // and never read again
    }
    assert_eq!(server.metric("sluice_subscribers_connected").await, 20.0);
    let big = "x".repeat(64 * 1024);
    for _ in 0..200 {
        publish(&client, &server.hub(), &token, "/firehose", &big).await.unwrap();
    }
    let gone = async {
        while server.metric("sluice_subscribers_connected").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, gone).await.expect("the stalled subscribers are disconnected");
    assert!(server.metric("sluice_slow_consumer_disconnects_total").await >= 20.0);
    // Their sockets were reset: a read fails (or ends) once the queued bytes are drained.
    for mut stream in stalled {
        until_closed(&mut stream).await;
    }
}

/// An answer's text (its deltas joined: a slow reader gets them merged) and its other events.
fn answer(events: &[MessageEvent]) -> (String, Vec<&str>) {
    let text = events
        .iter()
        .filter(|e| e.event_type == "delta")
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    (text, events.iter().filter(|e| e.event_type != "delta").map(|e| e.data.as_str()).collect())
}

/// Issue 10, findings 1 and 5: an answer's capability token works after a restart, an answer
/// cut short by a crash ends with `error` then `end` (never a stream that waits forever), and
/// the one-shot endpoint cannot read an answer made through /api/generations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_survive_a_crash_and_keep_their_capability() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--provider", "scripted"]);
    let client = reqwest::Client::new();
    let created = start_answer(&server).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let events_url = format!("{}{}", server.url(), created["events_url"].as_str().unwrap());
    let whole = events(&events_url, None, usize::MAX).await;
    assert_eq!(kinds(&whole).last(), Some(&"end"));

    // The one-shot form cannot read it, whatever id it is given.
    for last in [format!("{id}.0"), format!("{id}.end")] {
        let response = client
            .get(format!("{}/api/chat/stream?prompt=x", server.url()))
            .header("last-event-id", last)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
    }

    server.kill();
    server.restart();
    let replayed = events(&events_url, None, usize::MAX).await;
    assert_eq!(answer(&replayed), answer(&whole), "the token still reads it after kill -9");
    let wrong = events_url.replace("token=", "token=0");
    assert_eq!(client.get(&wrong).send().await.unwrap().status(), 403);
    let last = &whole.last().unwrap().last_event_id;
    let after_end = client.get(&events_url).header("last-event-id", last).send().await.unwrap();
    assert_eq!(after_end.status(), 204, "after end: stop for good");
}

/// An answer whose server dies mid-answer ends with `error` and `end` after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_short_by_kill_9_ends_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A slow answer: five tokens a second.
    let mut server = Server::start_with_env(
        dir.path(),
        &["--provider", "scripted"],
        &[("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "5")],
    );
    let created = start_answer(&server).await;
    let events_url = format!("{}{}", server.url(), created["events_url"].as_str().unwrap());
    let first = events(&events_url, None, 2).await;
    assert_eq!(kinds(&first), ["delta", "delta"]);
    server.kill();
    server.restart();
    let rest = events(&events_url, Some(&first[1].last_event_id), usize::MAX).await;
    let kinds = kinds(&rest);
    assert_eq!(&kinds[kinds.len() - 2..], ["error", "end"], "{rest:?}");
    assert_eq!(rest.last().unwrap().data, r#"{"finish_reason":"error"}"#);
}

/// Sets the (soft) file-size limit of a running process (`prlimit --pid`), in bytes or
/// `unlimited`; the hard limit stays, so it can be raised again without privileges.
fn file_size_limit(pid: u32, limit: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}:")])
        .status()
        .expect("prlimit (util-linux) runs");
    assert!(status.success());
}

/// A full disk (here: the file-size limit reached, which SQLite sees as a full disk): publish
/// answers 503 with Retry-After, `/readyz` says why, subscribers already connected keep their
/// stream, and everything recovers when space returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--keep-alive", "1"]);
    let token = publisher_token();
    let client = reqwest::Client::new();
    let url = format!("{}?topic=/disk", server.hub());
    let mut source = EventSource::get(&url).reconnect(false).build().unwrap();
    assert!(matches!(source.next().await, Some(Ok(Item::Open))));
    publish(&client, &server.hub(), &token, "/disk", "before").await.unwrap();

    // No file may grow any more: the next commits cannot be written.
    file_size_limit(server.pid(), "0");
    let big = "x".repeat(200 * 1024);
    let mut refused = None;
    for _ in 0..20 {
        let response = client
            .post(server.hub())
            .bearer_auth(&token)
            .form(&[("topic", "/disk"), ("data", big.as_str())])
            .send()
            .await
            .unwrap();
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("publishing to a full disk is refused");
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let ready = client.get(format!("{}/readyz", server.url())).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while writes fail");

    file_size_limit(server.pid(), "unlimited");
    publish(&client, &server.hub(), &token, "/disk", "after").await.unwrap();
    let ready = client.get(format!("{}/readyz", server.url())).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again");
    // The subscriber connected all along got what was acknowledged, in order.
    let mut got = Vec::new();
    while got.last().is_none_or(|d: &String| d != "after") {
        match tokio::time::timeout(PATIENCE, source.next()).await.expect("the stream goes on") {
            Some(Ok(Item::Message(event))) if event.data.len() < 100 => got.push(event.data),
            Some(Ok(_)) => {}
            other => panic!("the subscriber's stream broke: {other:?}"),
        }
    }
    assert_eq!(got, ["before", "after"]);
}

/// Issue 10, finding 6: an answer whose events cannot be stored is stopped (its upstream
/// cancelled), its readers are told to reconnect instead of waiting, and once the store takes
/// writes again the answer ends with `error` then `end`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_cannot_be_stored_ends_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        dir.path(),
        &["--provider", "scripted"],
        &[("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "5")],
    );
    let created = start_answer(&server).await;
    let events_url = format!("{}{}", server.url(), created["events_url"].as_str().unwrap());
    let mut source = EventSource::get(&events_url).reconnect(false).build().unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let Some(Ok(Item::Message(event))) = source.next().await {
            seen.push(event);
        }
    }
    file_size_limit(server.pid(), "0");
    // The next delta cannot be stored: the reader's stream ends (it would reconnect).
    let ended = async {
        while let Some(item) = source.next().await {
            if let Ok(Item::Message(event)) = item {
                seen.push(event);
            }
        }
    };
    tokio::time::timeout(PATIENCE, ended).await.expect("the reader is not left waiting");
    assert!(server.metric("sluice_upstream_cancelled_total").await >= 1.0);
    file_size_limit(server.pid(), "unlimited");
    // Reconnect as a browser would, from the last id, until the answer has ended.
    let mut rest: Vec<MessageEvent> = Vec::new();
    let until_end = async {
        while rest.last().is_none_or(|e| e.event_type != "end") {
            let last = rest.last().or(seen.last()).unwrap().last_event_id.clone();
            rest.extend(events(&events_url, Some(&last), usize::MAX).await);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(PATIENCE, until_end).await.expect("the answer ends");
    let kinds = kinds(&rest);
    assert_eq!(kinds[kinds.len() - 3..], ["error", "usage", "end"], "{rest:?}");
    assert_eq!(rest.last().unwrap().data, r#"{"finish_reason":"error"}"#);
}
