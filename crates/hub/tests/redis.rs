//! The Redis store against a real `redis-server`: the same conformance suite as memory and
//! SQLite, then what only a shared store does (several nodes, Redis going away and back).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sluice_hub::testing::{RedisServer, conformance, draft};
use sluice_hub::{
    CommitListener, Cursor, Fanout, Hub, HubConfig, RedisConfig, RedisStore, Selector, Store,
    StoreError, SubscribeRequest,
};

/// A store with a prefix of its own, so that stores on one Redis do not see each other.
fn config(redis: &RedisServer) -> RedisConfig {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!("test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    RedisConfig { prefix, ..RedisConfig::new(redis.url()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_conforms() {
    let redis = RedisServer::start();
    conformance(|listener: Arc<dyn CommitListener>| {
        let config = config(&redis);
        async move { Arc::new(RedisStore::open(config, listener).await.unwrap()) as Arc<dyn Store> }
    })
    .await;
}

/// A node: a hub over its own RedisStore on the shared prefix.
async fn node(config: &RedisConfig) -> Hub {
    let fanout = Fanout::new();
    let store = RedisStore::open(config.clone(), fanout.listener()).await.unwrap();
    Hub::new(Arc::new(store), fanout, HubConfig::default())
}

async fn data(subscription: &mut sluice_hub::Subscription, n: usize) -> Vec<String> {
    let mut decoder = sluice_sse::Decoder::new();
    let mut seen = Vec::new();
    let read = async {
        while seen.len() < n {
            let frame = subscription.frames.next().await.expect("the subscription ended");
            decoder.feed(&frame, |e| seen.push(e.data)).unwrap();
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), read).await.is_err() {
        panic!("waited 30 s for {n} events, got {seen:?}");
    }
    seen
}

fn on(topic: &str, cursor: Cursor) -> SubscribeRequest {
    SubscribeRequest::new(vec![Selector::parse(topic).unwrap()], cursor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_one_order_and_resume_each_other_s_ids() {
    let redis = RedisServer::start();
    let shared = config(&redis);
    let (a, b) = (node(&shared).await, node(&shared).await);
    let mut on_b = b.subscribe(on("/t", Cursor::Live)).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..6 {
        let hub = if n % 2 == 0 { &a } else { &b };
        ids.push(hub.publish(draft(&format!("u{n}"), "/t", &format!("{n}"))).await.unwrap());
    }
    assert_eq!(data(&mut on_b, 6).await, ["0", "1", "2", "3", "4", "5"], "published on both");
    assert!(ids.windows(2).all(|w| w[0].seq() < w[1].seq()), "one order across nodes");
    // An id acknowledged by A resumes on B.
    let mut resumed = b.subscribe(on("/t", Cursor::After("u2".into()))).await.unwrap();
    assert_eq!(data(&mut resumed, 3).await, ["3", "4", "5"]);
    // A publisher id taken on one node is taken on every node.
    let taken = b.publish(draft("u1", "/t", "again")).await;
    assert!(matches!(taken, Err(sluice_hub::PublishError::Store(StoreError::Conflict(_)))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_replays_from_redis() {
    let redis = RedisServer::start();
    let shared = config(&redis);
    let first = node(&shared).await;
    for n in 0..3 {
        first.publish(draft(&format!("r{n}"), "/r", &format!("{n}"))).await.unwrap();
    }
    drop(first);
    let second = node(&shared).await;
    let mut resumed = second.subscribe(on("/r", Cursor::After("r0".into()))).await.unwrap();
    assert_eq!(data(&mut resumed, 2).await, ["1", "2"], "before anything new is published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_refuses_writes_and_loses_nothing_when_it_returns() {
    let mut redis = RedisServer::start();
    let shared = config(&redis);
    let (a, b) = (node(&shared).await, node(&shared).await);
    let mut on_b = b.subscribe(on("/x", Cursor::Live)).await.unwrap();
    a.publish(draft("before", "/x", "before")).await.unwrap();
    redis.kill();
    let refused = a.publish(draft("during", "/x", "during")).await;
    assert!(
        matches!(refused, Err(sluice_hub::PublishError::Store(StoreError::Backend(_)))),
        "{refused:?}"
    );
    assert!(a.store_failure().is_some(), "the hub knows its store fails");
    redis.restart();
    // The connection comes back on its own; publish until it does.
    let mut after = None;
    for _ in 0..100 {
        match a.publish(draft("after", "/x", "after")).await {
            Ok(update) => {
                after = Some(update);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert!(after.is_some(), "publishing works again once Redis is back");
    assert_eq!(data(&mut on_b, 2).await, ["before", "after"], "B's subscriber missed nothing");
    assert!(a.store_failure().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_cancels_and_readers_reach_across_nodes() {
    let redis = RedisServer::start();
    let shared = config(&redis);
    let (a, b) = (node(&shared).await, node(&shared).await);
    let (ca, cb) = (a.store().control().unwrap(), b.store().control().unwrap());
    let owned = vec!["answer-1".to_owned()];
    assert!(!cb.is_live("answer-1").await.unwrap());
    ca.heartbeat(&owned, &[]).await.unwrap();
    assert!(cb.is_live("answer-1").await.unwrap(), "B sees A's lease");
    let mut requests = ca.cancel_requests();
    // The subscription is made in the background: ask until A hears it.
    let heard = async {
        loop {
            assert!(cb.request_cancel("answer-1").await.unwrap());
            if let Ok(Some(id)) =
                tokio::time::timeout(Duration::from_millis(500), requests.next()).await
            {
                return id;
            }
        }
    };
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), heard).await.unwrap(), "answer-1");
    let beat = cb.heartbeat(&[], &owned).await.unwrap();
    assert!(beat.cancelled.is_empty());
    let beat = ca.heartbeat(&owned, &[]).await.unwrap();
    assert_eq!(beat.cancelled, owned, "the request is also found by the next heartbeat");
    assert_eq!(beat.read_elsewhere, owned, "B reported readers");
    ca.release("answer-1").await.unwrap();
    assert!(!cb.request_cancel("answer-1").await.unwrap(), "nothing to cancel once released");
    assert!(ca.lapsed().await.unwrap().is_empty());
}

/// The next `n` events of a subscription as (event type, data).
async fn events(subscription: &mut sluice_hub::Subscription, n: usize) -> Vec<(String, String)> {
    let mut decoder = sluice_sse::Decoder::new();
    let mut seen = Vec::new();
    let read = async {
        while seen.len() < n {
            let frame = subscription.frames.next().await.expect("the subscription ended");
            decoder
                .feed(&frame, |e| {
                    seen.push((e.event_type.into_owned(), e.data));
                })
                .unwrap();
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), read).await.is_err() {
        panic!("waited 30 s for {n} events, got {seen:?}");
    }
    seen
}

/// Publishes `draft` on `hub`, again and again while it is refused (Redis coming back), for up
/// to 20 s; the update as acknowledged.
async fn publish_until_acknowledged(
    hub: &Hub,
    draft: sluice_hub::Draft,
) -> Arc<sluice_hub::Update> {
    for _ in 0..200 {
        match hub.publish(draft.clone()).await {
            Ok(update) => return update,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("{draft:?} was refused for 20 s");
}

/// Issue 16, 1.6: Redis came back empty (no persistence). Everything published before is gone,
/// but every update acknowledged after must reach every subscriber: a connected one is told of
/// the reset and then gets each of them, in order, once; a fresh `earliest` one gets what Redis
/// holds, in order, and nothing from before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_a_reset_and_loses_nothing_acknowledged_after() {
    let mut redis = RedisServer::start();
    let shared = config(&redis);
    let (a, b) = (node(&shared).await, node(&shared).await);
    let mut on_b = b.subscribe(on("/x", Cursor::Live)).await.unwrap();
    let mut answer = b
        .subscribe(SubscribeRequest {
            until_event_type: Some("end".to_owned()),
            ..on("/answer", Cursor::Live)
        })
        .await
        .unwrap();
    let mut last_before = 0;
    for n in 0..5 {
        let hub = if n % 2 == 0 { &a } else { &b };
        let update = hub.publish(draft(&format!("old-{n}"), "/x", &format!("old {n}"))).await;
        last_before = last_before.max(update.unwrap().seq());
    }
    assert_eq!(data(&mut on_b, 5).await.len(), 5);

    redis.restart_empty();
    let mut acknowledged = Vec::new();
    for n in 0..12 {
        let hub = if n % 2 == 0 { &a } else { &b };
        let update =
            publish_until_acknowledged(hub, draft(&format!("new-{n}"), "/x", &format!("new {n}")))
                .await;
        assert!(
            update.seq() > last_before,
            "a node's seqs keep rising: {} after {last_before}",
            update.seq()
        );
        acknowledged.push(("message".to_owned(), update.data().to_owned()));
    }

    let mut expected = vec![("sluice-reset".to_owned(), String::new())];
    expected.extend(acknowledged.iter().cloned());
    let mut heard = events(&mut on_b, expected.len()).await;
    heard[0].1.clear();
    assert_eq!(heard, expected, "the connected subscriber: told of the reset, then every one");
    for hub in [&a, &b] {
        let mut fresh = hub.subscribe(on("/x", Cursor::Earliest)).await.unwrap();
        assert_eq!(events(&mut fresh, 12).await, acknowledged, "earliest: what Redis holds");
        let extra = tokio::time::timeout(Duration::from_millis(500), fresh.frames.next()).await;
        assert!(extra.is_err(), "and nothing else: {extra:?}");
    }
    let mut resumed = a.subscribe(on("/x", Cursor::After("old-3".into()))).await.unwrap();
    let mut heard = events(&mut resumed, 13).await;
    heard[0].1.clear();
    assert_eq!(heard, expected, "a cursor lost with Redis's data: reset, then what it holds");

    // A stream read to its end (an answer) cannot continue past the reset: it is told to
    // reconnect and ends, rather than wait for an end that may never come.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        let mut frames = Vec::new();
        while let Some(frame) = answer.frames.next().await {
            frames.push(String::from_utf8_lossy(&frame).into_owned());
        }
        frames
    })
    .await
    .expect("the answer's reader ends");
    assert!(ended.concat().contains("reconnect"), "{ended:?}");
}

/// Redis came back without its last writes (a persistence that lags): the epoch is there but the
/// last seq given went back, so new updates would reuse seqs a node has already passed. That is
/// a reset too: subscribers are told, then get everything Redis holds, the new updates included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_last_writes_is_a_reset_too() {
    let redis = RedisServer::start();
    let shared = config(&redis);
    let hub = node(&shared).await;
    let mut connected = hub.subscribe(on("/y", Cursor::Live)).await.unwrap();
    for n in 0..5 {
        hub.publish(draft(&format!("old-{n}"), "/y", &format!("old {n}"))).await.unwrap();
    }
    assert_eq!(data(&mut connected, 5).await.len(), 5);
    // What a Redis that lost the last two writes holds.
    let key = |name: &str| format!("{{{}}}:{name}", shared.prefix);
    let mut redis_client =
        redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    redis::pipe()
        .cmd("XDEL")
        .arg(key("updates"))
        .arg("4-0")
        .arg("5-0")
        .cmd("XSETID")
        .arg(key("updates"))
        .arg("3-0")
        .cmd("HDEL")
        .arg(key("ids"))
        .arg("old-3")
        .arg("old-4")
        .cmd("SET")
        .arg(key("seq"))
        .arg(3)
        .exec_async(&mut redis_client)
        .await
        .unwrap();
    for n in 0..2 {
        publish_until_acknowledged(&hub, draft(&format!("new-{n}"), "/y", &format!("new {n}")))
            .await;
    }
    let held =
        ["old 0", "old 1", "old 2", "new 0", "new 1"].map(|d| ("message".to_owned(), d.to_owned()));
    let mut heard = events(&mut connected, 1 + held.len()).await;
    assert_eq!(heard.remove(0).0, "sluice-reset");
    assert_eq!(heard, held, "then everything Redis holds, in order");
    let mut fresh = hub.subscribe(on("/y", Cursor::Earliest)).await.unwrap();
    assert_eq!(events(&mut fresh, held.len()).await, held);
}
