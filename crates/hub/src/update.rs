//! Updates: what a publisher sends ([`Draft`]) and what the store keeps ([`Update`]).

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sluice_sse::{EncodeError, Event};

/// An update as a publisher sends it, before the store has given it a place in the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The id; the hub makes one (`urn:uuid:…`) when the publisher gives none.
    pub id: Option<String>,
    /// The topics: the first is canonical, the rest alternates. Never empty.
    pub topics: Vec<String>,
    /// The SSE `data`.
    pub data: String,
    /// The SSE `event` type, if not `message`.
    pub event_type: Option<String>,
    /// The SSE `retry`, in milliseconds.
    pub retry: Option<u64>,
    /// Whether only subscribers authorized for one of its topics may receive it.
    pub private: bool,
}

impl Draft {
    /// A public update of `data` on one topic, with no id yet.
    pub fn new(topic: impl Into<String>, data: impl Into<String>) -> Self {
        Draft {
            id: None,
            topics: vec![topic.into()],
            data: data.into(),
            event_type: None,
            retry: None,
            private: false,
        }
    }

    /// Checks what the wire cannot carry (a line break in the id or type, NUL in the id),
    /// so that a bad update is refused at publication rather than failing every subscriber.
    pub fn validate(&self) -> Result<(), EncodeError> {
        self.event(self.id.as_deref().unwrap_or_default()).map(drop)
    }

    fn event<'a>(&'a self, id: &'a str) -> Result<Event<'a>, EncodeError> {
        let mut event = Event::new(self.data.as_str()).with_id(id)?;
        if let Some(event_type) = &self.event_type {
            event = event.with_event(event_type.as_str())?;
        }
        if let Some(retry) = self.retry {
            event = event.with_retry(retry);
        }
        Ok(event)
    }
}

/// An update the store has committed: a [`Draft`] with its id, its sequence number and its
/// encoded SSE frame, shared (in an `Arc`) by every subscriber it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    seq: u64,
    id: String,
    published_ms: u64,
    draft: Draft,
    frame: Bytes,
}

impl Update {
    /// Builds the committed form of `draft`, encoding its frame once. `draft.id` must be set.
    ///
    /// Fails if the draft holds what the wire cannot carry (see [`Draft::validate`]).
    pub fn new(seq: u64, published_ms: u64, mut draft: Draft) -> Result<Self, EncodeError> {
        let id = draft.id.take().unwrap_or_default();
        let mut frame = BytesMut::new();
        draft.event(&id)?.encode(&mut frame);
        Ok(Update { seq, id, published_ms, draft, frame: frame.freeze() })
    }

    /// The position in the store's total order (the "id order").
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The event id subscribers see and resume from.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the store committed it, in milliseconds since the Unix epoch.
    pub fn published_ms(&self) -> u64 {
        self.published_ms
    }

    /// The topics; the first is canonical.
    pub fn topics(&self) -> &[String] {
        &self.draft.topics
    }

    /// The SSE data.
    pub fn data(&self) -> &str {
        &self.draft.data
    }

    /// The SSE event type, if not `message`.
    pub fn event_type(&self) -> Option<&str> {
        self.draft.event_type.as_deref()
    }

    /// The SSE retry, in milliseconds.
    pub fn retry(&self) -> Option<u64> {
        self.draft.retry
    }

    /// Whether it is private.
    pub fn private(&self) -> bool {
        self.draft.private
    }

    /// The encoded SSE event, ready to be written to any subscriber.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The heap it holds while shared in an `Arc` (as the window of recent updates keeps it):
    /// the `Arc`'s block (its counts and this struct), every string and list it owns, and its
    /// frame's buffer with the header the buffer is shared through once cloned, each rounded
    /// up as the allocator does. The data is there twice, as text and inside the frame.
    pub(crate) fn heap_bytes(&self) -> usize {
        let draft = &self.draft;
        let strings = [&self.id, &draft.data].into_iter().chain(draft.event_type.as_ref());
        let topics = draft.topics.iter().map(|t| allocation(t.capacity())).sum::<usize>()
            + allocation(draft.topics.capacity() * size_of::<String>());
        allocation(2 * size_of::<usize>() + size_of::<Update>())
            + strings.map(|s| allocation(s.capacity())).sum::<usize>()
            + topics
            + allocation(self.frame.len())
            + allocation(3 * size_of::<usize>())
    }
}

/// What an allocation of `bytes` costs: the allocator's header and rounding included (a
/// 64-bit glibc malloc: 8 bytes of header, 16-byte steps, 32 bytes at least).
pub(crate) fn allocation(bytes: usize) -> usize {
    if bytes == 0 { 0 } else { (bytes + 8).next_multiple_of(16).max(32) }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A new hub-made id.
pub(crate) fn new_id() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}
