//! Retention by age: a task that deletes updates (and old stream records) past the age bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::keys::Keys;
use super::scripts::EXPIRE;
use crate::update::now_ms;

/// What the age-retention task holds.
pub(super) struct Retention {
    pub(super) connection: ConnectionManager,
    pub(super) keys: Keys,
    pub(super) max_age: Duration,
    pub(super) timeout: Duration,
    pub(super) closed: Arc<AtomicBool>,
}

/// Deletes updates older than the age bound, every second, from whichever node (the script
/// is idempotent: nodes doing it at once delete each entry once).
pub(super) async fn retain_by_age(retention: Retention) {
    let script = Script::new(EXPIRE);
    let max_age = u64::try_from(retention.max_age.as_millis()).unwrap_or(u64::MAX);
    while !retention.closed.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = now_ms();
        let oldest_kept = now.saturating_sub(max_age);
        let records_before = oldest_kept.min(now.saturating_sub(10 * 60 * 1000));
        let mut connection = retention.connection.clone();
        let keys = &retention.keys;
        let mut invocation = script.key(&keys.updates);
        invocation
            .key(&keys.ids)
            .key(&keys.streams)
            .key(&keys.streams_age)
            .key(&keys.streams_latest)
            .arg(oldest_kept)
            .arg(10_000)
            .arg(records_before);
        let run = invocation.invoke_async::<i64>(&mut connection);
        match tokio::time::timeout(retention.timeout, run).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "retention by age failed"),
            Err(_) => tracing::warn!("retention by age timed out"),
        }
    }
}
