//! What every [`Log`] must do, as one test each implementation runs (behind the `testing`
//! feature, so that a backend tested outside this crate, against a real server, runs it too).

use bytes::Bytes;

use crate::log::{Log, Stored};
use crate::meta::{Expiry, Meta};
use crate::offset::Offset;

/// A stream's meta with its tail at `tail` (the rest arbitrary), for testing a log.
pub fn meta(tail: Offset) -> Meta {
    Meta {
        id: 7,
        content_type: "text/plain".to_owned(),
        expiry: Expiry::Ttl(60),
        tail,
        closed: None,
        producers: Default::default(),
        writer_seq: None,
        forked_from: None,
        forks: 0,
        deleted: false,
        created_ms: 1,
    }
}

/// Runs the log conformance checks on an empty `log`; panics on the first failure.
pub async fn log_conforms(log: &dyn Log) {
    let path = "a/b c/ünïcode";
    assert_eq!(log.load(path).await.unwrap(), None);
    assert_eq!(log.records(path, 0, 1 << 20).await.unwrap(), Vec::<Bytes>::new());

    // Insert once; a second insert at the same path changes nothing.
    let first = [Bytes::from_static(b"one"), Bytes::from_static(b"\x00\xfftwo")];
    let m1 = meta(Offset { records: 2, bytes: 8 });
    assert!(log.insert(path, &m1, &first, 100).await.unwrap());
    assert!(!log.insert(path, &meta(Offset::START), &[], 200).await.unwrap());
    let loaded = log.load(path).await.unwrap().unwrap();
    assert_eq!(loaded.meta, m1);
    assert_eq!(loaded.accessed_ms, 100);
    assert_eq!(log.records(path, 0, 1 << 20).await.unwrap(), first.to_vec());

    // Updates go through at the current version only, and number records on.
    let m2 = Meta { writer_seq: Some("s".to_owned()), ..meta(Offset { records: 3, bytes: 13 }) };
    let third = [Bytes::from_static(b"three")];
    assert!(!log.update(path, loaded.version + 1, &m2, &third, 300).await.unwrap());
    assert!(log.update(path, loaded.version, &m2, &third, 300).await.unwrap());
    assert!(!log.update(path, loaded.version, &m2, &third, 300).await.unwrap());
    let Stored { version, meta: m, accessed_ms } = log.load(path).await.unwrap().unwrap();
    assert!(version > loaded.version);
    assert_eq!((m, accessed_ms), (m2.clone(), 300));
    assert_eq!(log.records(path, 2, 1 << 20).await.unwrap(), third.to_vec());
    assert_eq!(log.records(path, 1, 1 << 20).await.unwrap()[0], first[1]);
    assert!(log.records(path, 3, 1 << 20).await.unwrap().is_empty());
    assert!(log.records(path, 99, 1 << 20).await.unwrap().is_empty());
    // A byte bound takes what fits, and always one record.
    assert_eq!(log.records(path, 0, 1).await.unwrap(), vec![first[0].clone()]);
    assert_eq!(log.records(path, 0, 9).await.unwrap(), first.to_vec());

    // A meta-only update (a close, a producer's state) appends nothing.
    assert!(log.update(path, version, &m2, &[], 400).await.unwrap());
    assert_eq!(log.records(path, 0, 1 << 20).await.unwrap().len(), 3);

    log.touch(path, 500).await.unwrap();
    let now = log.load(path).await.unwrap().unwrap();
    assert_eq!(now.accessed_ms, 500);
    assert_eq!(now.version, version + 1, "a touch is not a write");

    // Removal is versioned too, and takes the records with it.
    assert!(!log.remove(path, now.version + 5).await.unwrap());
    assert!(log.remove(path, now.version).await.unwrap());
    assert_eq!(log.load(path).await.unwrap(), None);
    assert!(log.records(path, 0, 1 << 20).await.unwrap().is_empty());
    // The path can hold a new stream afterwards, starting from its first record.
    assert!(log.insert(path, &meta(Offset::START), &[], 600).await.unwrap());
    assert!(log.records(path, 0, 1 << 20).await.unwrap().is_empty());
    // Another path is another stream.
    assert_eq!(log.load("a/b").await.unwrap(), None);
}
