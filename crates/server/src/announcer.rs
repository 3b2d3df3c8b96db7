//! Subscription events, published in the background a few at a time (the subscription API
//! in `mercure/` makes them; the state every route shares holds this queue).
//!
//! Every subscriber that connects or leaves announces itself with an event per matcher. A
//! task per event, all publishing at once, was what a connect burst cost most: a heap profile
//! of a node on Redis while 5,000 subscribers connected held some 4,000 of them in flight at
//! its peak (each a task, an append's future, its encoded command and Redis's request
//! buffer), and the process kept that memory after the burst: 12.1 KB per idle subscriber,
//! 9.3 KB with this (`bench/scaleout.sh` with 5,000 per node). Here the events wait in order
//! as drafts, and one task publishes at most [`IN_FLIGHT`] at a time: enough to keep a shared
//! store's connection busy, since its requests are pipelined.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sluice_hub::{Draft, Hub};

/// Subscription events published at once, at most.
const IN_FLIGHT: usize = 32;

/// The subscription events waiting to be published, and whether a task publishes them.
#[derive(Debug, Default)]
pub(crate) struct Announcer {
    state: Mutex<Waiting>,
}

#[derive(Debug, Default)]
struct Waiting {
    drafts: VecDeque<Draft>,
    publishing: bool,
}

impl Announcer {
    /// Queues `drafts` for publishing on `hub`, starting the publishing task if none runs.
    /// Does nothing outside a runtime.
    pub(crate) fn announce(self: &Arc<Self>, hub: &Hub, drafts: impl IntoIterator<Item = Draft>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let start = {
            let mut waiting = self.waiting();
            waiting.drafts.extend(drafts);
            !waiting.drafts.is_empty() && !std::mem::replace(&mut waiting.publishing, true)
        };
        if start {
            runtime.spawn(Arc::clone(self).publish(hub.clone()));
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes what waits, [`IN_FLIGHT`] at a time, until nothing does.
    async fn publish(self: Arc<Self>, hub: Hub) {
        let mut publishing = FuturesUnordered::new();
        loop {
            {
                let mut waiting = self.waiting();
                while publishing.len() < IN_FLIGHT {
                    let Some(draft) = waiting.drafts.pop_front() else { break };
                    let hub = hub.clone();
                    publishing.push(async move { hub.publish(draft).await });
                }
                if publishing.is_empty() {
                    waiting.publishing = false;
                    return;
                }
            }
            if let Some(Err(error)) = publishing.next().await {
                tracing::debug!(%error, "subscription event not published");
            }
        }
    }
}
