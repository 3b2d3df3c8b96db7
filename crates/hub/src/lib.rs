//! The engine of a Server-Sent Events hub: topics, selectors, subscriptions, history.
//!
//! ```
//! use std::sync::Arc;
//! use futures_util::StreamExt;
//! use sluice_hub::{Cursor, Draft, Fanout, Hub, HubConfig, MemoryStore, Selector, SubscribeRequest};
//!
//! # tokio_test_block_on(async {
//! let fanout = Fanout::new();
//! let store = Arc::new(MemoryStore::new(1000, fanout.listener()));
//! let hub = Hub::new(store, fanout, HubConfig::default());
//!
//! let first = hub.publish(Draft::new("https://example.com/books/1", "out of print")).await?;
//! let mut subscription = hub
//!     .subscribe(SubscribeRequest {
//!         selectors: vec![Selector::parse("https://example.com/books/{id}")?],
//!         allowed_private: vec![],
//!         cursor: Cursor::Earliest,
//!         until_event_type: None,
//!         hangup: None,
//!         direct: None,
//!     })
//!     .await?;
//! hub.publish(Draft::new("https://example.com/books/2", "back in stock")).await?;
//!
//! // The replay of history, then the live update, as SSE frames ready for the wire.
//! let replayed = subscription.frames.next().await.unwrap();
//! assert!(replayed.ends_with(b"data: out of print\n\n"));
//! assert!(std::str::from_utf8(&replayed)?.contains(first.id()));
//! let live = subscription.frames.next().await.unwrap();
//! assert!(live.ends_with(b"data: back in stock\n\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! Publishing commits to the [`Store`], which gives every update its place in one total order
//! and tells the fan-out; the fan-out queues it for each subscriber allowed to see it. A new
//! subscription registers for live updates first, then replays from the store exactly up to
//! the last update fanned out before it registered: no gap, no duplicate, while publishers
//! keep publishing.

mod direct;
mod filter;
mod hub;
pub mod queue;
mod recent;
mod registry;
pub mod selector;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod update;
mod url_pattern;

pub use direct::{DirectWrite, SocketWriter};
pub use filter::{RESERVED_TOPIC_PREFIX, SUBSCRIPTIONS_TOPIC_PREFIX};
pub use hub::{
    Cursor, Deliveries, Delivery, Fanout, Hub, HubConfig, LimitError, Limits, PublishError,
    RESET_EVENT_TYPE, SubscribeError, SubscribeRequest, Subscription,
};
pub use recent::DEFAULT_RECENT_UPDATES;
pub use registry::Hangup;
pub use selector::{Selector, SelectorError};
pub use store::{
    BudgetPeriod, Charge, Charged, CommitListener, Heartbeat, KeyLimits, KeyRecord, KeyUsage,
    Ledger, Limit, MemoryStore, RedisConfig, RedisStore, Spend, Store, StoreError, StreamControl,
    StreamRecord,
};
pub use store::{SqliteConfig, SqliteStats, SqliteStore, Synchronous};
pub use update::{Draft, Update, now_ms};
