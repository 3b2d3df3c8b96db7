//! Publishers: updates at a set rate, over a few keep-alive connections, to a Mercure hub
//! (form POSTs), to Nchan (the data as the body) or to a durable stream (a JSON message), one
//! topic or many in turn.
//!
//! A pacer hands out one job per tick; `connections` senders take them, stamp the data with
//! the time of sending and POST it. When every sender is busy and the hand-off queue is
//! full, a tick is counted as `behind` rather than queued, so a slow server shows up as a
//! lower published rate, not as latency hidden in the load generator.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio::sync::{Mutex, mpsc};

use crate::protocol::HubProtocol;
use crate::stamp::now_nanos;

/// One step of publishing.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// The hub URL.
    pub url: Url,
    /// How to publish.
    pub protocol: HubProtocol,
    /// The topic to publish to (with more than one topic: the base of their names).
    pub topic: String,
    /// Topics: with more than one, update k goes to topic number k mod `topics`.
    pub topics: u64,
    /// The publisher JWT (Mercure).
    pub token: String,
    /// Updates per second.
    pub rate: f64,
    /// How long to publish.
    pub duration: Duration,
    /// Bytes of `data` per update.
    pub message_size: usize,
    /// The step number put in each update's stamp.
    pub step: u32,
    /// Concurrent senders (each keeps one connection).
    pub connections: usize,
}

/// What a step of publishing did.
#[derive(Debug, Clone, Default)]
pub struct PublishStats {
    /// Updates the hub accepted (2xx).
    pub ok: u64,
    /// Updates refused or failed.
    pub errors: u64,
    /// Ticks skipped because every sender was busy.
    pub behind: u64,
    /// The first error, as an example.
    pub first_error: Option<String>,
}

/// A client for publishing: keep-alive, no proxy, a timeout per request.
pub fn client(connections: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(5))
        .build()
}

/// Publishes at `plan.rate` for `plan.duration`; returns when every request is answered.
pub async fn publish(client: &reqwest::Client, plan: &PublishPlan) -> PublishStats {
    let stats = Arc::new(Mutex::new(PublishStats::default()));
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    if total == 0 || plan.rate <= 0.0 {
        return PublishStats::default();
    }
    let connections = plan.connections.max(1);
    let (jobs, receiver) = mpsc::channel::<u64>(connections);
    let receiver = Arc::new(Mutex::new(receiver));
    let mut senders = Vec::with_capacity(connections);
    for _ in 0..connections {
        let receiver = Arc::clone(&receiver);
        let stats = Arc::clone(&stats);
        let client = client.clone();
        let plan = plan.clone();
        senders.push(tokio::spawn(async move {
            loop {
                let job = receiver.lock().await.recv().await;
                let Some(index) = job else { break };
                let topic = plan
                    .protocol
                    .topic(&plan.topic, (plan.topics > 1).then_some(index % plan.topics.max(1)));
                let data = plan.protocol.payload(now_nanos(), plan.step, plan.message_size);
                let result = plan
                    .protocol
                    .publish(&client, &plan.url, &topic, &plan.token, data)
                    .send()
                    .await;
                let error = match result {
                    // Mercure answers 200 with the id; Nchan 201 (subscribers) or 202 (none);
                    // a durable stream 204 (or 200 to a producer).
                    Ok(response) if response.status().is_success() => {
                        // Read the body so the connection is reused.
                        match response.bytes().await {
                            Ok(_) => None,
                            Err(e) => Some(e.to_string()),
                        }
                    }
                    Ok(response) => Some(format!("HTTP {}", response.status())),
                    Err(e) => Some(e.to_string()),
                };
                let mut stats = stats.lock().await;
                match error {
                    None => stats.ok += 1,
                    Some(error) => {
                        stats.errors += 1;
                        stats.first_error.get_or_insert(error);
                    }
                }
            }
        }));
    }

    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for index in 0..total {
        ticks.tick().await;
        if jobs.try_send(index).is_err() {
            stats.lock().await.behind += 1;
        }
    }
    drop(jobs);
    for sender in senders {
        let _ = sender.await;
    }
    stats.lock().await.clone()
}
