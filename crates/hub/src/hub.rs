//! [`Hub`]: publish updates, subscribe to topics, resume from history with no gap.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};

use crate::direct::{DirectWrite, SocketWriter};
use crate::filter::Filter;
use crate::queue;
use crate::recent::{DEFAULT_RECENT_BYTES, DEFAULT_RECENT_UPDATES, Recent};
use crate::registry::{Cutoff, Hangup, Intake, Live, Registry, Subscriber};
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
    /// Bounds on topics and selectors, which bound the cost of matching one against another.
    pub limits: Limits,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { queue_capacity: 1024, replay_page: 512, limits: Limits::default() }
    }
}

/// Bounds on what publishers and subscribers may name. Matching a template against a topic
/// costs O(topic length × template size); every publish is matched against every template
/// subscription, so without these one subscriber could make every publish slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest topic, in characters (also the longest exact selector). Characters, not
    /// bytes, as JSON Schema's `maxLength` counts them, so a client can check before sending.
    pub max_topic_length: usize,
    /// The most topics one update may have (the canonical one and its alternates).
    pub max_topics_per_update: usize,
    /// The longest URI template or URL pattern selector, in characters.
    pub max_template_length: usize,
    /// The most variables in one URI template selector.
    pub max_template_variables: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_topic_length: 1024,
            max_topics_per_update: 32,
            max_template_length: 256,
            max_template_variables: 16,
        }
    }
}

/// A topic or selector past one of the [`Limits`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A topic (or exact selector) longer than `max_topic_length`.
    #[error("a topic is {len} characters long; at most {max} are allowed")]
    TopicTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More topics on one update than `max_topics_per_update`.
    #[error("an update has {count} topics; at most {max} are allowed")]
    TooManyTopics {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A template longer than `max_template_length`.
    #[error("a URI template or URL pattern is {len} characters long; at most {max} are allowed")]
    TemplateTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A template with more variables than `max_template_variables`.
    #[error("a URI template selector has {count} variables; at most {max} are allowed")]
    TooManyVariables {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl Limits {
    /// Checks one topic of an update.
    pub fn check_topic(&self, topic: &str) -> Result<(), LimitError> {
        let len = topic.chars().count();
        if len > self.max_topic_length {
            return Err(LimitError::TopicTooLong { len, max: self.max_topic_length });
        }
        Ok(())
    }

    /// Checks one subscription selector.
    pub fn check_selector(&self, selector: &Selector) -> Result<(), LimitError> {
        let len = selector.as_str().chars().count();
        if selector.exact().is_some() {
            return self.check_topic(selector.as_str());
        }
        if len > self.max_template_length {
            return Err(LimitError::TemplateTooLong { len, max: self.max_template_length });
        }
        let count = selector.variables();
        if count > self.max_template_variables {
            return Err(LimitError::TooManyVariables { count, max: self.max_template_variables });
        }
        Ok(())
    }

    fn check_draft(&self, draft: &Draft) -> Result<(), LimitError> {
        let count = draft.topics.len();
        if count > self.max_topics_per_update {
            return Err(LimitError::TooManyTopics { count, max: self.max_topics_per_update });
        }
        draft.topics.iter().try_for_each(|topic| self.check_topic(topic))
    }
}

/// Why a publication was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The update names no topic.
    #[error("an update needs at least one topic")]
    NoTopic,
    /// A publisher-chosen id must not start with `#` (reserved by the protocol) nor be empty.
    #[error("an update id must be non-empty and must not start with '#'")]
    ReservedId,
    /// A topic past the hub's [`Limits`].
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The store refused or failed (conflicting id, invalid field, backend down).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a subscription was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// A selector past the hub's [`Limits`].
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The store could not look up the cursor, or the hub is shutting down.
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
    /// Run when the hub cuts the subscriber off (too slow, or shutting down), so that its
    /// connection can be closed at once rather than when its stream is next polled.
    pub hangup: Option<Hangup>,
    /// The subscriber's socket, if the fan-out may write live updates to it itself when the
    /// subscriber has nothing in flight ([`DirectWrite`]); the connection's writer then takes
    /// [`Subscription::direct`]. Not for a subscription with `until_event_type`.
    pub direct: Option<Arc<dyn SocketWriter>>,
}

impl SubscribeRequest {
    /// A request for `selectors` from `cursor`, with no private access, no end, no hook.
    pub fn new(selectors: Vec<Selector>, cursor: Cursor) -> Self {
        SubscribeRequest {
            selectors,
            allowed_private: Vec::new(),
            cursor,
            until_event_type: None,
            hangup: None,
            direct: None,
        }
    }
}

/// One thing a subscription delivers.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// What follows is everything kept, not a continuation: the cursor was unknown, or the
    /// store's history was reset under a live subscriber (a Redis that came back empty).
    Reset,
    /// An update, from history or live.
    Update(Arc<Update>),
    /// The subscriber read too slowly and is cut off (it can resume from its last id).
    TooSlow,
    /// History could not be read, or was reset under a stream read to its end (an answer,
    /// which cannot go on from a history that no longer holds its start): the stream ends
    /// here rather than go live past a gap (the subscriber resumes from its last id).
    ReplayFailed,
}

impl Delivery {
    /// The SSE frame for it: the update's event, a [`RESET_EVENT_TYPE`] event, or a comment.
    pub fn frame(&self) -> Bytes {
        match self {
            Delivery::Reset => reset_frame(),
            Delivery::Update(update) => update.frame().clone(),
            Delivery::TooSlow => slow_frame(),
            Delivery::ReplayFailed => replay_failed_frame(),
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
    /// With [`SubscribeRequest::direct`], live updates may also go straight to the socket.
    pub frames: BoxStream<'static, Bytes>,
    /// With [`SubscribeRequest::direct`]: the writer's side of the hand-over, which whoever
    /// writes `frames` to the socket must follow (see [`DirectWrite`]).
    pub direct: Option<Arc<DirectWrite>>,
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
    /// Keeps the dispatcher running for as long as the hub lives.
    _intake: Arc<Intake>,
    config: HubConfig,
    next_key: AtomicU64,
}

/// The fan-out side of a hub, made first because a store needs it as its [`CommitListener`].
///
/// It runs a thread of its own (`sluice-fanout`) that matches committed updates against the
/// subscriptions, so the store's commit path only queues them. The thread ends when the
/// fan-out, its listener and the hub over it are all dropped.
#[derive(Debug, Clone)]
pub struct Fanout(Arc<Intake>);

impl Default for Fanout {
    fn default() -> Self {
        Fanout::with_recent(DEFAULT_RECENT_UPDATES, DEFAULT_RECENT_BYTES)
    }
}

impl Fanout {
    /// A fan-out with no subscribers yet, keeping the default window of recent updates.
    pub fn new() -> Self {
        Fanout::default()
    }

    /// A fan-out that keeps at most `updates` recent updates, holding at most `bytes` bytes of
    /// heap, for replay (0: replays always read the store).
    pub fn with_recent(updates: usize, bytes: usize) -> Self {
        Fanout(Intake::start(Recent::new(updates, bytes)))
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
                registry: Arc::clone(fanout.0.registry()),
                _intake: fanout.0,
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

    /// The settings it runs with.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Publishes `draft`: gives it an id if it has none, commits it, fans it out. Resolves
    /// once it is committed, with the update as stored.
    pub async fn publish(&self, draft: Draft) -> Result<Arc<Update>, PublishError> {
        if draft.id.as_deref().is_some_and(|id| id.starts_with('#')) {
            return Err(PublishError::ReservedId);
        }
        self.commit(draft).await
    }

    /// Publishes an update of one of the hub's own streams (an AI answer), whose id may start
    /// with `#`: ids no publisher can take ([`Hub::publish`] refuses them), so that nobody who
    /// knows a stream's next ids can store them first and keep it from ending.
    pub async fn publish_own(&self, draft: Draft) -> Result<Arc<Update>, PublishError> {
        self.commit(draft).await
    }

    async fn commit(&self, mut draft: Draft) -> Result<Arc<Update>, PublishError> {
        if draft.topics.is_empty() {
            return Err(PublishError::NoTopic);
        }
        self.inner.config.limits.check_draft(&draft)?;
        match &draft.id {
            Some(id) if id.is_empty() => return Err(PublishError::ReservedId),
            Some(_) => {}
            None => draft.id = Some(new_id()),
        }
        draft.validate().map_err(StoreError::from)?;
        let started = std::time::Instant::now();
        let appended = self.inner.store.append(draft).await;
        metrics::histogram!("sluice_store_append_seconds").record(started.elapsed().as_secs_f64());
        Ok(appended?)
    }

    /// Why the store cannot take writes now, if its latest calls failed (see
    /// [`Store::failure`]): for a readiness check, which should send traffic elsewhere
    /// meanwhile.
    pub fn store_failure(&self) -> Option<String> {
        self.inner.store.failure()
    }

    /// Subscribes: the frames replay what the cursor missed, then go live, with no gap and no
    /// duplicate between the two, in the store's order.
    pub async fn subscribe(
        &self,
        request: SubscribeRequest,
    ) -> Result<Subscription, SubscribeError> {
        let (reset, deliveries, direct) = self.start(request).await?;
        let frames = deliveries.stream.map(|d| d.frame()).boxed();
        Ok(Subscription { resumed_after: deliveries.resumed_after, reset, frames, direct })
    }

    /// Subscribes, like [`Hub::subscribe`], delivering values rather than frames.
    pub async fn deliveries(
        &self,
        request: SubscribeRequest,
    ) -> Result<Deliveries, SubscribeError> {
        Ok(self.start(request).await?.1)
    }

    async fn start(
        &self,
        request: SubscribeRequest,
    ) -> Result<(bool, Deliveries, Option<Arc<DirectWrite>>), SubscribeError> {
        let limits = &self.inner.config.limits;
        request.selectors.iter().try_for_each(|selector| limits.check_selector(selector))?;
        let (replay_after, resumed_after, reset) = match &request.cursor {
            Cursor::Live => (None, None, false),
            Cursor::Earliest => (Some(0), Some("earliest".to_owned()), false),
            Cursor::After(id) => match self.inner.store.find(id).await {
                Ok(Some(seq)) => (Some(seq), Some(id.clone()), false),
                Ok(None) => (Some(0), Some("earliest".to_owned()), true),
                // The history cannot be read now: a stream that says so and ends, so that the
                // subscriber (an EventSource stops for good on an error status) comes back
                // with the same cursor, rather than a refusal.
                Err(StoreError::Closed) => return Err(StoreError::Closed.into()),
                Err(error) => {
                    tracing::warn!(%error, "a cursor could not be looked up: ending the stream");
                    metrics::counter!("sluice_replay_failures_total").increment(1);
                    let failed = stream::once(async { Delivery::ReplayFailed }).boxed();
                    return Ok((false, Deliveries { resumed_after: None, stream: failed }, None));
                }
            },
        };
        let filter = Arc::new(Filter {
            selectors: request.selectors,
            allowed_private: request.allowed_private,
        });
        let cutoff = Arc::new(OnceLock::new());
        let (sender, receiver) = queue::queue(self.inner.config.queue_capacity);
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let direct = match (request.direct, &request.until_event_type) {
            (Some(socket), None) => Some(Arc::new(DirectWrite::new(socket))),
            _ => None,
        };
        let subscriber = Arc::new(Subscriber::new(
            key,
            Arc::clone(&filter),
            sender,
            Arc::clone(&cutoff),
            request.hangup,
            direct.clone(),
        ));
        let live_after = self.inner.registry.register(&subscriber).ok_or(StoreError::Closed)?;
        if let Some(direct) = &direct {
            direct.set_live_after(live_after);
        }
        let feed = Feed {
            hub: Arc::clone(&self.inner),
            subscriber: Arc::downgrade(&subscriber),
            filter,
            cutoff,
            receiver,
            live_after,
            until: request.until_event_type,
            replay: replay_after.map(|after| Replay {
                after,
                until: live_after,
                reset,
                page: VecDeque::new(),
            }),
            direct: direct.clone(),
            done: false,
        };
        Ok((reset, Deliveries { resumed_after, stream: feed.into_stream() }, direct))
    }

    /// Ends every subscription (clients reconnect elsewhere) and refuses new ones; the store
    /// still takes writes (an answer in flight can finish).
    pub fn end_subscriptions(&self) {
        self.inner.registry.shut_down();
    }

    /// Ends every subscription, as [`Hub::end_subscriptions`], and closes the store, which
    /// finishes its pending writes.
    pub async fn shut_down(&self) -> Result<(), StoreError> {
        self.end_subscriptions();
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
    /// Read and not sent yet: only updates this subscriber receives (both the window of recent
    /// updates and the store's pages are filtered before they land here).
    page: VecDeque<Arc<Update>>,
}

/// One subscription's state, behind its frame stream.
struct Feed {
    hub: Arc<Inner>,
    subscriber: std::sync::Weak<Subscriber>,
    filter: Arc<Filter>,
    cutoff: Arc<OnceLock<Cutoff>>,
    receiver: queue::Receiver<Live>,
    /// Live updates up to this `seq` are skipped: they were committed before the subscriber
    /// registered, so they belong to the replay (or to no one, for a live-only cursor).
    live_after: u64,
    until: Option<String>,
    replay: Option<Replay>,
    /// The fan-out's hand-over to the socket, if any: told when the feed waits with nothing
    /// queued.
    direct: Option<Arc<DirectWrite>>,
    done: bool,
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(direct) = &self.direct {
            direct.close();
        }
        if let Some(subscriber) = self.subscriber.upgrade() {
            self.hub.registry.unregister(&subscriber);
        }
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
        // Cut off: stop at once, without draining what is queued (it resumes from its id).
        if let Some(why) = self.cutoff.get() {
            self.done = true;
            return (*why == Cutoff::Slow).then_some(Delivery::TooSlow);
        }
        if let Some(replay) = &mut self.replay {
            if std::mem::take(&mut replay.reset) {
                return Some(Delivery::Reset);
            }
            match self.next_replayed().await {
                Ok(Some(update)) => return Some(Delivery::Update(update)),
                Ok(None) => self.replay = None,
                Err(error) => {
                    tracing::warn!(%error, "replay from the store failed: ending the stream");
                    metrics::counter!("sluice_replay_failures_total").increment(1);
                    self.done = true;
                    return Some(Delivery::ReplayFailed);
                }
            }
        }
        loop {
            if let Some(direct) = &self.direct {
                // Nothing queued and the replay over: the fan-out may write to the socket.
                direct.feed_waiting(|| self.receiver.is_empty());
            }
            match self.receiver.recv().await {
                // Committed (or reset) before it registered: the replay's part already.
                Some(Live::Update(update)) if update.seq() <= self.live_after => {}
                Some(Live::Reset(at)) if at <= self.live_after => {}
                Some(Live::Update(update)) if self.cutoff.get().is_none() => {
                    return Some(Delivery::Update(update));
                }
                Some(Live::Reset(_)) if self.cutoff.get().is_none() => {
                    if self.until.is_some() {
                        self.done = true;
                        return Some(Delivery::ReplayFailed);
                    }
                    return Some(Delivery::Reset);
                }
                _ => {
                    self.done = true;
                    return match self.cutoff.get() {
                        Some(Cutoff::Slow) => Some(Delivery::TooSlow),
                        _ => None,
                    };
                }
            }
        }
    }

    /// The next replayed update, or `None` when the replay is over.
    async fn next_replayed(&mut self) -> Result<Option<Arc<Update>>, StoreError> {
        let Some(replay) = self.replay.as_mut() else { return Ok(None) };
        loop {
            if let Some(update) = replay.page.pop_front() {
                return Ok(Some(update));
            }
            if replay.after >= replay.until {
                return Ok(None);
            }
            let limit = self.hub.config.replay_page;
            // From `seq` 0 means from the earliest the store keeps, which only the store
            // knows. After a kept update, everything later is kept too (the oldest go first),
            // so the window of recent updates is the store's history from there on.
            let recent = (replay.after > 0)
                .then(|| {
                    self.hub.registry.recent.read(replay.after, replay.until, &self.filter, limit)
                })
                .flatten();
            if let Some(page) = recent {
                metrics::counter!("sluice_replay_pages_from_memory_total").increment(1);
                replay.after = page.read_to;
                replay.page.extend(page.updates);
                continue;
            }
            metrics::counter!("sluice_replay_pages_from_store_total").increment(1);
            let page = self.hub.store.read_after(replay.after, limit).await?;
            let Some(last) = page.last() else { return Ok(None) };
            replay.after = last.seq();
            let (until, filter) = (replay.until, &self.filter);
            let received = page.into_iter().take_while(|u| u.seq() <= until);
            replay.page.extend(received.filter(|u| filter.can_receive(u)));
        }
    }
}

fn reset_frame() -> Bytes {
    let mut frame = BytesMut::new();
    sluice_sse::Event::new(r#"{"reason":"the history does not continue from the last event: sending everything kept"}"#)
        .with_event(RESET_EVENT_TYPE)
        .expect("a constant event type")
        .encode(&mut frame);
    frame.freeze()
}

fn replay_failed_frame() -> Bytes {
    let mut frame = BytesMut::new();
    sluice_sse::encode_comment(
        "sluice: disconnected: the history could not be read; reconnect with Last-Event-ID to resume",
        &mut frame,
    );
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
