//! [`MemoryLog`]: streams in a map, for tests and `--store memory`.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, ready};

use super::{Log, LogError, Stored};
use crate::meta::Meta;

/// Streams kept in memory; nothing survives a restart.
#[derive(Debug, Default)]
pub struct MemoryLog {
    // A std mutex: never held across an await.
    streams: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    stored: Stored,
    records: Vec<Bytes>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Log for MemoryLog {
    fn load<'a>(&'a self, path: &'a str) -> BoxFuture<'a, Result<Option<Stored>, LogError>> {
        let streams = self.streams.lock().unwrap();
        ready(Ok(streams.get(path).map(|entry| entry.stored.clone()))).boxed()
    }

    fn insert<'a>(
        &'a self,
        path: &'a str,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>> {
        let mut streams = self.streams.lock().unwrap();
        if streams.contains_key(path) {
            return ready(Ok(false)).boxed();
        }
        let stored = Stored { version: 1, meta: meta.clone(), accessed_ms: now_ms };
        streams.insert(path.to_owned(), Entry { stored, records: records.to_vec() });
        ready(Ok(true)).boxed()
    }

    fn update<'a>(
        &'a self,
        path: &'a str,
        version: u64,
        meta: &'a Meta,
        records: &'a [Bytes],
        now_ms: u64,
    ) -> BoxFuture<'a, Result<bool, LogError>> {
        let mut streams = self.streams.lock().unwrap();
        let Some(entry) = streams.get_mut(path).filter(|e| e.stored.version == version) else {
            return ready(Ok(false)).boxed();
        };
        let accessed_ms = entry.stored.accessed_ms.max(now_ms);
        entry.stored = Stored { version: version + 1, meta: meta.clone(), accessed_ms };
        entry.records.extend_from_slice(records);
        ready(Ok(true)).boxed()
    }

    fn records<'a>(
        &'a self,
        path: &'a str,
        after: u64,
        max_bytes: usize,
    ) -> BoxFuture<'a, Result<Vec<Bytes>, LogError>> {
        let streams = self.streams.lock().unwrap();
        let records = streams.get(path).map_or(&[][..], |e| &e.records[..]);
        let from = usize::try_from(after).unwrap_or(usize::MAX).min(records.len());
        let fitting = super::take_fitting(records[from..].iter().cloned().map(Ok), max_bytes);
        ready(fitting).boxed()
    }

    fn remove<'a>(&'a self, path: &'a str, version: u64) -> BoxFuture<'a, Result<bool, LogError>> {
        let mut streams = self.streams.lock().unwrap();
        let matches = streams.get(path).is_some_and(|e| e.stored.version == version);
        if matches {
            streams.remove(path);
        }
        ready(Ok(matches)).boxed()
    }

    fn touch<'a>(&'a self, path: &'a str, now_ms: u64) -> BoxFuture<'a, Result<(), LogError>> {
        if let Some(entry) = self.streams.lock().unwrap().get_mut(path) {
            entry.stored.accessed_ms = entry.stored.accessed_ms.max(now_ms);
        }
        ready(Ok(())).boxed()
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        crate::testing::log_conforms(&super::MemoryLog::new()).await;
    }
}
