//! [`MemoryStore`]: a bounded ring of the latest updates, for tests and `--store memory`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::{
    Charge, Charged, CommitListener, KeyRecord, KeyUsage, Ledger, Spend, Store, StoreError,
    StreamRecord,
};
use crate::update::{Draft, Update, now_ms};

/// Keeps the latest `capacity` updates (and stream records) in memory; nothing survives a
/// restart.
pub struct MemoryStore {
    // A std mutex: it is never held across an await, and the listener it calls does not block.
    inner: Mutex<Inner>,
    listener: Arc<dyn CommitListener>,
}

struct Inner {
    /// Contiguous `seq`s, oldest first.
    ring: VecDeque<Arc<Update>>,
    ids: HashMap<String, u64>,
    /// Stream records, and their ids oldest first (at most `capacity` are kept).
    streams: HashMap<String, StreamRecord>,
    stream_order: VecDeque<String>,
    /// The newest stream record of each key, by id: a chat's latest answer is looked up on
    /// every message, so not by scanning every record kept.
    latest: HashMap<String, String>,
    /// API keys, oldest first, and what each key used.
    keys: Vec<KeyRecord>,
    usage: HashMap<String, KeyUsage>,
    next_seq: u64,
    capacity: usize,
    closed: bool,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().unwrap();
        f.debug_struct("MemoryStore")
            .field("kept", &inner.ring.len())
            .field("capacity", &inner.capacity)
            .field("next_seq", &inner.next_seq)
            .finish()
    }
}

impl MemoryStore {
    /// A store keeping at most `capacity` updates (at least one).
    pub fn new(capacity: usize, listener: Arc<dyn CommitListener>) -> Self {
        listener.starts_after(0);
        MemoryStore {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                ids: HashMap::new(),
                streams: HashMap::new(),
                stream_order: VecDeque::new(),
                latest: HashMap::new(),
                keys: Vec::new(),
                usage: HashMap::new(),
                next_seq: 1,
                capacity: capacity.max(1),
                closed: false,
            }),
            listener,
        }
    }

    fn append_now(&self, draft: Draft) -> Result<Arc<Update>, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.closed {
            return Err(StoreError::Closed);
        }
        let id = draft.id.clone().unwrap_or_default();
        if inner.ids.contains_key(&id) {
            return Err(StoreError::Conflict(id));
        }
        let update = Arc::new(Update::new(inner.next_seq, now_ms(), draft)?);
        inner.next_seq += 1;
        inner.ids.insert(id, update.seq());
        inner.ring.push_back(Arc::clone(&update));
        if inner.ring.len() > inner.capacity
            && let Some(evicted) = inner.ring.pop_front()
        {
            inner.ids.remove(evicted.id());
        }
        // Told under the lock, so listeners hear of commits in seq order.
        self.listener.committed(std::slice::from_ref(&update));
        Ok(update)
    }
}

impl Store for MemoryStore {
    fn append(&self, draft: Draft) -> BoxFuture<'_, Result<Arc<Update>, StoreError>> {
        ready(self.append_now(draft)).boxed()
    }

    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<Arc<Update>>, StoreError>> {
        let inner = self.inner.lock().unwrap();
        let start = inner.ring.partition_point(|u| u.seq() <= after);
        let page = inner.ring.range(start..).take(limit).cloned().collect();
        ready(Ok(page)).boxed()
    }

    fn find(&self, id: &str) -> BoxFuture<'_, Result<Option<u64>, StoreError>> {
        ready(Ok(self.inner.lock().unwrap().ids.get(id).copied())).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.lock().unwrap().closed = true;
        ready(Ok(())).boxed()
    }

    fn put_stream(&self, record: StreamRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.inner.lock().unwrap();
        let result = if inner.closed {
            Err(StoreError::Closed)
        } else if inner.streams.contains_key(&record.id) {
            Err(StoreError::Conflict(record.id))
        } else {
            inner.stream_order.push_back(record.id.clone());
            if let Some(key) = &record.key {
                inner.latest.insert(key.clone(), record.id.clone());
            }
            inner.streams.insert(record.id.clone(), record);
            if inner.stream_order.len() > inner.capacity
                && let Some(oldest) = inner.stream_order.pop_front()
                && let Some(StreamRecord { key: Some(key), id, .. }) = inner.streams.remove(&oldest)
                && inner.latest.get(&key) == Some(&id)
            {
                // The oldest record is its key's newest: none of that key is left.
                inner.latest.remove(&key);
            }
            Ok(())
        };
        ready(result).boxed()
    }

    fn stream(&self, id: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        ready(Ok(self.inner.lock().unwrap().streams.get(id).cloned())).boxed()
    }

    fn latest_stream(&self, key: &str) -> BoxFuture<'_, Result<Option<StreamRecord>, StoreError>> {
        let inner = self.inner.lock().unwrap();
        let found = inner.latest.get(key).and_then(|id| inner.streams.get(id)).cloned();
        ready(Ok(found)).boxed()
    }

    fn ledger(&self) -> &dyn Ledger {
        self
    }
}

impl Ledger for MemoryStore {
    fn put_key(&self, key: KeyRecord) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut inner = self.inner.lock().unwrap();
        let taken = inner
            .keys
            .iter()
            .any(|k| k.id == key.id || (k.name == key.name && k.revoked_ms.is_none()));
        let result = if taken {
            Err(StoreError::Conflict(key.name))
        } else {
            inner.keys.push(key);
            Ok(())
        };
        ready(result).boxed()
    }

    fn keys(&self) -> BoxFuture<'_, Result<Vec<KeyRecord>, StoreError>> {
        ready(Ok(self.inner.lock().unwrap().keys.clone())).boxed()
    }

    fn revoke_key<'a>(
        &'a self,
        id: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut inner = self.inner.lock().unwrap();
        let live = inner.keys.iter_mut().find(|k| k.id == id && k.revoked_ms.is_none());
        let revoked = live.map(|key| key.revoked_ms = Some(now_ms)).is_some();
        ready(Ok(revoked)).boxed()
    }

    fn charge<'a>(&'a self, charge: &'a Charge) -> BoxFuture<'a, Result<Charged, StoreError>> {
        let mut inner = self.inner.lock().unwrap();
        let revoked = charge.revocable
            && inner.keys.iter().any(|k| k.id == charge.key && k.revoked_ms.is_some());
        let charged = if revoked {
            Charged::Revoked
        } else {
            inner.usage.entry(charge.key.clone()).or_default().charge(charge)
        };
        ready(Ok(charged)).boxed()
    }

    fn spend<'a>(&'a self, spend: &'a Spend) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.lock().unwrap().usage.entry(spend.key.clone()).or_default().spend(spend);
        ready(Ok(())).boxed()
    }

    fn usage(&self) -> BoxFuture<'_, Result<Vec<(String, KeyUsage)>, StoreError>> {
        let inner = self.inner.lock().unwrap();
        let usage = inner.usage.iter().map(|(id, usage)| (id.clone(), usage.clone())).collect();
        ready(Ok(usage)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fanout;

    #[tokio::test]
    async fn a_keys_latest_record_goes_with_the_last_record_of_that_key() {
        let store = MemoryStore::new(2, Fanout::new().listener());
        let record = |id: &str, key: &str| StreamRecord {
            id: id.to_owned(),
            token_hash: [0; 32],
            kind: "test".to_owned(),
            created_ms: 1,
            key: Some(key.to_owned()),
        };
        let latest = async |key| store.latest_stream(key).await.unwrap().map(|r| r.id);
        store.put_stream(record("s1", "chat-a")).await.unwrap();
        store.put_stream(record("s2", "chat-a")).await.unwrap();
        store.put_stream(record("s3", "chat-b")).await.unwrap();
        assert_eq!(latest("chat-a").await.as_deref(), Some("s2"), "s1 went; s2 is kept");
        store.put_stream(record("s4", "chat-b")).await.unwrap();
        assert_eq!(latest("chat-a").await, None, "no record of chat-a is kept");
        assert_eq!(latest("chat-b").await.as_deref(), Some("s4"));
    }
}
