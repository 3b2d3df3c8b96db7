//! The [`Store`] conformance suite: one set of checks that every implementation runs
//! (memory, SQLite, Redis), so they cannot drift apart; and the invariants of selector
//! matching on arbitrary input ([`check_selector`]), shared by the fuzz target (`make fuzz`)
//! and the test that replays its corpus.
//!
//! ```no_run
//! use std::sync::Arc;
//! use sluice_hub::{CommitListener, MemoryStore, Store};
//!
//! async fn memory_store_conforms() {
//!     sluice_hub::testing::conformance(|listener: Arc<dyn CommitListener>| async move {
//!         Arc::new(MemoryStore::new(10_000, listener)) as Arc<dyn Store>
//!     })
//!     .await;
//! }
//! ```

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::selector::Selector;
use crate::store::{
    BudgetPeriod, Charge, Charged, CommitListener, KeyLimits, KeyRecord, KeyUsage, Ledger, Limit,
    Spend, Store, StoreError, StreamRecord,
};
use crate::update::{Draft, Update};

/// A listener that remembers what it was told.
#[derive(Debug, Default)]
pub struct Recorder {
    started_after: Mutex<Option<u64>>,
    heard: Mutex<Vec<Arc<Update>>>,
}

impl Recorder {
    /// The `seq`s heard so far, in the order heard.
    pub fn seqs(&self) -> Vec<u64> {
        self.heard.lock().unwrap().iter().map(|u| u.seq()).collect()
    }

    /// What [`CommitListener::starts_after`] was told, if it was called.
    pub fn started_after(&self) -> Option<u64> {
        *self.started_after.lock().unwrap()
    }
}

impl CommitListener for Recorder {
    fn starts_after(&self, seq: u64) {
        let previous = self.started_after.lock().unwrap().replace(seq);
        assert!(previous.is_none(), "starts_after is called once");
        assert!(self.heard.lock().unwrap().is_empty(), "starts_after comes before any commit");
    }

    fn committed(&self, updates: &[Arc<Update>]) {
        self.heard.lock().unwrap().extend(updates.iter().cloned());
    }

    fn reset(&self, seq: u64) {
        let last = self.heard.lock().unwrap().last().map_or(0, |u| u.seq());
        assert!(seq > last, "a reset at {seq} keeps the order rising past {last}");
    }
}

/// A draft with an id, on `topic`.
pub fn draft(id: &str, topic: &str, data: &str) -> Draft {
    Draft { id: Some(id.to_owned()), ..Draft::new(topic, data) }
}

/// Runs every check against fresh stores made by `open` (one per check), each given a
/// [`Recorder`] as its listener. Panics on the first failure.
pub async fn conformance<F, Fut>(open: F)
where
    F: Fn(Arc<dyn CommitListener>) -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let fresh = || async {
        let recorder = Arc::new(Recorder::default());
        let store = open(Arc::clone(&recorder) as Arc<dyn CommitListener>).await;
        (store, recorder)
    };
    let (store, recorder) = fresh().await;
    appends_in_order_and_reads_back(&*store, &recorder).await;
    let (store, recorder) = fresh().await;
    duplicate_ids_conflict_and_change_nothing(&*store, &recorder).await;
    let (store, _) = fresh().await;
    every_field_survives(&*store).await;
    let (store, recorder) = fresh().await;
    concurrent_appends_get_one_order(store, &recorder).await;
    let (store, _) = fresh().await;
    stream_records_are_found_by_id_and_key(&*store).await;
    let (store, _) = fresh().await;
    keys_are_put_listed_and_revoked(store.ledger()).await;
    let (store, _) = fresh().await;
    charges_and_spends_follow_the_limits(store.ledger()).await;
    let (store, _) = fresh().await;
    concurrent_charges_admit_exactly_the_limit(store).await;
    let (store, _) = fresh().await;
    closing_refuses_appends(&*store).await;
}

async fn appends_in_order_and_reads_back(store: &dyn Store, recorder: &Recorder) {
    assert!(store.read_after(0, 10).await.unwrap().is_empty(), "a new store is empty");
    assert_eq!(recorder.started_after(), Some(0), "a new store starts the listener after 0");
    let mut seqs = Vec::new();
    for n in 0..25 {
        let update = store.append(draft(&format!("id-{n}"), "/t", &format!("{n}"))).await.unwrap();
        assert_eq!(update.id(), format!("id-{n}"));
        seqs.push(update.seq());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs increase: {seqs:?}");
    assert_eq!(recorder.seqs(), seqs, "the listener hears each commit once, in order");

    let all = store.read_after(0, 100).await.unwrap();
    assert_eq!(all.iter().map(|u| u.seq()).collect::<Vec<_>>(), seqs);
    let page = store.read_after(seqs[4], 3).await.unwrap();
    assert_eq!(page.iter().map(|u| u.seq()).collect::<Vec<_>>(), seqs[5..8]);
    assert!(store.read_after(seqs[24], 10).await.unwrap().is_empty());

    assert_eq!(store.find("id-7").await.unwrap(), Some(seqs[7]));
    assert_eq!(store.find("id-unknown").await.unwrap(), None);
}

async fn duplicate_ids_conflict_and_change_nothing(store: &dyn Store, recorder: &Recorder) {
    let first = store.append(draft("dup", "/t", "first")).await.unwrap();
    match store.append(draft("dup", "/t", "second")).await {
        Err(StoreError::Conflict(id)) => assert_eq!(id, "dup"),
        other => panic!("a taken id must conflict, got {other:?}"),
    }
    let next = store.append(draft("after", "/t", "third")).await.unwrap();
    assert!(next.seq() > first.seq());
    let kept = store.read_after(0, 10).await.unwrap();
    let data: Vec<_> = kept.iter().map(|u| u.data()).collect();
    assert_eq!(data, ["first", "third"], "the refused update is not kept");
    assert_eq!(recorder.seqs(), [first.seq(), next.seq()], "nor announced");
}

async fn every_field_survives(store: &dyn Store) {
    let original = Draft {
        id: Some("urn:uuid:field-test".to_owned()),
        topics: vec!["https://example.com/a".to_owned(), "/alternate/ü".to_owned()],
        data: "line one\nline two\r\n三 🎉".to_owned(),
        event_type: Some("custom".to_owned()),
        retry: Some(2500),
        private: true,
    };
    let appended = store.append(original.clone()).await.unwrap();
    let read = store.read_after(0, 1).await.unwrap().pop().expect("the update is kept");
    assert_eq!(*read, *appended, "read back exactly as appended");
    assert_eq!(read.topics(), original.topics);
    assert_eq!(read.data(), original.data);
    assert_eq!(read.event_type(), Some("custom"));
    assert_eq!(read.retry(), Some(2500));
    assert!(read.private());
    assert!(read.published_ms() > 0);
}

async fn concurrent_appends_get_one_order(store: Arc<dyn Store>, recorder: &Recorder) {
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..50 {
                    let id = format!("t{task}-{n}");
                    seqs.push(store.append(draft(&id, "/c", "x")).await.unwrap().seq());
                }
                seqs
            })
        })
        .collect();
    let mut returned = Vec::new();
    for task in tasks {
        let seqs = task.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "one publisher's updates stay in order");
        returned.extend(seqs);
    }
    returned.sort_unstable();
    returned.dedup();
    assert_eq!(returned.len(), 400, "every append got its own seq");
    let heard = recorder.seqs();
    assert!(heard.windows(2).all(|w| w[0] < w[1]), "the listener hears seq order");
    assert_eq!(heard, returned);
    let stored: Vec<u64> =
        store.read_after(0, 1000).await.unwrap().iter().map(|u| u.seq()).collect();
    assert_eq!(stored, returned);
}

async fn stream_records_are_found_by_id_and_key(store: &dyn Store) {
    let record = |id: &str, key: Option<&str>, created_ms: u64| StreamRecord {
        id: id.to_owned(),
        token_hash: [7; 32],
        kind: "test".to_owned(),
        created_ms,
        key: key.map(str::to_owned),
    };
    let now = crate::now_ms();
    store.put_stream(record("s1", Some("chat-a"), now)).await.unwrap();
    store.put_stream(record("s2", None, now + 1)).await.unwrap();
    store.put_stream(record("s3", Some("chat-b"), now + 2)).await.unwrap();
    store.put_stream(record("s4", Some("chat-a"), now + 3)).await.unwrap();
    assert!(
        matches!(store.put_stream(record("s1", None, now)).await, Err(StoreError::Conflict(_))),
        "a taken stream id conflicts"
    );
    assert_eq!(store.stream("s1").await.unwrap(), Some(record("s1", Some("chat-a"), now)));
    assert_eq!(store.stream("s2").await.unwrap(), Some(record("s2", None, now + 1)));
    assert_eq!(store.stream("nope").await.unwrap(), None);
    let latest =
        |key: &'static str| async move { store.latest_stream(key).await.unwrap().map(|r| r.id) };
    assert_eq!(latest("chat-a").await.as_deref(), Some("s4"), "the newest with the key");
    assert_eq!(latest("chat-b").await.as_deref(), Some("s3"));
    assert_eq!(latest("chat-c").await, None);
}

fn key_record(id: &str, name: &str, created_ms: u64) -> KeyRecord {
    KeyRecord {
        id: id.to_owned(),
        name: name.to_owned(),
        hash: [7; 32],
        prefix: format!("sk-{id}"),
        limits: KeyLimits {
            models: vec!["m".to_owned()],
            requests_per_minute: Some(3),
            token_budget: Some(1_000),
            budget_period: BudgetPeriod::Day,
            ..KeyLimits::default()
        },
        created_ms,
        expires_ms: None,
        revoked_ms: None,
    }
}

async fn keys_are_put_listed_and_revoked(ledger: &dyn Ledger) {
    ledger.put_key(key_record("k1", "team-a", 1)).await.unwrap();
    ledger.put_key(key_record("k2", "team-b", 2)).await.unwrap();
    let taken = ledger.put_key(key_record("k3", "team-a", 3)).await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "a live name is taken: {taken:?}");
    let same_id = ledger.put_key(key_record("k1", "team-c", 3)).await;
    assert!(matches!(same_id, Err(StoreError::Conflict(_))), "an id is taken: {same_id:?}");
    assert_eq!(
        ledger.keys().await.unwrap(),
        [key_record("k1", "team-a", 1), key_record("k2", "team-b", 2)]
    );

    assert!(ledger.revoke_key("k1", 50).await.unwrap());
    assert!(!ledger.revoke_key("k1", 60).await.unwrap(), "a key is revoked once");
    assert!(!ledger.revoke_key("nope", 60).await.unwrap());
    ledger.put_key(key_record("k3", "team-a", 3)).await.unwrap();
    let keys = ledger.keys().await.unwrap();
    let revoked: Vec<_> = keys.iter().map(|k| (k.id.as_str(), k.revoked_ms)).collect();
    assert_eq!(revoked, [("k1", Some(50)), ("k2", None), ("k3", None)], "the name is free again");

    let charge = Charge {
        key: "k1".to_owned(),
        minute: 1,
        period: 1,
        requests_per_minute: None,
        tokens_per_minute: None,
        token_budget: None,
        revocable: true,
    };
    assert_eq!(ledger.charge(&charge).await.unwrap(), Charged::Revoked);
    let unrevocable = Charge { revocable: false, ..charge };
    assert_eq!(ledger.charge(&unrevocable).await.unwrap(), Charged::Admitted);
}

async fn charges_and_spends_follow_the_limits(ledger: &dyn Ledger) {
    let charge = |minute, period| Charge {
        key: "k".to_owned(),
        minute,
        period,
        requests_per_minute: Some(2),
        tokens_per_minute: Some(100),
        token_budget: Some(150),
        revocable: false,
    };
    let spend = |minute, period, prompt_tokens, cancelled| Spend {
        key: "k".to_owned(),
        minute,
        period,
        prompt_tokens,
        completion_tokens: 10,
        cancelled,
    };
    assert_eq!(ledger.charge(&charge(10, 1)).await.unwrap(), Charged::Admitted);
    assert_eq!(ledger.charge(&charge(9, 1)).await.unwrap(), Charged::Admitted, "a late clock");
    let over = ledger.charge(&charge(10, 1)).await.unwrap();
    assert_eq!(over, Charged::Over(Limit::RequestsPerMinute));
    assert_eq!(ledger.charge(&charge(11, 1)).await.unwrap(), Charged::Admitted, "a new minute");
    ledger.spend(&spend(11, 1, 90, false)).await.unwrap();
    let over = ledger.charge(&charge(11, 1)).await.unwrap();
    assert_eq!(over, Charged::Over(Limit::TokensPerMinute));
    ledger.spend(&spend(12, 1, 50, true)).await.unwrap();
    assert_eq!(ledger.charge(&charge(12, 1)).await.unwrap(), Charged::Over(Limit::Budget));
    assert_eq!(ledger.charge(&charge(13, 2)).await.unwrap(), Charged::Admitted, "a new period");

    let usage = ledger.usage().await.unwrap();
    let expected = KeyUsage {
        requests: 4,
        prompt_tokens: 140,
        completion_tokens: 20,
        cancelled: 1,
        cancelled_tokens: 60,
        minute: 13,
        minute_requests: 1,
        minute_tokens: 0,
        period: 2,
        period_tokens: 0,
    };
    assert_eq!(usage, [("k".to_owned(), expected)]);
}

async fn concurrent_charges_admit_exactly_the_limit(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let charge = Charge {
                    key: "busy".to_owned(),
                    minute: 5,
                    period: 5,
                    requests_per_minute: Some(25),
                    tokens_per_minute: None,
                    token_budget: None,
                    revocable: false,
                };
                store.ledger().charge(&charge).await.unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        admitted += usize::from(task.await.unwrap() == Charged::Admitted);
    }
    assert_eq!(admitted, 25, "a limit holds however many ask at once");
}

async fn closing_refuses_appends(store: &dyn Store) {
    store.append(draft("before", "/t", "x")).await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(store.append(draft("after", "/t", "x")).await, Err(StoreError::Closed)));
}

/// Selector parsing and matching on arbitrary input: the bytes before the first newline are
/// the selector, the rest the topic (both read as UTF-8, lossily). Panics if an invariant
/// breaks: parsing never panics; a selector matches its own text; `*` matches everything, an
/// exact selector only its own text; and a template's match does at most (topic length + 1)
/// × automaton edges moves, so no topic can make matching super-linear. The selector is also
/// compiled as a URL pattern and matched against the topic, which must not panic either.
pub fn check_selector(input: &[u8]) {
    let text = String::from_utf8_lossy(input);
    let (selector, topic) = text.split_once('\n').unwrap_or((&text, ""));
    let Ok(parsed) = Selector::parse(selector) else { return };
    assert!(parsed.matches(selector), "{selector:?} must match its own text");
    let (matched, steps, bound) = parsed.matches_with_cost(topic);
    assert_eq!(matched, parsed.matches(topic));
    if parsed.is_any() {
        assert!(matched);
    } else if parsed.exact().is_some() {
        assert_eq!(matched, topic == selector, "an exact selector matches only itself");
    } else {
        assert!(steps <= bound, "{selector:?} against {topic:?}: {steps} moves > {bound}");
    }
    // The same text as a draft-08 URL pattern: compiling and matching never panic.
    let base = url::Url::parse("https://hub.example/.well-known/mercure").expect("a valid URL");
    if let Ok(pattern) = Selector::url_pattern(selector, &base) {
        let _ = pattern.matches(topic);
    }
}

/// A real `redis-server` for tests: on a free port, in a temporary directory of its own, with
/// every write persisted before it is answered (`appendonly yes`, `appendfsync always`), so a
/// restart keeps what was acknowledged. Stopped (and its directory removed) when dropped.
#[derive(Debug)]
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("sluice-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer { port, dir, child: None };
        server.restart();
        server
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it at once (SIGKILL: what it persisted is what survives).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it and starts it again on the same port with its files gone: what a Redis that
    /// persists nothing (or lost its disk) comes back as, the case outside the documented
    /// durability that a hub must still notice rather than lose what is acknowledged after.
    pub fn restart_empty(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).unwrap();
        std::fs::create_dir_all(&self.dir).unwrap();
        self.restart();
    }

    /// Starts it again on the same port and files.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut reply = [0u8; 16];
                stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read(&mut reply).is_ok_and(|n| reply[..n].starts_with(b"+PONG"))
                {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {}", self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    /// Replays the fuzz corpus (`fuzz/corpus/selector`, grown by `make fuzz`) through the
    /// target's checks, so a plain `cargo test` keeps everything the fuzzer found covered.
    #[test]
    fn every_selector_corpus_input_passes_the_checks() {
        let replayed = sluice_sse::testing::replay_corpus("selector", super::check_selector);
        assert!(replayed > 0);
    }
}
