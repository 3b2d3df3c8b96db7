//! The connect storm: every subscriber gets an update (so it has a last event id), all leave,
//! more updates are published, then all come back at once with their last event id; measured:
//! how long until all are connected again and until all have the updates they missed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;

use super::config::{HubBench, StormPlan};
use super::monitor::Monitor;
use super::results::StormResult;
use super::workers::Worker;
use crate::Error;
use crate::procfs;
use crate::publisher::{self, PublishPlan};
use crate::stats::Aggregate;

/// The step number stamped on the update that gives every subscriber a last event id.
const STORM_PRIMER_STEP: u32 = 1_000_000;
/// The step number stamped on the updates published while the subscribers are away.
const STORM_MISSED_STEP: u32 = 1_000_001;

impl HubBench {
    /// Runs the connect storm against the connected workers.
    pub(super) async fn storm(
        &self,
        plan: &StormPlan,
        client: &reqwest::Client,
        url: &Url,
        workers: &mut [Worker],
        aggregate: &Arc<Mutex<Aggregate>>,
        monitor: &mut Monitor,
    ) -> Result<StormResult, Error> {
        let subscribers = aggregate.lock().unwrap().totals().connected;
        let topics = self.topics.max(1);
        let publish = |step: u32, updates: u64| PublishPlan {
            url: url.clone(),
            protocol: self.protocol,
            topic: self.topic.clone(),
            topics: self.topics,
            token: self.publish_token.clone().unwrap_or_default(),
            rate: 100.0,
            duration: Duration::from_secs_f64(updates as f64 / 100.0),
            message_size: self.message_size,
            step,
            connections: self.publish_connections,
        };
        let count = |step: u32| aggregate.lock().unwrap().step(step).map_or(0, |(n, _)| *n);
        // Everyone gets one update, so everyone has a last event id.
        let primer = publisher::publish(client, &publish(STORM_PRIMER_STEP, topics)).await;
        let primed = monitor
            .wait_until("prime", Instant::now() + Duration::from_secs(30), || {
                count(STORM_PRIMER_STEP) >= subscribers
            })
            .await;
        if !primed {
            return Err(Error::Worker(format!(
                "storm: {} of {subscribers} subscribers got the first update ({} published, {} \
                 failed: {:?})",
                count(STORM_PRIMER_STEP),
                primer.ok,
                primer.errors + primer.behind,
                primer.first_error
            )));
        }

        // Everyone leaves; updates are published meanwhile.
        for worker in workers.iter_mut() {
            worker.send("disconnect").await;
        }
        let connected = || aggregate.lock().unwrap().totals().connected;
        let left = monitor
            .wait_until("leave", Instant::now() + Duration::from_secs(30), || connected() == 0)
            .await;
        if !left {
            return Err(Error::Worker(format!("storm: {} streams still open", connected())));
        }
        let missed = u64::from(plan.missed) * topics;
        let published = publisher::publish(client, &publish(STORM_MISSED_STEP, missed)).await;

        // Everyone comes back at once.
        let before = aggregate.lock().unwrap().totals();
        let overflows_before = procfs::tcp_ext_counter("ListenOverflows");
        let started_ns = crate::now_nanos();
        let started = Instant::now();
        let line = format!("reconnect {started_ns}");
        for worker in workers.iter_mut() {
            worker.send(&line).await;
        }
        let deadline = started + plan.deadline;
        let all_back = monitor.wait_until("storm", deadline, || connected() >= subscribers).await;
        let reconnect_seconds = match aggregate.lock().unwrap().totals().last_connected_ns {
            ns if ns > started_ns => (ns - started_ns) as f64 / 1e9,
            _ => started.elapsed().as_secs_f64(),
        };
        let expected = published.ok * (subscribers / topics);
        let replayed_all =
            monitor.wait_until("replay", deadline, || count(STORM_MISSED_STEP) >= expected).await;
        let replay_seconds = started.elapsed().as_secs_f64();
        let after = aggregate.lock().unwrap().totals();
        let (replayed, latency) = aggregate
            .lock()
            .unwrap()
            .step(STORM_MISSED_STEP)
            .map(|(n, l)| (*n, l.clone()))
            .unwrap_or_default();
        let ms = |q: f64| latency.quantile_micros(q) as f64 / 1e3;
        Ok(StormResult {
            subscribers,
            reconnected: after.reconnected,
            all_reconnected: all_back,
            reconnect_seconds,
            reconnects_per_second: after.reconnected as f64 / reconnect_seconds.max(1e-9),
            missed_published: published.ok,
            replay_expected: expected,
            replayed,
            replay_seconds: replayed_all.then_some(replay_seconds),
            replay_p50_ms: ms(0.5),
            replay_p99_ms: ms(0.99),
            replay_max_ms: latency.max_micros() as f64 / 1e3,
            connect_errors: after.connect_errors.saturating_sub(before.connect_errors),
            gave_up: after.gave_up.saturating_sub(before.gave_up),
            listen_overflows: procfs::tcp_ext_counter("ListenOverflows")
                .zip(overflows_before)
                .map(|(after, before)| after.saturating_sub(before)),
        })
    }
}
