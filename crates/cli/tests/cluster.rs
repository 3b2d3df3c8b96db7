//! Several `sluice serve` nodes on one real Redis: what one node publishes, another delivers;
//! a cursor from one resumes on another; an answer started on one is followed and cancelled
//! from another, and ended by the survivors if its node dies; and a chaos run that kills nodes
//! and Redis while subscribers on every node must end with every update once, in order.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{PATIENCE, Server, data, events_until, kinds, publish, publisher_token, start_answer};
use futures_util::StreamExt;
use sluice_client::{EventSource, Item, MessageEvent};
use sluice_hub::testing::RedisServer;

/// `n` nodes on `redis`, each in a directory of its own (they keep nothing there).
fn nodes(redis: &RedisServer, n: usize, extra: &[&str]) -> (Vec<Server>, Vec<tempfile::TempDir>) {
    let store = redis.url();
    let mut args = vec!["--store", store.as_str(), "--provider", "scripted"];
    args.extend_from_slice(extra);
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let servers = dirs.iter().map(|dir| Server::start(dir.path(), &args)).collect();
    (servers, dirs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_node_publishes_another_delivers_and_resumes() {
    let redis = RedisServer::start();
    let (servers, _dirs) = nodes(&redis, 2, &[]);
    let (a, b) = (&servers[0], &servers[1]);
    let token = publisher_token();
    let client = reqwest::Client::new();
    let url_b = format!("{}?topic=/books/{{id}}", b.hub());
    let mut source = EventSource::get(&url_b).build().unwrap();
    assert!(matches!(source.next().await, Some(Ok(Item::Open))));
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            publish(&client, &a.hub(), &token, &format!("/books/{n}"), &format!("{n}"))
                .await
                .unwrap(),
        );
    }
    let mut live = Vec::new();
    while live.len() < 4 {
        if let Some(Ok(Item::Message(event))) = source.next().await {
            live.push(event);
        }
    }
    assert_eq!(data(&live), ["0", "1", "2", "3"], "published on A, delivered by B");
    // A cursor A gave resumes on B, and one B gave resumes on A.
    let resumed = events_until(&url_b, Some(&ids[1]), |seen| seen.len() >= 2).await;
    assert_eq!(data(&resumed), ["2", "3"]);
    let url_a = format!("{}?topic=/books/{{id}}", a.hub());
    let resumed = events_until(&url_a, Some(&live[2].last_event_id), |seen| !seen.is_empty()).await;
    assert_eq!(data(&resumed), ["3"]);
}

/// Issue 16, finding 1: a node whose publish failed while Redis was down is ready again once
/// Redis is back, without a publish of its own: a load balancer that took it out of rotation
/// sends it none, so `/readyz`'s own store call must be enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_returns_with_redis_without_a_publish_on_the_node() {
    let mut redis = RedisServer::start();
    let (servers, _dirs) = nodes(&redis, 1, &[]);
    let node = &servers[0];
    let client = reqwest::Client::new();
    let ready = || async { client.get(format!("{}/readyz", node.url())).send().await.unwrap() };
    assert_eq!(ready().await.status(), 200);
    redis.kill();
    let refused = publish(&client, &node.hub(), &publisher_token(), "/r", "during").await;
    assert_eq!(refused, Err(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(ready().await.status(), 503, "not ready while Redis is down");
    redis.restart();
    let back = async {
        while ready().await.status() != 200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(PATIENCE, back).await.expect("ready again once Redis is back");
}

/// Opens the answer `created` on `server` and reads its first event: the events URL there,
/// the source (not reconnecting), and that event.
async fn read_answer_on(
    server: &Server,
    created: &serde_json::Value,
) -> (String, EventSource, Vec<MessageEvent>) {
    let events_url = format!("{}{}", server.url(), created["events_url"].as_str().unwrap());
    let mut source = EventSource::get(&events_url).reconnect(false).build().unwrap();
    let mut seen = Vec::new();
    while seen.is_empty() {
        if let Some(Ok(Item::Message(event))) = source.next().await {
            seen.push(event);
        }
    }
    (events_url, source, seen)
}

/// An answer started on A is read on B (the same events_url path, the token checked against
/// Redis) and cancelled from B: A's upstream stops and the answer ends as cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_started_on_one_node_is_followed_and_cancelled_from_another() {
    let redis = RedisServer::start();
    let store = redis.url();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // A slow answer: two tokens a second, so that it is still running when cancelled.
    let args = ["--store", store.as_str(), "--provider", "scripted"];
    let slow = [("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "2")];
    let a = Server::start_with_env(dirs[0].path(), &args, &slow);
    let b = Server::start_with_env(dirs[1].path(), &args, &slow);
    let created = start_answer(&a).await;
    let on_b = |path: &str| format!("{}{}", b.url(), path);
    let events_url = on_b(created["events_url"].as_str().unwrap());
    let first = events_until(&events_url, None, |seen| !seen.is_empty()).await;
    assert_eq!(kinds(&first), ["delta"], "B follows A's answer");
    let wrong = events_url.replace("token=", "token=0");
    assert_eq!(reqwest::get(&wrong).await.unwrap().status(), 403, "B checks the token");

    let before = a.metric("sluice_upstream_cancelled_total").await;
    let cancel = reqwest::Client::new()
        .post(on_b(created["cancel_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 202, "B finds A's live answer");
    let rest = events_until(&events_url, Some(&first[0].last_event_id), |seen| {
        seen.last().is_some_and(|e| e.event_type == "end")
    })
    .await;
    assert_eq!(rest.last().unwrap().data, r#"{"finish_reason":"cancelled"}"#);
    assert!(a.metric("sluice_upstream_cancelled_total").await > before, "A stopped its upstream");
    let again = reqwest::Client::new()
        .post(on_b(created["cancel_url"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "nothing runs any more");
}

/// The node producing an answer dies: a reader on another node gets `error` then `end`
/// (the survivors see its lease lapse), never a stream that waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_producing_node_dies_its_answer_ends_with_an_error_on_the_others() {
    let redis = RedisServer::start();
    let store = redis.url();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let args = ["--store", store.as_str(), "--provider", "scripted"];
    let slow = [("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "2")];
    let mut a = Server::start_with_env(dirs[0].path(), &args, &slow);
    let b = Server::start_with_env(dirs[1].path(), &args, &slow);
    let (_, mut source, mut seen) = read_answer_on(&b, &start_answer(&a).await).await;
    a.kill();
    let ended = async {
        while seen.last().is_none_or(|e| e.event_type != "end") {
            match source.next().await {
                Some(Ok(Item::Message(event))) => seen.push(event),
                Some(Ok(_)) => {}
                other => panic!("the reader's stream broke: {other:?}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, ended).await.expect("the answer ends on B");
    let kinds = kinds(&seen);
    assert_eq!(kinds[kinds.len() - 2..], ["error", "end"], "{seen:?}");
    assert_eq!(seen.last().unwrap().data, r#"{"finish_reason":"error"}"#);
}

/// Issue 16, 1.6: Redis restarted empty (no persistence). What was published before is gone,
/// but every update acknowledged after reaches everyone: a subscriber connected all along gets
/// `sluice-reset`, then each of them, in order, once; a fresh `earliest` subscriber gets what
/// Redis holds, in order. An answer's reader, whose history is gone, is ended (not left
/// waiting) and not resumed into a history without its start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_resets_subscribers_and_delivers_what_is_acknowledged_after() {
    let mut redis = RedisServer::start();
    // An answer long enough (100 words at 8 a second) to be running when Redis restarts.
    let (a, b, _dirs) = answering_nodes(&redis, &LONG_ANSWER.repeat(5));
    let (token, client) = (publisher_token(), reqwest::Client::new());
    let topic = |server: &Server| format!("{}?topic=/x", server.hub());
    let mut connected = EventSource::get(&topic(&b)).reconnect(false).build().unwrap();
    assert!(matches!(connected.next().await, Some(Ok(Item::Open))));
    let (events_url, mut answer, mut answered) = read_answer_on(&b, &start_answer(&a).await).await;
    for n in 0..3 {
        publish(&client, &a.hub(), &token, "/x", &format!("old {n}")).await.unwrap();
    }

    redis.restart_empty();
    let mut acknowledged = Vec::new();
    for n in 0..12 {
        let (hub, data) = ([&a, &b][n % 2].hub(), format!("new {n}"));
        let published = async {
            while publish(&client, &hub, &token, "/x", &data).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(PATIENCE, published).await.expect("publishing works again");
        acknowledged.push(data);
    }

    let mut heard = Vec::new();
    let read = async {
        while heard.len() < 3 + 1 + acknowledged.len() {
            match connected.next().await {
                Some(Ok(Item::Message(event))) => heard.push(event),
                Some(Ok(_)) => {}
                other => panic!("the subscriber's stream broke: {other:?}"),
            }
        }
    };
    if tokio::time::timeout(PATIENCE, read).await.is_err() {
        panic!("waited {PATIENCE:?}, heard {heard:?}");
    }
    assert_eq!(data(&heard[..3]), ["old 0", "old 1", "old 2"]);
    assert_eq!(heard[3].event_type, "sluice-reset", "{heard:?}");
    assert_eq!(data(&heard[4..]), acknowledged, "every update acknowledged after, in order, once");

    for server in [&a, &b] {
        let fresh =
            events_until(&topic(server), Some("earliest"), |seen| seen.len() >= acknowledged.len())
                .await;
        assert_eq!(data(&fresh), acknowledged, "earliest: what Redis holds, in order");
    }

    // The answer's reader ends rather than wait for an end from a history that lost its start.
    let ended = async {
        while let Some(item) = answer.next().await {
            match item {
                Ok(Item::Message(event)) => answered.push(event),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(PATIENCE, ended).await.expect("the answer's reader is ended");
    assert_ne!(answered.last().unwrap().event_type, "end", "by the reset: {answered:?}");
    let again = reqwest::Client::new()
        .get(&events_url)
        .header("Last-Event-ID", &answered.last().unwrap().last_event_id)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "its record went with Redis's data");
}

/// Chaos: subscribers on every node, a publisher spread over the nodes recording what was
/// acknowledged, while nodes are killed (-9) and restarted and Redis is killed and restarted.
/// At the end every subscriber has the whole history, each update once, in the store's order,
/// and every acknowledged update is in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_nodes_and_redis_and_loses_nothing() {
    const NODES: usize = 3;
    const SUBSCRIBERS_PER_NODE: usize = 2;
    let mut redis = RedisServer::start();
    let (servers, _dirs) = nodes(&redis, NODES, &["--retry", "100"]);
    let servers: Vec<_> = servers.into_iter().map(|s| Arc::new(Mutex::new(s))).collect();
    let hubs: Vec<String> = servers.iter().map(|s| s.lock().unwrap().hub()).collect();
    let token = publisher_token();

    // Subscribers: from the start of history, reconnecting on their own, on every node.
    let received: Vec<Arc<Mutex<Vec<String>>>> =
        (0..NODES * SUBSCRIBERS_PER_NODE).map(|_| Arc::default()).collect();
    let mut readers = Vec::new();
    for (n, sink) in received.iter().enumerate() {
        let url = format!("{}?topic=/chaos", hubs[n % NODES]);
        let mut source = EventSource::get(&url)
            .last_event_id("earliest")
            .retry(Duration::from_millis(100))
            .max_backoff(Duration::from_millis(500))
            .build()
            .unwrap();
        let sink = Arc::clone(sink);
        readers.push(tokio::spawn(async move {
            while let Some(item) = source.next().await {
                match item {
                    Ok(Item::Message(event)) => sink.lock().unwrap().push(event.last_event_id),
                    Ok(_) => {}
                    Err(error) => panic!("a subscriber stopped for good: {error}"),
                }
            }
        }));
    }

    // The publisher: round robin over the nodes, recording what each acknowledged.
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let publisher = {
        let (hubs, token, acknowledged, running) =
            (hubs.clone(), token.clone(), Arc::clone(&acknowledged), Arc::clone(&running));
        tokio::spawn(async move {
            let client =
                reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
            let mut n = 0usize;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let hub = &hubs[n % hubs.len()];
                if let Ok(id) = publish(&client, hub, &token, "/chaos", &format!("{n}")).await {
                    acknowledged.lock().unwrap().push(id);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                n += 1;
            }
        })
    };

    // The chaos: a node killed and restarted every second or so, Redis every fourth round.
    for round in 0..16 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let victim = &servers[round % NODES];
        tokio::task::block_in_place(|| {
            let mut victim = victim.lock().unwrap();
            victim.kill();
            if round % 4 == 3 {
                redis.kill();
                std::thread::sleep(Duration::from_millis(300));
                redis.restart();
            }
            victim.restart();
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    publisher.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 50, "only {} acknowledged", acknowledged.len());

    // The whole history, in the store's order, from one node; then everyone must have it.
    let marker = loop {
        if let Ok(id) = publish(&reqwest::Client::new(), &hubs[0], &token, "/chaos", "end").await {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let history: Vec<String> =
        events_until(&format!("{}?topic=/chaos", hubs[0]), Some("earliest"), |seen| {
            seen.last().is_some_and(|e| e.last_event_id == marker)
        })
        .await
        .into_iter()
        .map(|e| e.last_event_id)
        .collect();
    let kept: HashSet<&String> = history.iter().collect();
    assert_eq!(kept.len(), history.len(), "the history holds each update once");
    for id in &acknowledged {
        assert!(kept.contains(id), "acknowledged {id} is not in the history");
    }
    let caught_up = async {
        loop {
            let done = received.iter().all(|r| r.lock().unwrap().last() == Some(&marker));
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, caught_up).await.expect("every subscriber catches up");
    for (n, sink) in received.iter().enumerate() {
        assert_eq!(*sink.lock().unwrap(), history, "subscriber {n}: every update once, in order");
    }
    eprintln!(
        "chaos: 16 node kills, 4 Redis kills; {} acknowledged, {} in the history, each of {} \
         subscribers got all of it once, in order",
        acknowledged.len(),
        history.len(),
        received.len()
    );
    for reader in readers {
        reader.abort();
    }
}

/// The `data` of every event of an event-stream response, until it ends or `enough` holds.
async fn data_events(
    response: reqwest::Response,
    enough: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let mut events = sluice_sse::EventStream::new(response.bytes_stream());
    let mut seen = Vec::new();
    let read = async {
        while !enough(&seen) {
            match events.next().await {
                Some(Ok(event)) if event.data == "[DONE]" => break,
                Some(Ok(event)) => seen.push(serde_json::from_str(&event.data).unwrap()),
                Some(Err(error)) => panic!("{error}"),
                None => break,
            }
        }
    };
    if tokio::time::timeout(PATIENCE, read).await.is_err() {
        panic!("waited {PATIENCE:?}, got {seen:?}");
    }
    seen
}

/// The text of a Responses event stream's `response.output_text.delta` events.
fn response_text(events: &[serde_json::Value]) -> String {
    let deltas = events.iter().filter(|e| e["type"] == "response.output_text.delta");
    deltas.map(|e| e["delta"].as_str().unwrap().to_owned()).collect()
}

/// Two nodes, slow scripted answers of a known text.
fn answering_nodes(redis: &RedisServer, text: &str) -> (Server, Server, Vec<tempfile::TempDir>) {
    let store = redis.url();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let args = ["--store", store.as_str(), "--provider", "scripted"];
    let env = [("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "8"), ("SLUICE_SCRIPTED_TEXT", text)];
    let a = Server::start_with_env(dirs[0].path(), &args, &env);
    let b = Server::start_with_env(dirs[1].path(), &args, &env);
    (a, b, dirs)
}

const LONG_ANSWER: &str = "one two three four five six seven eight nine ten eleven twelve \
    thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty";

/// A background response started on A is resumed from B after the event it was read to (the
/// exact text once), retrieved whole from B, and a second one is cancelled from B: A's
/// upstream stops and the response is `cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_started_on_one_node_is_resumed_and_cancelled_from_another() {
    let redis = RedisServer::start();
    let (a, b, _dirs) = answering_nodes(&redis, LONG_ANSWER);
    let client = reqwest::Client::new();
    let create = || async {
        let request =
            serde_json::json!({"model": "scripted", "input": "count", "background": true});
        let created = client.post(format!("{}/v1/responses", a.url())).json(&request).send();
        let created: serde_json::Value = created.await.unwrap().json().await.unwrap();
        assert_eq!(created["status"], "queued", "{created}");
        created["id"].as_str().unwrap().to_owned()
    };
    let id = create().await;
    let stream = |after: Option<u64>| {
        let mut url = format!("{}/v1/responses/{id}?stream=true", b.url());
        if let Some(after) = after {
            url.push_str(&format!("&starting_after={after}"));
        }
        client.get(url).send()
    };
    let head = data_events(stream(None).await.unwrap(), |seen| {
        seen.iter().filter(|e| e["type"] == "response.output_text.delta").count() >= 3
    })
    .await;
    let last = head.last().unwrap()["sequence_number"].as_u64().unwrap();
    let tail = data_events(stream(Some(last)).await.unwrap(), |_| false).await;
    assert_eq!(tail[0]["sequence_number"].as_u64(), Some(last + 1), "no gap, no repeat");
    let all: Vec<_> = head.into_iter().chain(tail).collect();
    let numbers: Vec<u64> = all.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    assert_eq!(response_text(&all), LONG_ANSWER);
    assert_eq!(all.last().unwrap()["type"], "response.completed");
    let whole: serde_json::Value = client
        .get(format!("{}/v1/responses/{id}", b.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whole["status"], "completed");
    assert_eq!(whole["output"][0]["content"][0]["text"], LONG_ANSWER);

    let id = create().await;
    let before = a.metric("sluice_upstream_cancelled_total").await;
    let cancelled = client.post(format!("{}/v1/responses/{id}/cancel", b.url())).send();
    let cancelled: serde_json::Value = cancelled.await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert!(a.metric("sluice_upstream_cancelled_total").await > before, "A stopped its upstream");
}

/// The AI SDK's UI message stream: a chat whose answer started on A is resumed on B from its
/// first chunk, stopped from B (A's upstream stops, open streams end with `abort`), and then
/// has nothing to resume (204) on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ui_chat_started_on_one_node_is_resumed_and_stopped_from_another() {
    let redis = RedisServer::start();
    let (a, b, _dirs) = answering_nodes(&redis, LONG_ANSWER);
    let client = reqwest::Client::new();
    let chat = "chat-across-nodes-6f1c2a";
    let request = serde_json::json!({"id": chat, "trigger": "submit-message", "messages":
        [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "count"}]}]});
    let posted = client.post(format!("{}/api/chat", a.url())).json(&request).send().await.unwrap();
    assert_eq!(posted.headers()["x-vercel-ai-ui-message-stream"], "v1");
    let seen_on_a =
        data_events(posted, |seen| seen.iter().any(|c| c["type"] == "text-delta")).await;

    let resumed = client.get(format!("{}/api/chat/{chat}/stream", b.url())).send().await.unwrap();
    assert_eq!(resumed.status(), 200);
    let replayed =
        data_events(resumed, |seen| seen.iter().filter(|c| c["type"] == "text-delta").count() >= 2)
            .await;
    assert_eq!(replayed[0], seen_on_a[0], "the replay starts with the same start chunk");
    assert_eq!(replayed[0]["type"], "start");

    let resumed = client.get(format!("{}/api/chat/{chat}/stream", b.url())).send().await.unwrap();
    let before = a.metric("sluice_upstream_cancelled_total").await;
    let stop = client.post(format!("{}/api/chat/{chat}/stop", b.url())).send().await.unwrap();
    let stop: serde_json::Value = stop.json().await.unwrap();
    assert_eq!(stop["stopped"], true, "B finds A's running answer");
    let rest = data_events(resumed, |_| false).await;
    assert_eq!(rest.last().unwrap()["type"], "abort", "open streams end");
    assert!(a.metric("sluice_upstream_cancelled_total").await > before, "A stopped its upstream");
    for node in [&a, &b] {
        let after = client.get(format!("{}/api/chat/{chat}/stream", node.url())).send();
        assert_eq!(after.await.unwrap().status(), 204, "nothing to resume");
    }
}
