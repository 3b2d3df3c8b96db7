//! The pump: one task per running answer, writing its provider's events into the hub and
//! handing each to the answer's creator.

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sluice_hub::{Hub, PublishError, StoreError, queue};
use sluice_llm::{DeltaStream, Usage};

use super::events::{AnswerEvent, Finish, from_provider};
use super::read::Piece;
use super::{Running, Unread, end_id, event_id};

/// How long a pump keeps trying to end an answer in a store that fails.
const END_RETRY_FOR: Duration = Duration::from_secs(30);
/// How long another node's report of readers keeps an answer from being abandoned.
pub(super) const READ_ELSEWHERE_FOR: Duration = Duration::from_secs(5);

/// Writes one answer's events into the hub, and hands each one stored to the answer's creator
/// (read by [`Answers::read_new`](super::Answers::read_new)).
pub(super) struct Pump {
    hub: Hub,
    id: String,
    next: u64,
    /// The creator's feed, until it is behind, gone, or missed an event.
    feed: Option<queue::Sender<Piece>>,
}

/// Why a pump stopped reading its provider.
enum Stop {
    /// The provider's answer ended (its `usage` and `end` are the next events).
    Ended,
    /// A reader asked to stop, or nobody read it for the grace period.
    Cancelled,
    /// An event could not be stored: the store is failing.
    StoreFailed,
}

impl Pump {
    pub(super) fn new(hub: Hub, id: String, feed: queue::Sender<Piece>) -> Self {
        Pump { hub, id, next: 0, feed: Some(feed) }
    }

    /// Stores `event` under the answer's next number and feeds it to the creator.
    async fn publish(&mut self, event: AnswerEvent) -> Result<(), PublishError> {
        let id = event_id(&self.id, self.next);
        self.next += 1;
        self.store(id, event).await
    }

    /// Stores `event` under `event_id`, then feeds it to the creator. Once an event is not
    /// fed (the creator is behind or gone, or the store refused it), the feed stops for good:
    /// its creator reads on from the hub after the last event it was fed, so it still gets
    /// every event once, in order.
    async fn store(&mut self, event_id: String, event: AnswerEvent) -> Result<(), PublishError> {
        // The id goes into the stored update; a copy, only while there is a feed to hand it to.
        let fed_id = self.feed.is_some().then(|| event_id.clone());
        let stored = super::publish(&self.hub, &self.id, event_id, &event).await;
        let fed = stored.is_ok()
            && self
                .feed
                .as_ref()
                .zip(fed_id)
                .is_some_and(|(feed, id)| feed.try_send(Piece::Event(Some(id), event)).is_ok());
        if !fed {
            self.feed = None;
        }
        stored
    }

    pub(super) async fn run(mut self, deltas: DeltaStream, running: &Running, unread: Unread) {
        let mut events = from_provider(deltas);
        let (mut usage, mut texts) = (None::<Usage>, 0u32);
        let mut error = None;
        let mut idle_since = Some(tokio::time::Instant::now());
        let stop = loop {
            let abandoned = async {
                match (idle_since, unread) {
                    (Some(since), Unread::CancelAfter(grace)) => {
                        tokio::time::sleep_until(since + grace).await;
                    }
                    _ => std::future::pending().await,
                }
            };
            let stored = tokio::select! {
                event = events.next() => match event {
                    Some(AnswerEvent::Usage(u)) => {
                        usage = Some(u);
                        Ok(())
                    }
                    Some(AnswerEvent::End(finish)) => break (Stop::Ended, finish),
                    Some(AnswerEvent::Error(e)) => {
                        // Written with a fixed id with `usage` and `end`, so that an error the
                        // store could not take is retried with them.
                        error = Some(e);
                        Ok(())
                    }
                    Some(event) => {
                        texts += u32::from(matches!(event, AnswerEvent::Text(_)));
                        self.publish(event).await
                    }
                    None => break (Stop::Ended, Finish::Error),
                },
                () = running.cancel.notified() => break (Stop::Cancelled, Finish::Cancelled),
                () = running.readers_changed.notified() => {
                    let readers = running.readers.load(Ordering::SeqCst);
                    idle_since = (readers == 0).then(tokio::time::Instant::now);
                    Ok(())
                }
                () = abandoned => {
                    let read_elsewhere = *running.read_elsewhere.lock().unwrap();
                    if read_elsewhere.is_some_and(|at| at.elapsed() < READ_ELSEWHERE_FOR) {
                        // Its readers are on another node: not abandoned.
                        idle_since = Some(tokio::time::Instant::now());
                        Ok(())
                    } else {
                        tracing::info!(answer = self.id, "no reader for the grace period: cancelling");
                        break (Stop::Cancelled, Finish::Cancelled);
                    }
                }
            };
            if let Err(error) = stored {
                tracing::error!(%error, answer = self.id, "an answer event could not be stored");
                break (Stop::StoreFailed, Finish::Error);
            }
        };
        // Dropping the provider's events cancels the upstream if it still runs (counted there).
        drop(events);
        let (stop, finish) = stop;
        // Usage is reported even when stopped: what was generated is what was paid for.
        let usage = usage.unwrap_or(Usage::new(0, texts));
        if !matches!(stop, Stop::StoreFailed)
            && self.close(error.as_ref(), usage, finish).await.is_ok()
        {
            return;
        }
        // The store fails: tell the readers here to reconnect (they will find the answer
        // ended, or settle it), and keep trying to end it for a while.
        running.abandoned.set();
        self.feed = None;
        let give_up = tokio::time::Instant::now() + END_RETRY_FOR;
        let mut backoff = Duration::from_millis(100);
        let error = error.unwrap_or_else(|| {
            json!({"message": "the answer could not be stored; it was stopped",
                "type": "server_error", "code": "store_unavailable"})
        });
        while tokio::time::Instant::now() < give_up {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if self.close(Some(&error), usage, Finish::Error).await.is_ok() {
                return;
            }
        }
        tracing::error!(answer = self.id, "the answer could not be ended: the store still fails");
    }

    /// Writes `error` (once, when given), `usage` (once) and `end`; each has a fixed id, so a
    /// retry after a partial failure writes only what is missing, and a second `end` is a
    /// conflict, which is success.
    async fn close(
        &mut self,
        error: Option<&serde_json::Value>,
        usage: Usage,
        finish: Finish,
    ) -> Result<(), PublishError> {
        let error = error.map(|e| (event_id(&self.id, "failed"), AnswerEvent::Error(e.clone())));
        let rest = [
            (event_id(&self.id, "usage"), AnswerEvent::Usage(usage)),
            (end_id(&self.id), AnswerEvent::End(finish)),
        ];
        for (event_id, event) in error.into_iter().chain(rest) {
            match self.store(event_id, event).await {
                Ok(()) | Err(PublishError::Store(StoreError::Conflict(_))) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
