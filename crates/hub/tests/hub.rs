//! The hub engine over the memory store: ordering, resume, authorization, slow readers.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sluice_hub::testing::{conformance, draft};
use sluice_hub::{
    CommitListener, Cursor, Draft, Fanout, Hub, HubConfig, MemoryStore, PublishError, Selector,
    Store, StoreError, StreamRecord, SubscribeRequest, Subscription, Update,
};
use sluice_sse::{Decoder, MessageEvent};

fn hub_with(capacity: usize, config: HubConfig) -> Hub {
    let fanout = Fanout::new();
    let store = Arc::new(MemoryStore::new(capacity, fanout.listener()));
    Hub::new(store, fanout, config)
}

fn hub() -> Hub {
    hub_with(100_000, HubConfig::default())
}

fn request(selectors: &[&str], allowed: &[&str], cursor: Cursor) -> SubscribeRequest {
    let parse = |list: &[&str]| list.iter().map(|s| Selector::parse(s).unwrap()).collect();
    SubscribeRequest {
        selectors: parse(selectors),
        allowed_private: parse(allowed),
        cursor,
        until_event_type: None,
        hangup: None,
        direct: None,
    }
}

/// Decodes the next `n` frames of a subscription into events.
async fn take(subscription: &mut Subscription, n: usize) -> Vec<MessageEvent> {
    let mut decoder = Decoder::new();
    let mut events = Vec::new();
    while events.len() < n {
        let frame = subscription.frames.next().await.expect("the subscription ended early");
        decoder.feed(&frame, |e| events.push(e)).unwrap();
    }
    events
}

fn data(events: &[MessageEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(|listener: Arc<dyn CommitListener>| async move {
        Arc::new(MemoryStore::new(10_000, listener)) as Arc<dyn Store>
    })
    .await;
}

#[tokio::test]
async fn memory_store_keeps_only_the_latest() {
    let store = MemoryStore::new(3, Fanout::new().listener());
    for n in 0..5 {
        store.append(draft(&format!("{n}"), "/t", "x")).await.unwrap();
    }
    let kept: Vec<_> = store.read_after(0, 10).await.unwrap().iter().map(|u| u.seq()).collect();
    assert_eq!(kept, [3, 4, 5]);
    assert_eq!(store.find("0").await.unwrap(), None);
    assert_eq!(store.find("4").await.unwrap(), Some(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_has_no_gap_and_no_duplicate_under_load() {
    // Queues big enough that nobody is cut off as slow: this test is about order.
    let hub = hub_with(100_000, HubConfig { queue_capacity: 10_000, ..HubConfig::default() });
    const TOTAL: usize = 3000;
    let publishers: Vec<_> = (0..3)
        .map(|p| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for n in 0..TOTAL / 3 {
                    hub.publish(Draft::new("/stress", format!("{p}-{n}"))).await.unwrap();
                    if n % 25 == 0 {
                        // Paced, so that subscribers join while publishing goes on.
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();

    // Subscribers join at different moments, each resuming from an update already published.
    let mut checks = Vec::new();
    for round in 0..12 {
        // Join once a twelfth more of the updates is out (never waiting past the publishers).
        let mut kept = hub.store().read_after(0, TOTAL).await.unwrap();
        while kept.len() < round * TOTAL / 12 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            kept = hub.store().read_after(0, TOTAL).await.unwrap();
        }
        let cursor = match kept.get(kept.len() / 2) {
            Some(update) if round % 3 != 0 => Cursor::After(update.id().to_owned()),
            _ => Cursor::Earliest,
        };
        let mut subscription =
            hub.subscribe(request(&["/stress"], &[], cursor.clone())).await.unwrap();
        let hub = hub.clone();
        checks.push(tokio::spawn(async move {
            // Read as it arrives, then check against the store's final order.
            let mut events = Vec::new();
            let mut decoder = Decoder::new();
            while !events.iter().any(|e: &MessageEvent| e.data == "last") {
                let frame = subscription.frames.next().await.expect("ended early");
                decoder.feed(&frame, |e| events.push(e)).unwrap();
            }
            let all = hub.store().read_after(0, TOTAL + 2).await.unwrap();
            let start = match &cursor {
                Cursor::After(id) => all.iter().position(|u| u.id() == id).unwrap() + 1,
                _ => 0,
            };
            let want: Vec<&str> = all[start..].iter().map(|u| u.id()).collect();
            let got: Vec<&str> = events.iter().map(|e| e.last_event_id.as_str()).collect();
            assert_eq!(got, want, "from {cursor:?}: every update once, in store order");
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    hub.publish(Draft::new("/stress", "last")).await.unwrap();
    for check in checks {
        check.await.unwrap();
    }
}

#[tokio::test]
async fn a_slow_subscriber_is_cut_off_without_slowing_anyone() {
    let hub = hub_with(1000, HubConfig { queue_capacity: 4, ..HubConfig::default() });
    let mut stalled = hub.subscribe(request(&["/t"], &[], Cursor::Live)).await.unwrap();
    let mut reader = hub.subscribe(request(&["/t"], &[], Cursor::Live)).await.unwrap();
    for n in 0..100 {
        // The reader keeps up; the stalled one never reads; publishing never waits for either.
        hub.publish(Draft::new("/t", n.to_string())).await.unwrap();
        assert_eq!(data(&take(&mut reader, 1).await), [n.to_string()]);
    }
    // Cut off at once: nothing queued is drained to it, only a comment that says why.
    let last = stalled.frames.next().await.expect("a final comment says why");
    assert!(std::str::from_utf8(&last).unwrap().starts_with(": sluice: disconnected"));
    assert!(stalled.frames.next().await.is_none());
    assert_eq!(hub.subscriber_count(), 1);
}

#[tokio::test]
async fn a_cut_subscriber_is_hung_up_at_once_and_no_longer_counted() {
    let hub = hub_with(1000, HubConfig { queue_capacity: 2, ..HubConfig::default() });
    let (hung_up, mut hangups) = tokio::sync::mpsc::unbounded_channel();
    let mut stalled = request(&["/t"], &[], Cursor::Live);
    stalled.hangup = Some(sluice_hub::Hangup::new(move || hung_up.send(()).unwrap()));
    let _stalled = hub.subscribe(stalled).await.unwrap();
    for n in 0..3 {
        hub.publish(Draft::new("/t", n.to_string())).await.unwrap();
    }
    // The hook runs without the stream ever being polled: the server closes the socket then.
    hangups.recv().await.expect("the hang-up hook runs");
    assert_eq!(hub.subscriber_count(), 0, "it left the registry when it was cut");
}

#[tokio::test]
async fn topics_and_selectors_past_the_limits_are_refused() {
    let limits = sluice_hub::Limits {
        max_topic_length: 16,
        max_topics_per_update: 2,
        max_template_length: 12,
        max_template_variables: 2,
    };
    let hub = hub_with(100, HubConfig { limits, ..HubConfig::default() });
    let long = "/".repeat(17);
    let refused = |r: Result<_, sluice_hub::SubscribeError>| {
        matches!(r, Err(sluice_hub::SubscribeError::Limit(_)))
    };
    assert!(refused(hub.subscribe(request(&[long.as_str()], &[], Cursor::Live)).await.map(drop)));
    assert!(refused(hub.subscribe(request(&["/{a}/{b}/{c}"], &[], Cursor::Live)).await.map(drop)));
    assert!(refused(
        hub.subscribe(request(&["/abcdefgh/{id}"], &[], Cursor::Live)).await.map(drop)
    ));
    assert!(hub.subscribe(request(&["/{a}/{b}"], &[], Cursor::Live)).await.is_ok());
    let publish_refused = |r: Result<_, PublishError>| matches!(r, Err(PublishError::Limit(_)));
    assert!(publish_refused(hub.publish(Draft::new(long.as_str(), "x")).await));
    let three =
        Draft { topics: vec!["/a".into(), "/b".into(), "/c".into()], ..Draft::new("", "x") };
    assert!(publish_refused(hub.publish(three).await));
    assert!(hub.publish(Draft::new("/a", "x")).await.is_ok());
}

#[tokio::test]
async fn private_updates_need_a_matching_claim() {
    let hub = hub();
    let mut anonymous = hub.subscribe(request(&["/books/{id}"], &[], Cursor::Live)).await.unwrap();
    let mut reader =
        hub.subscribe(request(&["/books/{id}"], &["/books/1"], Cursor::Live)).await.unwrap();
    let mut via_alternate =
        hub.subscribe(request(&["/books/{id}"], &["/shelves/{s}"], Cursor::Live)).await.unwrap();
    let private = |topics: &[&str], data: &str| Draft {
        private: true,
        topics: topics.iter().map(|t| (*t).to_owned()).collect(),
        ..Draft::new("", data)
    };
    hub.publish(private(&["/books/1"], "secret one")).await.unwrap();
    hub.publish(private(&["/books/2"], "secret two")).await.unwrap();
    hub.publish(private(&["/books/3", "/shelves/a"], "secret three")).await.unwrap();
    hub.publish(Draft::new("/books/4", "public")).await.unwrap();
    assert_eq!(data(&take(&mut anonymous, 1).await), ["public"]);
    assert_eq!(data(&take(&mut reader, 2).await), ["secret one", "public"]);
    assert_eq!(data(&take(&mut via_alternate, 2).await), ["secret three", "public"]);
}

#[tokio::test]
async fn reserved_topics_need_an_exact_selector() {
    let hub = hub();
    let topic = "/.well-known/sluice/generations/abc";
    let mut everything = hub.subscribe(request(&["*"], &["*"], Cursor::Live)).await.unwrap();
    let mut template = hub
        .subscribe(request(&["/.well-known/sluice/{+rest}"], &["*"], Cursor::Live))
        .await
        .unwrap();
    let mut exact = hub.subscribe(request(&[topic], &[topic], Cursor::Live)).await.unwrap();
    hub.publish(Draft { private: true, ..Draft::new(topic, "token") }).await.unwrap();
    hub.publish(Draft::new("/public", "hello")).await.unwrap();
    assert_eq!(data(&take(&mut everything, 1).await), ["hello"]);
    assert_eq!(data(&take(&mut exact, 1).await), ["token"]);
    hub.publish(Draft::new("/.well-known/sluice/other", "x")).await.unwrap();
    hub.shut_down().await.unwrap();
    assert!(template.frames.next().await.is_none(), "the template matched nothing reserved");
}

#[tokio::test]
async fn an_unknown_cursor_resets_then_sends_everything_kept() {
    let hub = hub_with(2, HubConfig::default());
    for n in 0..4 {
        hub.publish(draft(&format!("u{n}"), "/t", &format!("{n}"))).await.unwrap();
    }
    let mut late = hub.subscribe(request(&["/t"], &[], Cursor::After("u0".into()))).await.unwrap();
    assert!(late.reset);
    assert_eq!(late.resumed_after.as_deref(), Some("earliest"));
    let events = take(&mut late, 3).await;
    assert_eq!(events[0].event_type, sluice_hub::RESET_EVENT_TYPE);
    assert_eq!(data(&events[1..]), ["2", "3"]);

    let mut known = hub.subscribe(request(&["/t"], &[], Cursor::After("u2".into()))).await.unwrap();
    assert!(!known.reset);
    assert_eq!(known.resumed_after.as_deref(), Some("u2"));
    assert_eq!(data(&take(&mut known, 1).await), ["3"]);
}

#[tokio::test]
async fn an_update_matching_twice_is_sent_once() {
    let hub = hub();
    let mut subscription =
        hub.subscribe(request(&["/a", "/b", "*"], &[], Cursor::Live)).await.unwrap();
    hub.publish(Draft { topics: vec!["/a".into(), "/b".into()], ..Draft::new("", "both") })
        .await
        .unwrap();
    hub.publish(Draft::new("/c", "next")).await.unwrap();
    assert_eq!(data(&take(&mut subscription, 2).await), ["both", "next"]);
}

#[tokio::test]
async fn bad_updates_are_refused() {
    let hub = hub();
    let no_topic = Draft { topics: vec![], ..Draft::new("", "x") };
    assert!(matches!(hub.publish(no_topic).await, Err(PublishError::NoTopic)));
    assert!(matches!(hub.publish(draft("#1", "/t", "x")).await, Err(PublishError::ReservedId)));
    assert!(matches!(hub.publish(draft("", "/t", "x")).await, Err(PublishError::ReservedId)));
    let injected = Draft { event_type: Some("a\ndata: forged".into()), ..Draft::new("/t", "x") };
    assert!(matches!(
        hub.publish(injected).await,
        Err(PublishError::Store(StoreError::Invalid(_)))
    ));
    hub.publish(draft("taken", "/t", "x")).await.unwrap();
    assert!(matches!(
        hub.publish(draft("taken", "/t", "y")).await,
        Err(PublishError::Store(StoreError::Conflict(_)))
    ));
}

#[tokio::test]
async fn shutting_down_ends_every_subscription() {
    let hub = hub();
    let mut subscription = hub.subscribe(request(&["*"], &[], Cursor::Live)).await.unwrap();
    hub.shut_down().await.unwrap();
    assert!(subscription.frames.next().await.is_none());
    // A subscriber arriving during shutdown is refused: admitted, nothing would ever end it.
    let late = hub.subscribe(request(&["*"], &[], Cursor::Live)).await;
    assert!(matches!(late, Err(sluice_hub::SubscribeError::Store(StoreError::Closed))), "{late:?}");
    assert!(matches!(
        hub.publish(Draft::new("/t", "late")).await,
        Err(PublishError::Store(StoreError::Closed))
    ));
}

/// A memory store whose history reads fail once `broken` is set.
#[derive(Debug)]
struct BrokenReads {
    inner: MemoryStore,
    broken: std::sync::atomic::AtomicBool,
}

impl Store for BrokenReads {
    fn append(&self, draft: Draft) -> BoxFuture<'_, Result<Arc<Update>, StoreError>> {
        self.inner.append(draft)
    }

    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Update>>, StoreError>> {
        if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::Backend("disk on fire".into())) });
        }
        self.inner.read_after(after, limit)
    }

    fn find(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        self.inner.find(id)
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.close()
    }

    fn put_stream(&self, record: StreamRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.put_stream(record)
    }

    fn stream(&self, id: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        self.inner.stream(id)
    }

    fn latest_stream(&self, key: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        self.inner.latest_stream(key)
    }

    fn ledger(&self) -> &dyn sluice_hub::Ledger {
        self.inner.ledger()
    }
}

/// Issue 10, finding 6: a replay that fails ends the stream with a comment; it never goes
/// live past the gap (the subscriber's next Last-Event-ID would skip what it never got).
#[tokio::test]
async fn a_replay_that_fails_ends_the_stream_instead_of_going_live() {
    // No window of recent updates: every replay reads the store.
    let fanout = Fanout::with_recent(0, 0);
    let store = Arc::new(BrokenReads {
        inner: MemoryStore::new(100, fanout.listener()),
        broken: std::sync::atomic::AtomicBool::new(false),
    });
    let hub = Hub::new(Arc::clone(&store) as Arc<dyn Store>, fanout, HubConfig::default());
    let first = hub.publish(Draft::new("/t", "one")).await.unwrap();
    hub.publish(Draft::new("/t", "two")).await.unwrap();
    // Wait until the fan-out has seen both, so the replay must read "two" from the store.
    let mut probe = hub.subscribe(request(&["/t"], &[], Cursor::Earliest)).await.unwrap();
    take(&mut probe, 2).await;
    store.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut resumed =
        hub.subscribe(request(&["/t"], &[], Cursor::After(first.id().to_owned()))).await.unwrap();
    hub.publish(Draft::new("/t", "three")).await.unwrap();
    let frame = resumed.frames.next().await.expect("a comment says why");
    assert!(
        std::str::from_utf8(&frame).unwrap().contains("history could not be read"),
        "{frame:?}"
    );
    assert!(resumed.frames.next().await.is_none(), "the stream ends; \"three\" is not sent live");
}

/// A hub over a memory store keeping everything, with the given window of recent updates.
fn hub_with_recent(updates: usize, bytes: usize, replay_page: usize) -> Hub {
    let fanout = Fanout::with_recent(updates, bytes);
    let store = Arc::new(MemoryStore::new(100_000, fanout.listener()));
    Hub::new(store, fanout, HubConfig { replay_page, ..HubConfig::default() })
}

/// Every replay served from the window of recent updates (through its topic index, or matched
/// in place) is the replay the store gives: same updates, same order, for every kind of
/// selector, private updates, updates on several topics, reserved topics, every cursor, pages
/// smaller than a topic's updates, and a window too small to hold the cursor.
#[tokio::test]
async fn replay_from_recent_updates_is_the_replay_from_the_store() {
    let hubs = [
        hub_with_recent(0, 0, 512),
        hub_with_recent(1_000, 1 << 20, 512),
        hub_with_recent(1_000, 1 << 20, 3),
        hub_with_recent(40, 1 << 20, 4),
    ];
    let reserved = "/.well-known/sluice/generations/g";
    // Subscription events, which the window does not keep (private ones), and a public
    // update on the same topics, which it does.
    let subscriptions = "/.well-known/mercure/subscriptions/%2Fa/urn%3Auuid%3A1";
    let mut drafts = Vec::new();
    for n in 0..140 {
        let topics: Vec<&str> = match n % 7 {
            0 => vec!["/a"],
            1 => vec!["/b"],
            2 => vec!["/a", "/b"],
            3 => vec!["/c/1"],
            4 => vec![reserved],
            5 => vec![subscriptions],
            _ => vec!["/b", "/c/2"],
        };
        drafts.push(Draft {
            id: Some(format!("u{n}")),
            private: n % 4 == 1 || (n % 7 == 5 && n % 3 != 0),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            ..Draft::new("", format!("d{n}"))
        });
    }
    let last = ["/a", "/b", "/c/1", "/nothing", reserved, subscriptions];
    drafts.push(Draft {
        id: Some("last".into()),
        event_type: Some("last".into()),
        topics: last.iter().map(|t| (*t).to_owned()).collect(),
        ..Draft::new("", "last")
    });
    for hub in &hubs {
        for draft in &drafts {
            hub.publish(draft.clone()).await.unwrap();
        }
    }
    let filters: [(&[&str], &[&str]); 9] = [
        (&["/a"], &[]),
        (&["/a", "/b"], &["/b"]),
        (&["/c/{n}"], &["*"]),
        (&[reserved, "/b"], &[reserved]),
        (&["*"], &["/a"]),
        (&["/nothing"], &[]),
        (&["*"], &["*"]),
        (&[subscriptions], &[subscriptions]),
        (&["/a", subscriptions], &[]),
    ];
    for (selectors, allowed) in filters {
        for cursor in ["u0", "u7", "u58", "u100", "u138"] {
            let mut replays = Vec::new();
            for hub in &hubs {
                let cursor = Cursor::After(cursor.to_owned());
                let request = SubscribeRequest {
                    until_event_type: Some("last".into()),
                    ..request(selectors, allowed, cursor)
                };
                let mut subscription = hub.subscribe(request).await.unwrap();
                // Each stream ends after the last update, which every filter receives; one
                // that skipped it would never end, so it is given up on (far past the
                // milliseconds this takes) and the comparison shows what it missed.
                let mut got = Vec::new();
                let mut decoder = Decoder::new();
                let read = async {
                    while let Some(frame) = subscription.frames.next().await {
                        decoder.feed(&frame, |e| got.push(e.data)).unwrap();
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(30), read).await;
                replays.push(got);
            }
            assert_eq!(replays[0].last().map(String::as_str), Some("last"));
            let names = ["store", "window", "small pages", "small window"];
            for (replay, hub) in replays.iter().zip(names) {
                assert_eq!(replay, &replays[0], "{hub}: {selectors:?} after {cursor}");
            }
        }
    }
}
