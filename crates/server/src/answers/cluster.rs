//! Answers across nodes sharing a store (Redis): an answer runs on the node that started it
//! and is read, resumed and cancelled from any node. [`coordinate`] renews this node's leases
//! on the answers it produces every second, reports which answers have readers here (so the
//! producer elsewhere does not cancel them as abandoned), relays cancel requests made on other
//! nodes, and ends with `error` and `end` the answers whose producer died (its lease lapsed),
//! so their readers anywhere stop waiting within seconds.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use sluice_hub::{Hub, StoreError};

use super::{Answers, end_id, end_orphan};

/// How often a node renews its leases and reports its readers.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Runs for as long as `answers` lives, when the hub's store is shared by several nodes: see
/// the [module docs](self). Does nothing for a store only this process uses.
pub(crate) fn coordinate(answers: &Arc<Answers>, hub: &Hub) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let store = Arc::clone(hub.store());
    let Some(control) = store.control() else { return };
    let mut requests = control.cancel_requests();
    let weak = Arc::downgrade(answers);
    runtime.spawn(async move {
        while let Some(id) = requests.next().await {
            let Some(answers) = weak.upgrade() else { return };
            answers.cancel_here(&id);
        }
    });
    let (weak, hub) = (Arc::downgrade(answers), hub.clone());
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for round in 0u64.. {
            tick.tick().await;
            let Some(answers) = weak.upgrade() else { return };
            if let Err(error) = answers.beat(&hub, round % 2 == 0).await {
                tracing::warn!(%error, "the answers' heartbeat failed");
            }
        }
    });
}

impl Answers {
    /// One heartbeat: renew leases, report readers, take cancel requests and news of readers
    /// elsewhere; with `reap`, also end the answers whose producer died.
    async fn beat(&self, hub: &Hub, reap: bool) -> Result<(), StoreError> {
        let Some(control) = hub.store().control() else { return Ok(()) };
        let owned: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
        let read: Vec<String> = self.reading.lock().unwrap().keys().cloned().collect();
        let heartbeat = control.heartbeat(&owned, &read).await?;
        for id in &heartbeat.cancelled {
            self.cancel_here(id);
        }
        let now = tokio::time::Instant::now();
        for id in &heartbeat.read_elsewhere {
            if let Some(running) = self.running.lock().unwrap().get(id) {
                *running.read_elsewhere.lock().unwrap() = Some(now);
            }
        }
        if reap {
            for id in control.lapsed().await? {
                if self.running.lock().unwrap().contains_key(&id) {
                    continue;
                }
                if hub.store().find(&end_id(&id)).await?.is_none()
                    && let Err(error) = end_orphan(hub, &id).await
                {
                    tracing::warn!(answer = id, %error, "a lapsed answer could not be ended");
                    continue;
                }
                control.release(&id).await?;
            }
        }
        Ok(())
    }
}
