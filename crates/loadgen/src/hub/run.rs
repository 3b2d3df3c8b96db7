//! A hub benchmark from start to stop: the server started (or found), the subscribers spread
//! over worker processes and connected, the idle memory read, the storm and the publish steps
//! run, then everything stopped and the figures gathered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;

use super::config::{HubBench, SUBSCRIBERS_PER_PROCESS, loopback_addr};
use super::monitor::Monitor;
use super::results::{ConnectResult, HubResults, IdleResult, Machine, StepResult, read_loadavg};
use super::server::prepare;
use crate::Error;
use crate::process;
use crate::procfs;
use crate::publisher::{self, PublishPlan, PublishStats};
use crate::stats::Aggregate;
use crate::worker::WorkerConfig;

impl HubBench {
    /// Runs the benchmark; Ctrl-C stops it (children are killed) with [`Error::Interrupted`].
    pub async fn run(&self) -> Result<HubResults, Error> {
        self.validate()?;
        tokio::select! {
            result = self.run_inner() => result,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        }
    }

    async fn run_inner(&self) -> Result<HubResults, Error> {
        let machine = Machine::read();
        let open_files = crate::raise_open_file_limit();
        if let Some(pinning) = &self.pinning {
            process::pin_self(&pinning.loadgen_cpus).await?;
        }

        // The server.
        let cpus = self.pinning.as_ref().map(|p| p.server_cpus.as_str());
        let server = self.server.start(self.server_pid, cpus).await?;
        let url = server.url.clone();
        let nodes: Vec<Url> =
            std::iter::once(url.clone()).chain(self.other_nodes.iter().cloned()).collect();
        let server_pids = server.pids(&self.other_pids);
        let server_cpus = server.pid.and_then(procfs::allowed_cpus);
        let client = publisher::client(self.publish_connections)?;
        prepare(self.protocol, &client, &url, &self.protocol.topic(&self.topic, None)).await?;
        let rss_before = procfs::sample_all(&server_pids).map(|s| s.rss_kib);

        // The workers.
        let processes = match self.processes {
            0 => self.subscribers.div_ceil(SUBSCRIBERS_PER_PROCESS).max(1) as usize,
            n => n,
        };
        let planned = self.settle
            + self.drain_max * self.rates.len() as u32
            + self.connect_deadline
            + self.step_duration * self.rates.len() as u32
            + self.storm.as_ref().map_or(Duration::ZERO, |s| s.deadline + Duration::from_secs(60));
        let overflows_before = procfs::tcp_ext_counter("ListenOverflows");
        let started_ns = crate::now_nanos();
        let connect_started = Instant::now();
        let mut workers = Vec::with_capacity(processes);
        let aggregate = Arc::new(Mutex::new(Aggregate::new(processes)));
        let mut first_topic = 0;
        for index in 0..processes {
            let share = self.subscribers / processes as u64
                + u64::from((index as u64) < self.subscribers % processes as u64);
            let node = &nodes[index % nodes.len()];
            let addr = loopback_addr(node)?;
            let path_and_query = match self.topics {
                0 | 1 => self.protocol.subscribe_path(node, &self.topic, None),
                _ => self.protocol.subscribe_prefix(node, &self.topic),
            };
            let config = WorkerConfig {
                addr,
                host: addr.to_string(),
                path_and_query,
                topics: self.topics,
                first_topic,
                storm_concurrency: 0,
                resume: true,
                protocol: self.protocol,
                token: self.subscribe_token.clone(),
                subscribers: share,
                connect_concurrency: self.connect_concurrency,
                connect_timeout_ms: 10_000,
                connect_attempts: 5,
                report_interval_ms: 250,
                max_seconds: planned.as_secs() + 60,
            };
            workers.push(self.spawn_worker(index, &config, Arc::clone(&aggregate)).await?);
            first_topic += share;
        }
        let mut monitor = Monitor::new(
            server_pids.clone(),
            self.watch_pid,
            &workers,
            Arc::clone(&aggregate),
            self.progress,
        );

        // Connect everyone.
        let deadline = connect_started + self.connect_deadline;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            monitor.tick("connect", None);
            let totals = aggregate.lock().unwrap().totals();
            let all_heard = aggregate.lock().unwrap().heard_from_all();
            if all_heard && totals.pending == 0 {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Worker(format!(
                    "{} of {} subscribers still connecting after {:?}",
                    totals.pending, self.subscribers, self.connect_deadline
                )));
            }
            if workers.iter_mut().any(|w| matches!(w.child.try_wait(), Ok(Some(_)))) {
                return Err(Error::Worker("a worker exited while connecting".into()));
            }
        }
        let totals = aggregate.lock().unwrap().totals();
        let connect_seconds = if totals.last_connected_ns > started_ns {
            (totals.last_connected_ns - started_ns) as f64 / 1e9
        } else {
            connect_started.elapsed().as_secs_f64()
        };
        let connect = ConnectResult {
            connected: totals.connected,
            seconds: connect_seconds,
            per_second: totals.connected as f64 / connect_seconds.max(1e-9),
            errors: totals.connect_errors,
            gave_up: totals.gave_up,
            listen_overflows: procfs::tcp_ext_counter("ListenOverflows")
                .zip(overflows_before)
                .map(|(after, before)| after.saturating_sub(before)),
        };
        monitor.sleep(self.settle, "settle", None).await;
        let idle_totals = aggregate.lock().unwrap().totals();
        let rss_idle = procfs::sample_all(&server_pids).map(|s| s.rss_kib);
        let idle = IdleResult {
            subscribers: idle_totals.connected,
            server_rss_before_kib: rss_before,
            server_rss_idle_kib: rss_idle,
            bytes_per_subscriber: match (rss_before, rss_idle) {
                (Some(before), Some(idle)) if idle_totals.connected > 0 => {
                    Some((idle as f64 - before as f64) * 1024.0 / idle_totals.connected as f64)
                }
                _ => None,
            },
        };

        let storm = match &self.storm {
            Some(plan) => {
                Some(self.storm(plan, &client, &url, &mut workers, &aggregate, &mut monitor).await?)
            }
            None => None,
        };

        // The publish steps.
        let mut steps = Vec::with_capacity(self.rates.len());
        let mut saturated_at = None;
        for (index, &rate) in self.rates.iter().enumerate() {
            let step = index as u32;
            let before = monitor.snapshot();
            let published = if rate > 0.0 {
                let plan = PublishPlan {
                    url: url.clone(),
                    protocol: self.protocol,
                    topic: self.topic.clone(),
                    topics: self.topics,
                    token: self.publish_token.clone().unwrap_or_default(),
                    rate,
                    duration: self.step_duration,
                    message_size: self.message_size,
                    step,
                    connections: self.publish_connections,
                };
                let client = client.clone();
                let task = tokio::spawn(async move { publisher::publish(&client, &plan).await });
                let label = format!("{rate}/s");
                while !task.is_finished() {
                    monitor.sleep(Duration::from_millis(250), &label, Some(step)).await;
                }
                task.await.map_err(|e| Error::Worker(format!("publisher: {e}")))?
            } else {
                monitor.sleep(self.step_duration, "idle", Some(step)).await;
                PublishStats::default()
            };
            let after = monitor.snapshot();
            steps.push(StepResult::measured(rate, &published, &before, &after));
            // Let a backlog drain so the next step starts from an idle server.
            monitor.quiesce(self.drain, self.drain_max).await;
            if let Some(limit) = self.stop_when_p99_over
                && rate > 0.0
            {
                let subscribers = aggregate.lock().unwrap().totals().connected;
                let per_update = subscribers / self.topics.max(1);
                let (delivered, p99) = aggregate
                    .lock()
                    .unwrap()
                    .step(step)
                    .map_or((0, 0), |(count, latency)| (*count, latency.quantile_micros(0.99)));
                let planned = (rate * self.step_duration.as_secs_f64()).round().max(1.0);
                let failed = (published.errors + published.behind) as f64;
                let expected = published.ok * per_update;
                if p99 as f64 > limit.as_micros() as f64
                    || (delivered as f64) < 0.99 * expected as f64
                    || failed > 0.01 * planned
                {
                    if self.progress {
                        eprintln!(
                            "saturated at {rate}/s (p99 {:.0} ms, {delivered} of {expected} \
                             delivered, {failed} publishes failed or late): higher rates skipped",
                            p99 as f64 / 1e3
                        );
                    }
                    saturated_at = Some(rate);
                    break;
                }
            }
        }

        // Stop the workers; collect their last reports.
        for worker in &mut workers {
            worker.stop().await;
        }
        let stop_deadline = Instant::now() + Duration::from_secs(10);
        while !aggregate.lock().unwrap().totals().last && Instant::now() < stop_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for worker in &mut workers {
            let _ = tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await;
        }
        let aggregate = aggregate.lock().unwrap().clone();
        let per_update = connect.connected / self.topics.max(1);
        for (index, step) in steps.iter_mut().enumerate() {
            step.finish(aggregate.step(index as u32), per_update, self.step_duration);
        }
        server.stop().await;
        let totals = aggregate.totals();
        Ok(HubResults {
            machine,
            loadavg_end: read_loadavg(),
            url: url.to_string(),
            protocol: self.protocol.name().to_owned(),
            nodes: nodes.len(),
            open_file_limit: open_files,
            subscribers: self.subscribers,
            topic: self.topic.clone(),
            topics: self.topics.max(1),
            message_size: self.message_size,
            step_seconds: self.step_duration.as_secs_f64(),
            processes,
            server_cpus,
            loadgen_cpus: procfs::allowed_cpus(std::process::id()),
            connect,
            idle,
            storm,
            steps,
            saturated_at,
            disconnects: totals.disconnects,
            resumed: totals.resumed,
            first_error: totals.first_error,
        })
    }
}
