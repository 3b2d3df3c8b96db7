//! The SQLite store on real files: conformance, reopening, retention, group commit, and
//! durability across `kill -9`.

use futures_util::StreamExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_hub::testing::{Recorder, conformance, draft};
use sluice_hub::{
    CommitListener, Draft, Fanout, SqliteConfig, SqliteStore, Store, StoreError, Synchronous,
    Update,
};

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(path), Fanout::new().listener()).unwrap()
}

async fn seqs(store: &dyn Store) -> Vec<u64> {
    store.read_after(0, 100_000).await.unwrap().iter().map(|u| u.seq()).collect()
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let opened = AtomicUsize::new(0);
    conformance(|listener: Arc<dyn CommitListener>| {
        let n = opened.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("conformance-{n}.db"));
        async move {
            Arc::new(SqliteStore::open(SqliteConfig::new(path), listener).unwrap())
                as Arc<dyn Store>
        }
    })
    .await;
}

#[tokio::test]
async fn sqlite_store_conforms_with_synchronous_full_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let opened = AtomicUsize::new(0);
    conformance(|listener: Arc<dyn CommitListener>| {
        let n = opened.fetch_add(1, Ordering::Relaxed);
        let config = SqliteConfig {
            max_updates: Some(100_000),
            max_age: Some(Duration::from_secs(3600)),
            synchronous: Synchronous::Full,
            ..SqliteConfig::new(dir.path().join(format!("full-{n}.db")))
        };
        async move { Arc::new(SqliteStore::open(config, listener).unwrap()) as Arc<dyn Store> }
    })
    .await;
}

#[tokio::test]
async fn reopening_finds_everything_and_continues_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dirs/hub.db");
    let mut appended = Vec::new();
    let store = open(&path);
    for n in 0..10 {
        let mut update = draft(&format!("id-{n}"), "/a", &format!("data {n}\nline two"));
        update.topics.push(format!("/alt/{n}"));
        update.event_type = (n % 2 == 0).then(|| "even".to_owned());
        update.retry = (n % 3 == 0).then_some(u64::MAX - n);
        update.private = n % 4 == 0;
        appended.push(store.append(update).await.unwrap());
    }
    store.close().await.unwrap();
    drop(store);

    let store = open(&path);
    let read = store.read_after(0, 100).await.unwrap();
    assert_eq!(read, appended, "every update comes back exactly");
    assert_eq!(store.find("id-3").await.unwrap(), Some(appended[3].seq()));
    let next = store.append(draft("id-10", "/a", "x")).await.unwrap();
    assert_eq!(next.seq(), appended[9].seq() + 1, "the order goes on where it stopped");
    assert!(next.published_ms() >= appended[9].published_ms());
    assert!(matches!(
        store.append(draft("id-0", "/a", "again")).await,
        Err(StoreError::Conflict(id)) if id == "id-0"
    ));

    // Dropped without `close`: what was acknowledged is there all the same.
    drop(store);
    let store = open(&path);
    assert_eq!(seqs(&store).await, (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn seqs_are_never_given_twice_even_after_retention_emptied_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let config =
        SqliteConfig { max_age: Some(Duration::from_millis(1)), ..SqliteConfig::new(&path) };
    let store = SqliteStore::open(config.clone(), Fanout::new().listener()).unwrap();
    for n in 0..3 {
        store.append(draft(&format!("{n}"), "/t", "x")).await.unwrap();
    }
    // Older than 1 ms once 5 ms have passed, however slow the machine.
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(store.enforce_retention().await.unwrap(), 3);
    assert!(seqs(&store).await.is_empty());
    assert_eq!(store.find("0").await.unwrap(), None);
    store.close().await.unwrap();
    drop(store);

    let store = open(&path);
    assert_eq!(store.append(draft("3", "/t", "x")).await.unwrap().seq(), 4);
    // An id that retention forgot may be used again; its seq is still new.
    assert_eq!(store.append(draft("0", "/t", "x")).await.unwrap().seq(), 5);
}

#[tokio::test]
async fn retention_by_count_keeps_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        SqliteConfig { max_updates: Some(3), ..SqliteConfig::new(dir.path().join("hub.db")) };
    let store = SqliteStore::open(config, Fanout::new().listener()).unwrap();
    for n in 1..=10 {
        store.append(draft(&format!("{n}"), "/t", "x")).await.unwrap();
    }
    let deleted = store.enforce_retention().await.unwrap();
    assert_eq!(seqs(&store).await, [8, 9, 10]);
    assert_eq!(store.find("7").await.unwrap(), None);
    assert_eq!(store.find("9").await.unwrap(), Some(9));
    // The writer may have run a pass of its own after a commit.
    assert_eq!(store.stats().expired, 7);
    assert!(deleted <= 7);
    assert_eq!(store.enforce_retention().await.unwrap(), 0, "nothing more to delete");
}

#[tokio::test]
async fn retention_runs_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        SqliteConfig { max_updates: Some(2), ..SqliteConfig::new(dir.path().join("hub.db")) };
    let store = SqliteStore::open(config, Fanout::new().listener()).unwrap();
    for n in 1..=5 {
        store.append(draft(&format!("{n}"), "/t", "x")).await.unwrap();
    }
    // No call to `enforce_retention`: the idle writer gets to it (every half second).
    for _ in 0..200 {
        if seqs(&store).await == [4, 5] {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("retention never ran: {:?}", seqs(&store).await);
}

#[tokio::test]
async fn retention_by_age_deletes_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let max_age = Duration::from_millis(300);
    let config = SqliteConfig { max_age: Some(max_age), ..SqliteConfig::new(dir.path().join("a")) };
    let store = SqliteStore::open(config, Fanout::new().listener()).unwrap();
    store.append(draft("old-1", "/t", "x")).await.unwrap();
    store.append(draft("old-2", "/t", "x")).await.unwrap();
    tokio::time::sleep(max_age + Duration::from_millis(100)).await;
    let young = store.append(draft("young", "/t", "x")).await.unwrap();
    store.enforce_retention().await.unwrap();
    let checked_at = sluice_hub::now_ms();

    assert_eq!(store.find("old-1").await.unwrap(), None);
    assert_eq!(store.find("old-2").await.unwrap(), None);
    // Retention's cutoff was at most `checked_at - max_age`: if `young` is newer than that,
    // it must have been kept (on a very slow machine it may rightly be gone).
    if young.published_ms() + max_age.as_millis() as u64 > checked_at {
        assert_eq!(seqs(&store).await, [young.seq()]);
    }
}

#[tokio::test]
async fn invalid_and_conflicting_appends_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("hub.db"));
    // Queued together (appends are queued when called), so likely in one transaction.
    let a = store.append(draft("a", "/t", "1"));
    let dup = store.append(draft("a", "/t", "2"));
    let bad =
        store.append(Draft { event_type: Some("two\nlines".to_owned()), ..draft("c", "/t", "3") });
    let b = store.append(draft("b", "/t", "4"));
    let (a, dup, bad, b) = futures_util::join!(a, dup, bad, b);
    assert_eq!(a.unwrap().seq(), 1);
    assert!(matches!(dup, Err(StoreError::Conflict(id)) if id == "a"));
    assert!(matches!(bad, Err(StoreError::Invalid(_))));
    assert_eq!(b.unwrap().seq(), 2, "refused appends take no seq");
    let data: Vec<_> =
        store.read_after(0, 10).await.unwrap().iter().map(|u| u.data().to_owned()).collect();
    assert_eq!(data, ["1", "4"]);
    assert_eq!(store.find("c").await.unwrap(), None);
}

#[tokio::test]
async fn a_file_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    drop(open(&path));
    rusqlite::Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
    let opened = SqliteStore::open(SqliteConfig::new(&path), Fanout::new().listener());
    assert!(matches!(opened, Err(StoreError::Backend(message)) if message.contains("99")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_over_sqlite_resumes_a_subscriber_across_a_restart() {
    use sluice_hub::{Cursor, Hub, HubConfig, Selector, SubscribeRequest};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let start = |path: &Path| {
        let fanout = Fanout::new();
        let store = SqliteStore::open(SqliteConfig::new(path), fanout.listener()).unwrap();
        Hub::new(Arc::new(store), fanout, HubConfig::default())
    };
    let request =
        |cursor| SubscribeRequest::new(vec![Selector::parse("/books/{id}").unwrap()], cursor);

    let hub = start(&path);
    let mut live = hub.subscribe(request(Cursor::Live)).await.unwrap();
    let seen = hub.publish(Draft::new("/books/1", "one")).await.unwrap();
    assert!(live.frames.next().await.unwrap().ends_with(b"data: one\n\n"));
    drop(live);
    hub.shut_down().await.unwrap();
    drop(hub);

    // Restarted: what the subscriber missed while it was away is replayed from the file.
    let hub = start(&path);
    hub.publish(Draft::new("/books/2", "two")).await.unwrap();
    let mut resumed = hub.subscribe(request(Cursor::After(seen.id().to_owned()))).await.unwrap();
    assert!(!resumed.reset, "the cursor is known after the restart");
    assert!(resumed.frames.next().await.unwrap().ends_with(b"data: two\n\n"));
    hub.publish(Draft::new("/books/3", "three")).await.unwrap();
    assert!(resumed.frames.next().await.unwrap().ends_with(b"data: three\n\n"));
}

/// Issue 10, finding 1: a new process replays what the old one stored, before anything new is
/// published (the registry's position used to start at 0 in each process, so the replay was
/// empty until the next publish, and what lay between was skipped for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_hub_replays_history_before_anything_new_is_published() {
    use sluice_hub::{Cursor, Hub, HubConfig, Selector, SubscribeRequest};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.db");
    let start = |path: &Path| {
        let fanout = Fanout::new();
        let store = SqliteStore::open(SqliteConfig::new(path), fanout.listener()).unwrap();
        Hub::new(Arc::new(store), fanout, HubConfig::default())
    };
    let hub = start(&path);
    let mut ids = Vec::new();
    for data in ["a1", "a2", "a3"] {
        ids.push(hub.publish(Draft::new("/log", data)).await.unwrap().id().to_owned());
    }
    hub.shut_down().await.unwrap();
    drop(hub);

    let hub = start(&path);
    let selectors = || vec![Selector::parse("/log").unwrap()];
    let mut after_a1 = hub
        .subscribe(SubscribeRequest::new(selectors(), Cursor::After(ids[0].clone())))
        .await
        .unwrap();
    let mut earliest =
        hub.subscribe(SubscribeRequest::new(selectors(), Cursor::Earliest)).await.unwrap();
    hub.publish(Draft::new("/log", "a4")).await.unwrap();
    let resumed = first_data(&mut after_a1, 3).await;
    assert_eq!(resumed, ["a2", "a3", "a4"], "resumed after a1: the stored rest, then the new");
    let all = first_data(&mut earliest, 4).await;
    assert_eq!(all, ["a1", "a2", "a3", "a4"], "earliest: everything kept, then the new");
}

/// The data of the next `n` events of a subscription.
async fn first_data(subscription: &mut sluice_hub::Subscription, n: usize) -> Vec<String> {
    let mut decoder = sluice_sse::Decoder::new();
    let mut data = Vec::new();
    // A generous bound, so that a missing event fails the test instead of hanging it.
    let read = async {
        while data.len() < n {
            let frame = subscription.frames.next().await.expect("the subscription ended early");
            decoder.feed(&frame, |e| data.push(e.data)).unwrap();
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), read).await.is_err() {
        panic!("waited 20 s for {n} events; got only {data:?}");
    }
    data
}

/// A listener that holds up the writer on its first call until released.
struct Gate {
    entered: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
    recorder: Recorder,
}

impl CommitListener for Gate {
    fn starts_after(&self, seq: u64) {
        self.recorder.starts_after(seq);
    }

    fn committed(&self, updates: &[Arc<Update>]) {
        if let Some(entered) = self.entered.lock().unwrap().take() {
            entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        self.recorder.committed(updates);
    }

    fn reset(&self, seq: u64) {
        self.recorder.reset(seq);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_share_commits() {
    const PUBLISHERS: usize = 16;
    const EACH: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (entered_tx, entered) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let gate = Arc::new(Gate {
        entered: Mutex::new(Some(entered_tx)),
        release: Mutex::new(release_rx),
        recorder: Recorder::default(),
    });
    let listener = Arc::clone(&gate) as Arc<dyn CommitListener>;
    let store =
        Arc::new(SqliteStore::open(SqliteConfig::new(dir.path().join("g")), listener).unwrap());

    // The first commit holds the writer in the listener...
    let first = store.append(draft("first", "/t", "x"));
    entered.await.unwrap();
    // ...while every publisher queues its first append.
    let queued = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let store = Arc::clone(&store);
            let queued = Arc::clone(&queued);
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..EACH {
                    let append = store.append(draft(&format!("{p}-{n}"), "/t", "x"));
                    queued.fetch_add(1, Ordering::SeqCst);
                    seqs.push(append.await.unwrap().seq());
                }
                seqs
            })
        })
        .collect();
    while queued.load(Ordering::SeqCst) < PUBLISHERS {
        tokio::task::yield_now().await;
    }
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().seq(), 1);
    let mut all = vec![1];
    for publisher in publishers {
        let seqs = publisher.await.unwrap();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=(1 + PUBLISHERS * EACH) as u64).collect::<Vec<_>>());
    assert_eq!(gate.recorder.seqs(), all, "the listener heard every commit once, in order");

    let stats = store.stats();
    assert_eq!(stats.updates, (1 + PUBLISHERS * EACH) as u64);
    // The sixteen queued while the writer was busy went into one transaction; a publisher
    // has at most one append in flight, so no transaction holds more.
    assert_eq!(stats.largest_batch, PUBLISHERS as u64);
    assert!(stats.transactions < stats.updates, "{stats:?}");
}

/// Set in the child process of [`acknowledged_updates_survive_kill_9`]: the store's path.
#[cfg(unix)]
const CHILD_PATH: &str = "SLUICE_TEST_KILL9_PATH";
#[cfg(unix)]
const CHILD_SYNC: &str = "SLUICE_TEST_KILL9_SYNC";

/// Runs this very test binary again as a child that appends from four publishers and prints
/// `ack <id> <seq>` for each acknowledged append; SIGKILLs it after a while, then checks that
/// every acknowledged update is in the reopened store. Repeated for each `synchronous` mode.
#[cfg(unix)]
#[test]
fn acknowledged_updates_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    if let Ok(path) = std::env::var(CHILD_PATH) {
        return append_until_killed(Path::new(&path));
    }
    const KILL_AFTER: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    for sync in ["full", "normal"] {
        let path = dir.path().join(format!("kill9-{sync}.db"));
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "acknowledged_updates_survive_kill_9", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_PATH, &path)
            .env(CHILD_SYNC, sync)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut acknowledged = Vec::new();
        // Lines already in the pipe when the child dies were acknowledged too: read to EOF.
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            let Some(ack) = line.strip_prefix("ack ") else { continue };
            let (id, seq) = ack.split_once(' ').unwrap();
            acknowledged.push((id.to_owned(), seq.parse::<u64>().unwrap()));
            if acknowledged.len() == KILL_AFTER {
                child.kill().unwrap();
            }
        }
        let status = child.wait().unwrap();
        assert!(acknowledged.len() >= KILL_AFTER, "the child stopped early: {status:?}");
        assert_eq!(status.signal(), Some(9), "the child was killed mid-way");

        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store = open(&path);
            for (id, seq) in &acknowledged {
                assert_eq!(store.find(id).await.unwrap(), Some(*seq), "{sync}: {id} was lost");
            }
            let kept = seqs(&store).await;
            assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{sync}: no holes in the order");
            let next = store.append(draft("after-restart", "/k", "x")).await.unwrap();
            assert_eq!(next.seq(), kept.last().unwrap() + 1);
        });
    }
}

#[cfg(unix)]
fn append_until_killed(path: &Path) {
    use std::io::Write;

    let synchronous = match std::env::var(CHILD_SYNC).as_deref() {
        Ok("normal") => Synchronous::Normal,
        _ => Synchronous::Full,
    };
    let config = SqliteConfig { synchronous, ..SqliteConfig::new(path) };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    runtime.block_on(async {
        let store = Arc::new(SqliteStore::open(config, Fanout::new().listener()).unwrap());
        let publishers: Vec<_> = (0..4)
            .map(|p| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    // Bounded, should the parent never kill: it stops far sooner.
                    for n in 0..100_000 {
                        let id = format!("p{p}-{n}");
                        let update = store.append(draft(&id, "/k", "x")).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        if writeln!(out, "ack {id} {}", update.seq())
                            .and_then(|()| out.flush())
                            .is_err()
                        {
                            std::process::exit(1); // the parent is gone
                        }
                    }
                })
            })
            .collect();
        for publisher in publishers {
            publisher.await.unwrap();
        }
    });
}
