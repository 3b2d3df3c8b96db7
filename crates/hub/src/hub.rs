//! [`Hub`]: publish updates, subscribe to topics, resume from history with no gap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use tokio::sync::mpsc;

use crate::registry::{Cutoff, Filter, Registry, Subscriber};
use crate::selector::Selector;
use crate::store::{CommitListener, Store, StoreError};
use crate::update::{Draft, Update, new_id};

/// The event type sent first when a subscriber's `Last-Event-ID` is not in the history (too
/// old, or never existed): what follows is everything kept, not a seamless continuation.
pub const RESET_EVENT_TYPE: &str = "sluice-reset";

/// Settings of a [`Hub`].
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Updates a subscriber may have queued before it is cut off as too slow.
    pub queue_capacity: usize,
    /// Updates read from the store per page while replaying history.
    pub replay_page: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { queue_capacity: 1024, replay_page: 512 }
    }
}

/// Why a publication was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The update names no topic.
    #[error("an update needs at least one topic")]
    NoTopic,
    /// A publisher-chosen id must not start with `#` (reserved by the protocol).
    #[error("an update id must not start with '#'")]
    ReservedId,
    /// The store refused or failed (conflicting id, invalid field, backend down).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Only what is published from now on.
    Live,
    /// Everything the store keeps, then live (`Last-Event-ID: earliest`).
    Earliest,
    /// Everything after the update with this id, then live.
    After(String),
}

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    /// Topic selectors; an update matching any of them is sent.
    pub selectors: Vec<Selector>,
    /// Selectors of the topics whose private updates may be sent (from the JWT).
    pub allowed_private: Vec<Selector>,
    /// Where to start.
    pub cursor: Cursor,
    /// End the subscription right after delivering an update of this event type (a
    /// stream's last event, such as an answer's `end`).
    pub until_event_type: Option<String>,
}

impl SubscribeRequest {
    /// A request for `selectors` from `cursor`, with no private access and no end.
    pub fn new(selectors: Vec<Selector>, cursor: Cursor) -> Self {
        SubscribeRequest { selectors, allowed_private: Vec::new(), cursor, until_event_type: None }
    }
}

/// One thing a subscription delivers.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The cursor was unknown: what follows is everything kept, not a continuation.
    Reset,
    /// An update, from history or live.
    Update(Arc<Update>),
    /// The subscriber read too slowly and is cut off (it can resume from its last id).
    TooSlow,
}

impl Delivery {
    /// The SSE frame for it: the update's event, a [`RESET_EVENT_TYPE`] event, or a comment.
    pub fn frame(&self) -> Bytes {
        match self {
            Delivery::Reset => reset_frame(),
            Delivery::Update(update) => update.frame().clone(),
            Delivery::TooSlow => slow_frame(),
        }
    }
}

/// A live subscription: SSE frames to write to the client, starting with the replay.
pub struct Subscription {
    /// For the `Last-Event-ID` response header when a cursor was given: the id of the update
    /// before the first one sent, or `earliest`.
    pub resumed_after: Option<String>,
    /// Whether the cursor was unknown, so a [`RESET_EVENT_TYPE`] event comes first.
    pub reset: bool,
    /// The frames: replay, then live; ends when the subscriber is cut off or the hub stops.
    pub frames: BoxStream<'static, Bytes>,
}

/// A live subscription as [`Delivery`] values, for callers that transform updates.
pub struct Deliveries {
    /// See [`Subscription::resumed_after`].
    pub resumed_after: Option<String>,
    /// The deliveries: replay, then live.
    pub stream: BoxStream<'static, Delivery>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries")
            .field("resumed_after", &self.resumed_after)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("resumed_after", &self.resumed_after)
            .field("reset", &self.reset)
            .finish_non_exhaustive()
    }
}

/// The hub: a store for history and order, a registry for live fan-out.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    config: HubConfig,
    next_key: AtomicU64,
}

/// The fan-out side of a hub, made first because a store needs it as its [`CommitListener`].
#[derive(Debug, Clone, Default)]
pub struct Fanout(Arc<Registry>);

impl Fanout {
    /// A fan-out with no subscribers yet.
    pub fn new() -> Self {
        Fanout::default()
    }

    /// This fan-out as the listener to give the store.
    pub fn listener(&self) -> Arc<dyn CommitListener> {
        Arc::clone(&self.0) as Arc<dyn CommitListener>
    }
}

impl Hub {
    /// A hub over `store`, which must have been built with `fanout.listener()`.
    pub fn new(store: Arc<dyn Store>, fanout: Fanout, config: HubConfig) -> Self {
        Hub {
            inner: Arc::new(Inner {
                store,
                registry: fanout.0,
                config,
                next_key: AtomicU64::new(1),
            }),
        }
    }

    /// The store behind the hub.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The id of the latest update fanned out since this hub started, if any.
    pub fn last_event_id(&self) -> Option<String> {
        self.inner.registry.last_id()
    }

    /// How many subscribers are connected.
    pub fn subscriber_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// Publishes `draft`: gives it an id if it has none, commits it, fans it out. Resolves
    /// once it is committed, with the update as stored.
    pub async fn publish(&self, mut draft: Draft) -> Result<Arc<Update>, PublishError> {
        if draft.topics.is_empty() {
            return Err(PublishError::NoTopic);
        }
        match &draft.id {
            Some(id) if id.starts_with('#') => return Err(PublishError::ReservedId),
            Some(_) => {}
            None => draft.id = Some(new_id()),
        }
        draft.validate().map_err(StoreError::from)?;
        let started = std::time::Instant::now();
        let update = self.inner.store.append(draft).await?;
        metrics::histogram!("sluice_store_append_seconds").record(started.elapsed().as_secs_f64());
        Ok(update)
    }

    /// Subscribes: the frames replay what the cursor missed, then go live, with no gap and no
    /// duplicate between the two, in the store's order.
    pub async fn subscribe(&self, request: SubscribeRequest) -> Result<Subscription, StoreError> {
        let (reset, deliveries) = self.start(request).await?;
        let frames = deliveries.stream.map(|d| d.frame()).boxed();
        Ok(Subscription { resumed_after: deliveries.resumed_after, reset, frames })
    }

    /// Subscribes, like [`Hub::subscribe`], delivering values rather than frames.
    pub async fn deliveries(&self, request: SubscribeRequest) -> Result<Deliveries, StoreError> {
        Ok(self.start(request).await?.1)
    }

    async fn start(&self, request: SubscribeRequest) -> Result<(bool, Deliveries), StoreError> {
        let (replay_after, resumed_after, reset) = match &request.cursor {
            Cursor::Live => (None, None, false),
            Cursor::Earliest => (Some(0), Some("earliest".to_owned()), false),
            Cursor::After(id) => match self.inner.store.find(id).await? {
                Some(seq) => (Some(seq), Some(id.clone()), false),
                None => (Some(0), Some("earliest".to_owned()), true),
            },
        };
        let filter = Arc::new(Filter {
            selectors: request.selectors,
            allowed_private: request.allowed_private,
        });
        let cutoff = Arc::new(OnceLock::new());
        let (sender, receiver) = mpsc::channel(self.inner.config.queue_capacity.max(1));
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let subscriber =
            Arc::new(Subscriber::new(key, Arc::clone(&filter), sender, Arc::clone(&cutoff)));
        let live_after = self.inner.registry.register(&subscriber).ok_or(StoreError::Closed)?;
        metrics::gauge!("sluice_subscribers_connected").increment(1.0);
        let feed = Feed {
            hub: Arc::clone(&self.inner),
            subscriber: Arc::downgrade(&subscriber),
            filter,
            cutoff,
            receiver,
            until: request.until_event_type,
            replay: replay_after.map(|after| Replay {
                after,
                until: live_after,
                reset,
                page: VecDeque::new(),
            }),
            done: false,
        };
        Ok((reset, Deliveries { resumed_after, stream: feed.into_stream() }))
    }

    /// Ends every subscription (clients reconnect elsewhere) and closes the store, which
    /// finishes its pending writes.
    pub async fn shut_down(&self) -> Result<(), StoreError> {
        self.inner.registry.shut_down();
        self.inner.store.close().await
    }
}

/// History still to send: `seq`s in `(after, until]`, read from the store a page at a time.
#[derive(Debug)]
struct Replay {
    /// The last `seq` read from the store.
    after: u64,
    /// The last `seq` fanned out when the subscriber registered: live delivery starts after.
    until: u64,
    reset: bool,
    page: VecDeque<Arc<Update>>,
}

/// One subscription's state, behind its frame stream.
struct Feed {
    hub: Arc<Inner>,
    subscriber: std::sync::Weak<Subscriber>,
    filter: Arc<Filter>,
    cutoff: Arc<OnceLock<Cutoff>>,
    receiver: mpsc::Receiver<Arc<Update>>,
    until: Option<String>,
    replay: Option<Replay>,
    done: bool,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(subscriber) = self.subscriber.upgrade() {
            self.hub.registry.unregister(&subscriber);
        }
        metrics::gauge!("sluice_subscribers_connected").decrement(1.0);
    }
}

impl Feed {
    fn into_stream(self) -> BoxStream<'static, Delivery> {
        // The counter's handle is looked up once per subscription, not once per delivery.
        let delivered = metrics::counter!("sluice_updates_delivered_total");
        stream::unfold((self, delivered), |(mut feed, delivered)| async move {
            let delivery = feed.next_delivery().await?;
            if let Delivery::Update(update) = &delivery {
                delivered.increment(1);
                if feed.until.is_some() && update.event_type() == feed.until.as_deref() {
                    feed.done = true;
                }
            }
            Some((delivery, (feed, delivered)))
        })
        .boxed()
    }

    async fn next_delivery(&mut self) -> Option<Delivery> {
        if self.done {
            return None;
        }
        if let Some(replay) = &mut self.replay {
            if std::mem::take(&mut replay.reset) {
                return Some(Delivery::Reset);
            }
            if let Some(update) = self.next_replayed().await {
                return Some(Delivery::Update(update));
            }
            self.replay = None;
        }
        match self.receiver.recv().await {
            Some(update) => Some(Delivery::Update(update)),
            None => {
                self.done = true;
                match self.cutoff.get() {
                    Some(Cutoff::Slow) => Some(Delivery::TooSlow),
                    _ => None,
                }
            }
        }
    }

    /// The next replayed update, or `None` when the replay is over (or the store failed, in
    /// which case the subscriber goes live and can resume from its last id later).
    async fn next_replayed(&mut self) -> Option<Arc<Update>> {
        let replay = self.replay.as_mut()?;
        loop {
            while let Some(update) = replay.page.pop_front() {
                if self.filter.can_receive(&update) {
                    return Some(update);
                }
            }
            if replay.after >= replay.until {
                return None;
            }
            let page = self.hub.store.read_after(replay.after, self.hub.config.replay_page).await;
            match page {
                Ok(page) if !page.is_empty() => {
                    replay.after = page.last().map_or(replay.until, |u| u.seq());
                    let until = replay.until;
                    replay.page.extend(page.into_iter().take_while(|u| u.seq() <= until));
                }
                Ok(_) => return None,
                Err(error) => {
                    tracing::warn!(%error, "replay from the store failed");
                    return None;
                }
            }
        }
    }
}

fn reset_frame() -> Bytes {
    let mut frame = BytesMut::new();
    sluice_sse::Event::new(r#"{"reason":"unknown last event id: sending everything kept"}"#)
        .with_event(RESET_EVENT_TYPE)
        .expect("a constant event type")
        .encode(&mut frame);
    frame.freeze()
}

fn slow_frame() -> Bytes {
    let mut frame = BytesMut::new();
    sluice_sse::encode_comment(
        "sluice: disconnected: this subscriber read too slowly; reconnect with Last-Event-ID to resume",
        &mut frame,
    );
    frame.freeze()
}
