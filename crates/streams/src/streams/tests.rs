use std::time::Duration;

use super::*;
use crate::log::{Log, LogError, MemoryLog, Stored};

fn streams() -> Arc<Streams> {
    Streams::new(Arc::new(MemoryLog::new()), Limits::default())
}

fn create(content_type: &str, body: &str) -> Create {
    Create {
        content_type: Some(content_type.to_owned()),
        expiry: Expiry::Never,
        closed: false,
        body: Bytes::copy_from_slice(body.as_bytes()),
        fork: None,
    }
}

fn append(body: &str) -> Append {
    Append {
        content_type: Some("text/plain".to_owned()),
        body: Bytes::copy_from_slice(body.as_bytes()),
        close: false,
        writer_seq: None,
        producer: None,
    }
}

fn stamped(body: &str, epoch: u64, seq: u64) -> Append {
    Append { producer: Some(Producer { id: "p".to_owned(), epoch, seq }), ..append(body) }
}

async fn text(streams: &Streams, path: &str) -> String {
    let chunk = streams.read(path, ReadFrom::Start).await.unwrap();
    String::from_utf8(chunk.body().to_vec()).unwrap()
}

#[tokio::test]
async fn creation_is_idempotent_for_the_same_settings_only() {
    let s = streams();
    assert!(matches!(s.create("a", create("text/plain", "x")).await, Ok(Created::New(_))));
    let again = s.create("a", create("TEXT/plain; charset=utf-8", "")).await.unwrap();
    assert!(matches!(again, Created::Existing(head) if head.tail.records == 1));
    assert!(matches!(s.create("a", create("application/json", "")).await, Err(Error::Conflict(_))));
    let closed = Create { closed: true, ..create("text/plain", "") };
    assert!(matches!(s.create("a", closed).await, Err(Error::Conflict(_))));
}

#[tokio::test]
async fn an_idempotent_producer_is_deduplicated_fenced_and_kept_in_order() {
    let s = streams();
    s.create("p", create("text/plain", "")).await.unwrap();
    assert!(!s.append("p", stamped("a", 0, 0)).await.unwrap().duplicate);
    assert!(!s.append("p", stamped("b", 0, 1)).await.unwrap().duplicate);
    // A retry is a success that writes nothing.
    let retry = s.append("p", stamped("b", 0, 1)).await.unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.producer, Some(ProducerState { epoch: 0, seq: 1 }));
    // A gap is refused with what was expected.
    assert!(matches!(
        s.append("p", stamped("d", 0, 3)).await,
        Err(Error::SequenceGap { expected: 2, received: 3 })
    ));
    // A new epoch starts at 0 and fences the old one.
    assert!(matches!(s.append("p", stamped("x", 1, 5)).await, Err(Error::BadRequest(_))));
    s.append("p", stamped("c", 1, 0)).await.unwrap();
    assert!(matches!(
        s.append("p", stamped("zombie", 0, 2)).await,
        Err(Error::StaleEpoch { sent: 0, current: 1 })
    ));
    assert_eq!(text(&s, "p").await, "abc");
}

#[tokio::test]
async fn a_closed_stream_takes_nothing_more_but_a_retry_of_its_close() {
    let s = streams();
    s.create("c", create("text/plain", "a")).await.unwrap();
    let closing = Append { close: true, ..stamped("b", 0, 0) };
    assert!(s.append("c", closing.clone()).await.unwrap().head.closed);
    assert!(s.append("c", closing).await.unwrap().duplicate, "the closer's retry");
    let close_again = Append { close: true, ..append("") };
    assert!(s.append("c", close_again).await.unwrap().duplicate);
    assert!(matches!(
        s.append("c", append("late")).await,
        Err(Error::Closed { tail }) if tail.records == 2
    ));
    let chunk = s.read("c", ReadFrom::Start).await.unwrap();
    assert!(chunk.at_end());
}

#[tokio::test]
async fn writer_seq_must_rise_and_content_types_must_match() {
    let s = streams();
    s.create("w", create("text/plain", "")).await.unwrap();
    s.append("w", Append { writer_seq: Some("b".into()), ..append("1") }).await.unwrap();
    let regress = Append { writer_seq: Some("a".into()), ..append("2") };
    assert!(matches!(s.append("w", regress).await, Err(Error::Conflict(_))));
    let json = Append { content_type: Some("application/json".into()), ..append("{}") };
    assert!(matches!(s.append("w", json).await, Err(Error::Conflict(_))));
    assert!(matches!(s.append("w", append("")).await, Err(Error::BadRequest(_))));
}

#[tokio::test]
async fn json_streams_frame_messages_and_forks_inherit_them() {
    let s = streams();
    s.create("j", create("application/json", r#"[{"a":1},{"b":2}]"#)).await.unwrap();
    let more = Append { content_type: Some("application/json".into()), ..append("[3,4]") };
    s.append("j", more).await.unwrap();
    assert_eq!(text(&s, "j").await, r#"[{"a":1},{"b":2},3,4]"#);
    // A fork at the first append's end plus one message of the second.
    let at = Offset { records: 2, bytes: 14 };
    let fork =
        ForkFrom { source: "j".into(), offset: Some(at.to_string()), sub_offset: Some("1".into()) };
    let request = Create { content_type: None, fork: Some(fork), ..create("", "") };
    let Created::New(head) = s.create("f", request).await.unwrap() else { panic!("made") };
    assert_eq!(head.content_type, "application/json");
    assert_eq!(text(&s, "f").await, r#"[{"a":1},{"b":2},3]"#);
}

#[tokio::test]
async fn a_byte_fork_can_end_inside_an_append() {
    let s = streams();
    s.create("b", create("application/octet-stream", "hello")).await.unwrap();
    let fork = ForkFrom {
        source: "b".into(),
        offset: Some(Offset::START.to_string()),
        sub_offset: Some("3".into()),
    };
    let request = Create { fork: Some(fork.clone()), ..create("application/octet-stream", "") };
    s.create("f", request).await.unwrap();
    assert_eq!(text(&s, "f").await, "hel");
    let past = ForkFrom { sub_offset: Some("6".into()), ..fork };
    let request = Create { fork: Some(past), ..create("application/octet-stream", "") };
    assert!(matches!(s.create("g", request).await, Err(Error::BadRequest(_))));
}

#[tokio::test]
async fn a_deleted_source_lives_on_hidden_until_its_last_fork_goes() {
    let s = streams();
    s.create("src", create("text/plain", "data")).await.unwrap();
    for name in ["f1", "f2"] {
        let fork = ForkFrom { source: "src".into(), ..ForkFrom::default() };
        s.create(name, Create { fork: Some(fork), ..create("text/plain", "") }).await.unwrap();
    }
    s.delete("src").await.unwrap();
    assert!(matches!(s.head("src").await, Err(Error::Gone)));
    assert!(matches!(s.create("src", create("text/plain", "")).await, Err(Error::Conflict(_))));
    s.delete("f1").await.unwrap();
    assert!(matches!(s.head("src").await, Err(Error::Gone)), "f2 still reads from it");
    assert_eq!(text(&s, "f2").await, "data");
    s.delete("f2").await.unwrap();
    assert!(matches!(s.head("src").await, Err(Error::NotFound)), "gone with its last fork");
}

#[tokio::test]
async fn an_expired_stream_is_not_found() {
    let s = streams();
    let at = Expiry::At { text: "2000-01-01T00:00:00Z".into(), ms: 946_684_800_000 };
    s.create("old", Create { expiry: at, ..create("text/plain", "") }).await.unwrap();
    assert!(matches!(s.head("old").await, Err(Error::NotFound)));
    // Its path is free again.
    assert!(matches!(s.create("old", create("text/plain", "")).await, Ok(Created::New(_))));
}

#[tokio::test]
async fn a_live_read_wakes_on_an_append_and_times_out_empty() {
    let s = streams();
    s.create("l", create("text/plain", "a")).await.unwrap();
    let waiting = {
        let s = Arc::clone(&s);
        tokio::spawn(async move { s.read_live("l", ReadFrom::Now, Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    s.append("l", append("b")).await.unwrap();
    let chunk = waiting.await.unwrap().unwrap();
    assert_eq!(chunk.body(), Bytes::from_static(b"b"));
    assert!(chunk.up_to_date());

    let idle = s.read_live("l", ReadFrom::At(chunk.next), Duration::from_millis(20)).await.unwrap();
    assert!(idle.records.is_empty());
    assert_eq!(idle.next, chunk.next);
}

#[tokio::test]
async fn shutting_down_ends_live_reads_at_once() {
    let s = streams();
    s.create("l", create("text/plain", "")).await.unwrap();
    let waiting = {
        let s = Arc::clone(&s);
        tokio::spawn(
            async move { s.read_live("l", ReadFrom::Now, Duration::from_secs(3600)).await },
        )
    };
    tokio::task::yield_now().await;
    s.shut_down();
    assert!(waiting.await.unwrap().unwrap().records.is_empty());
}

#[tokio::test]
async fn reads_past_the_tail_are_refused_and_big_streams_come_in_chunks() {
    let s =
        Streams::new(Arc::new(MemoryLog::new()), Limits { max_read_bytes: 4, ..Limits::default() });
    s.create("r", create("text/plain", "abc")).await.unwrap();
    s.append("r", append("def")).await.unwrap();
    let first = s.read("r", ReadFrom::Start).await.unwrap();
    assert_eq!((first.body(), first.up_to_date()), (Bytes::from_static(b"abc"), false));
    let second = s.read("r", ReadFrom::At(first.next)).await.unwrap();
    assert_eq!((second.body(), second.up_to_date()), (Bytes::from_static(b"def"), true));
    let beyond = Offset { records: 9, bytes: 99 };
    assert!(matches!(s.read("r", ReadFrom::At(beyond)).await, Err(Error::BadRequest(_))));
}

/// A memory log that counts its reads.
#[derive(Debug, Default)]
struct CountingLog {
    inner: MemoryLog,
    reads: std::sync::atomic::AtomicUsize,
}

impl Log for CountingLog {
    fn load<'a>(
        &'a self,
        path: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<Option<Stored>, LogError>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(path)
    }
    fn insert<'a>(
        &'a self,
        path: &'a str,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, LogError>> {
        self.inner.insert(path, meta, records, now_ms)
    }
    fn update<'a>(
        &'a self,
        path: &'a str,
        version: u64,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, LogError>> {
        self.inner.update(path, version, meta, records, now_ms)
    }
    fn records<'a>(
        &'a self,
        path: &'a str,
        after: u64,
        max_bytes: usize,
    ) -> futures_util::future::BoxFuture<'a, Result<Vec<Bytes>, LogError>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.inner.records(path, after, max_bytes)
    }
    fn remove<'a>(
        &'a self,
        path: &'a str,
        version: u64,
    ) -> futures_util::future::BoxFuture<'a, Result<bool, LogError>> {
        self.inner.remove(path, version)
    }
    fn touch<'a>(
        &'a self,
        path: &'a str,
        now_ms: u64,
    ) -> futures_util::future::BoxFuture<'a, Result<(), LogError>> {
        self.inner.touch(path, now_ms)
    }
}

#[tokio::test]
async fn live_readers_share_one_read_of_each_change() {
    const READERS: usize = 200;
    const APPENDS: usize = 10;
    let log = Arc::new(CountingLog::default());
    let s = Streams::new(Arc::clone(&log) as Arc<dyn Log>, Limits::default());
    s.create("t", create("text/plain", "")).await.unwrap();
    // Each reader follows the stream as an SSE reader does: a live read, then the next from
    // where it ended, until it has every append.
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                let (mut from, mut text) = (ReadFrom::Now, String::new());
                while text.len() < APPENDS {
                    let chunk = s.read_live("t", from, Duration::from_secs(30)).await.unwrap();
                    text.push_str(std::str::from_utf8(&chunk.body()).unwrap());
                    from = ReadFrom::At(chunk.next);
                }
                text
            })
        })
        .collect();
    // Every reader has made its first read (the creation made one too), so every one is
    // waiting, or will find what was appended since, before the appends start.
    while log.reads.load(Ordering::SeqCst) < READERS + 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let before = log.reads.load(Ordering::SeqCst);
    for i in 0..APPENDS {
        s.append("t", append(&i.to_string())).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for reader in readers {
        assert_eq!(reader.await.unwrap(), "0123456789");
    }
    let reads = log.reads.load(Ordering::SeqCst) - before;
    // Each append's own load, and one refresh (a load and a read) per change: not one per
    // reader per change (which would be 4,000).
    assert!(reads <= APPENDS * 4, "{reads} log reads for {APPENDS} appends to {READERS} readers");
}
