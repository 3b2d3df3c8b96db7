//! The Redis log against a real `redis-server`: the conformance check every log runs, then
//! what only a shared log does (two nodes on one Redis, Redis going away and back).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use sluice_hub::testing::RedisServer;
use sluice_streams::testing::{log_conforms, meta};
use sluice_streams::{Change, Log, LogError, MemoryLog, Offset, RedisLog};

const PATH: &str = "rooms/a:b/ünïcode";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_log_conforms() {
    let redis = RedisServer::start();
    log_conforms(&RedisLog::open(&redis.url(), "sluice").await.unwrap()).await;
    // Another prefix is another deployment: it sees none of the first one's streams.
    let other = RedisLog::open(&redis.url(), "other").await.unwrap();
    assert_eq!(other.load("a/b c/ünïcode").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_take_what_fits_from_a_long_stream_as_memory_does() {
    let redis = RedisServer::start();
    let (log, memory) = (RedisLog::open(&redis.url(), "sluice").await.unwrap(), MemoryLog::new());
    // 2000 records of 0 to 299 bytes, in an order that mixes short and long ones.
    let records: Vec<Bytes> =
        (0..2000_usize).map(|n| Bytes::from(vec![b'r'; n * 7919 % 300])).collect();
    let tail = records.iter().fold(Offset::START, |at, r| at.after(r.len()));
    for each in [&log as &dyn Log, &memory] {
        assert!(each.insert(PATH, &meta(tail), &records, 1).await.unwrap());
    }
    for after in [0, 1, 999, 1998, 1999, 2000, 5000] {
        for max_bytes in [0, 1, 299, 300, 4096, 100_000, 1 << 20, usize::MAX] {
            let read = log.records(PATH, after, max_bytes).await.unwrap();
            assert_eq!(read, memory.records(PATH, after, max_bytes).await.unwrap());
        }
    }
}

/// Appends a record to the stream at its current version, until `changes` tells of it: a
/// subscription is made when first polled, so the first writes may come before it.
async fn append_until_heard(writer: &RedisLog, changes: &mut BoxStream<'static, Change>) {
    for _ in 0..100 {
        let stored = writer.load(PATH).await.unwrap().expect("the stream exists");
        let tail = stored.meta.tail.after(1);
        let next = sluice_streams::Meta { tail, ..stored.meta };
        let record = [Bytes::from_static(b"x")];
        assert!(writer.update(PATH, stored.version, &next, &record, 1).await.unwrap());
        match tokio::time::timeout(Duration::from_millis(100), changes.next()).await {
            Ok(Some(Change::Stream(path))) if path == PATH => return,
            // Told to look again after subscribing again: what is written next is heard.
            Ok(Some(Change::Any)) => {}
            Ok(heard) => panic!("heard {heard:?}"),
            Err(_) => {}
        }
    }
    panic!("the other node never heard of the writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_see_each_other_s_writes_and_race_at_one_version() {
    let redis = RedisServer::start();
    let a = RedisLog::open(&redis.url(), "sluice").await.unwrap();
    let b = RedisLog::open(&redis.url(), "sluice").await.unwrap();
    let (mut heard_by_a, mut heard_by_b) = (a.changes().unwrap(), b.changes().unwrap());

    assert!(a.insert(PATH, &meta(Offset::START), &[], 1).await.unwrap());
    append_until_heard(&a, &mut heard_by_b).await;
    append_until_heard(&b, &mut heard_by_a).await;
    assert_eq!(a.load(PATH).await.unwrap(), b.load(PATH).await.unwrap(), "one stream");
    let on_a = a.records(PATH, 0, 1 << 20).await.unwrap();
    assert!(on_a.len() >= 2);
    assert_eq!(on_a, b.records(PATH, 0, 1 << 20).await.unwrap());

    // Both subscribed now: a node hears the other's writes, in order, and not its own.
    assert!(a.insert("own", &meta(Offset::START), &[], 1).await.unwrap());
    assert!(b.insert("theirs", &meta(Offset::START), &[], 1).await.unwrap());
    let next = tokio::time::timeout(Duration::from_secs(5), heard_by_a.next()).await.unwrap();
    assert_eq!(next, Some(Change::Stream("theirs".to_owned())));

    // Two writers at one version: exactly one wins, and only its record is there.
    let stored = a.load(PATH).await.unwrap().unwrap();
    let tail = stored.meta.tail.after(5);
    let m = |seq: &str| sluice_streams::Meta { writer_seq: Some(seq.to_owned()), ..meta(tail) };
    let (from_a, from_b) = ([Bytes::from_static(b"aaaaa")], [Bytes::from_static(b"bbbbb")]);
    let (ma, mb) = (m("a"), m("b"));
    let (won_a, won_b) = tokio::join!(
        a.update(PATH, stored.version, &ma, &from_a, 2),
        b.update(PATH, stored.version, &mb, &from_b, 2),
    );
    let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
    assert!(won_a ^ won_b, "exactly one wins: a {won_a}, b {won_b}");
    let (winner, record) = if won_a { (ma, &from_a) } else { (mb, &from_b) };
    let now = b.load(PATH).await.unwrap().unwrap();
    assert_eq!((now.version, now.meta), (stored.version + 1, winner));
    let after = stored.meta.tail.records;
    assert_eq!(a.records(PATH, after, 1 << 20).await.unwrap(), record.to_vec());

    // A node's changes end with its log.
    drop(a);
    let ended = tokio::time::timeout(Duration::from_secs(5), heard_by_a.next()).await;
    assert_eq!(ended.unwrap(), None);
}

/// How long `operation` took, and its error (it must fail).
async fn fails<T: std::fmt::Debug>(
    operation: impl Future<Output = Result<T, LogError>>,
) -> (Duration, LogError) {
    let started = Instant::now();
    let error = operation.await.expect_err("Redis is down");
    (started.elapsed(), error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_redis_fails_fast_and_is_used_again_once_back() {
    let mut redis = RedisServer::start();
    let log = RedisLog::open(&redis.url(), "sluice").await.unwrap();
    let other = RedisLog::open(&redis.url(), "sluice").await.unwrap();
    let mut heard = other.changes().unwrap();
    assert!(log.insert(PATH, &meta(Offset::START), &[], 1).await.unwrap());
    append_until_heard(&log, &mut heard).await;
    let stored = log.load(PATH).await.unwrap().unwrap();

    redis.kill();
    let m = meta(Offset::START);
    for (took, error) in [
        fails(log.load(PATH)).await,
        fails(log.insert("new", &m, &[], 1)).await,
        fails(log.update(PATH, stored.version, &stored.meta, &[], 1)).await,
        fails(log.records(PATH, 0, 1 << 20)).await,
        fails(log.touch(PATH, 1)).await,
        fails(log.remove(PATH, stored.version)).await,
    ] {
        assert!(matches!(error, LogError::Backend(_)), "{error:?}");
        assert!(took < Duration::from_secs(3), "failed after {took:?}");
    }

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reloaded = loop {
        match log.load(PATH).await {
            Ok(reloaded) => break reloaded,
            Err(error) if Instant::now() < deadline => {
                assert!(matches!(error, LogError::Backend(_)), "{error:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("Redis is back but the log still fails: {error}"),
        }
    };
    assert_eq!(reloaded, Some(stored), "appendfsync always kept the stream");
    // The other node subscribed again and says so (what was written meanwhile is lost
    // news); then it hears writes made after the restart.
    let look_again = tokio::time::timeout(Duration::from_secs(10), heard.next()).await;
    assert_eq!(look_again.unwrap(), Some(Change::Any));
    append_until_heard(&log, &mut heard).await;
}
