//! The hub benchmark's coordinator.
//!
//! 1. Starts the server (pinned to its CPUs) or takes the URL of a running one; only
//!    loopback targets are accepted.
//! 2. Reads the server's RSS with no subscriber, spreads the subscribers over worker
//!    processes (pinned to the load generator's CPUs), waits until all are connected and
//!    reads the RSS again: the difference over N is the memory of an idle subscriber.
//! 3. For each publish rate, publishes for a step's duration, every update stamped with its
//!    send time and step number, and measures deliveries, publish→receive latency (HDR),
//!    the server's and the load generator's CPU, and errors.
//! 4. Optionally, a connect storm (before the publish steps): one update reaches everyone,
//!    every subscriber drops its stream, more updates are published, then all reconnect at
//!    once with the last event id they saw; measured: how long until all are connected again
//!    and until all have the updates they missed.
//! 5. Stops the workers (and the server it started), waits for stragglers, and returns the
//!    results; [`summary`] renders them as Markdown tables.
//!
//! The hub may be a Mercure hub (Sluice) or Nchan ([`HubProtocol`]); subscribers may share
//! one topic (fan-out) or be spread over many (one subscriber per topic, updates published to
//! each topic in turn).
//!
//! Everything is bounded: connecting has a deadline, steps have a duration, workers exit by
//! themselves after the planned run plus a margin, and children are killed if the
//! coordinator stops early (Ctrl-C included).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Url;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use crate::Error;
use crate::process;
use crate::procfs::{self, ProcSample};
use crate::protocol::HubProtocol;
use crate::publisher::{self, PublishPlan, PublishStats};
use crate::stats::{Aggregate, WorkerReport};
use crate::worker::WorkerConfig;

/// The most subscribers one worker process is given when the number of processes is chosen
/// automatically: well under the 20,000 open files a process may hold.
pub const SUBSCRIBERS_PER_PROCESS: u64 = 9_000;

/// Which server to load.
#[derive(Debug, Clone)]
pub enum ServerTarget {
    /// A running hub at this URL (`http://127.0.0.1:PORT/.well-known/mercure`).
    Url(Url),
    /// Start one: `program args… --listen 127.0.0.1:0 --ready-file FILE` (the port it gets is
    /// read back from FILE), hub at `path`.
    Spawn {
        /// The server binary.
        program: PathBuf,
        /// Its arguments (`serve --store memory …`); `--listen` and `--ready-file` are added.
        args: Vec<String>,
        /// The hub's path on it.
        path: String,
    },
    /// Start a peer: `sh -c command` in a process group of its own, told its port by
    /// [`process::PORT_VAR`]; the hub is at `path` on it. Every process of the group counts
    /// as the server (nginx's master and worker).
    Command {
        /// The shell command (it should `exec` the server).
        command: String,
        /// The hub's path on it (`/` for Nchan).
        path: String,
    },
}

/// A connect storm's settings.
#[derive(Debug, Clone)]
pub struct StormPlan {
    /// Updates published while the subscribers are away (each must be replayed to all).
    pub missed: u32,
    /// How long reconnecting and replaying may take.
    pub deadline: Duration,
}

/// The step number stamped on the update that gives every subscriber a last event id.
const STORM_PRIMER_STEP: u32 = 1_000_000;
/// The step number stamped on the updates published while the subscribers are away.
const STORM_MISSED_STEP: u32 = 1_000_001;

/// CPU pinning with `taskset`.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// CPUs of a server the benchmark starts (a `taskset -c` list).
    pub server_cpus: String,
    /// CPUs of the coordinator and its workers.
    pub loadgen_cpus: String,
}

/// A hub benchmark's settings.
#[derive(Debug, Clone)]
pub struct HubBench {
    /// The server.
    pub server: ServerTarget,
    /// How to subscribe and publish.
    pub protocol: HubProtocol,
    /// The pid of a running server (with [`ServerTarget::Url`]), for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// Other nodes of the same hub (sharing its store): subscribers are spread over the
    /// server and these, worker by worker; updates are published to the server.
    pub other_nodes: Vec<Url>,
    /// The other nodes' pids: their CPU and RSS count as the server's.
    pub other_pids: Vec<u32>,
    /// One more process to watch (the nodes' Redis, say): its CPU is reported per step.
    pub watch_pid: Option<u32>,
    /// This binary, to re-execute as a worker.
    pub worker_program: PathBuf,
    /// The arguments that make it a worker (`bench hub-worker`).
    pub worker_args: Vec<String>,
    /// Subscribers in all.
    pub subscribers: u64,
    /// The topic everyone subscribes and publishes to (with more than one topic: the base of
    /// their names).
    pub topic: String,
    /// Topics: 1 for fan-out; with N > 1, subscriber i takes topic i mod N and update k goes
    /// to topic k mod N.
    pub topics: u64,
    /// A connect storm before the publish steps.
    pub storm: Option<StormPlan>,
    /// Skip the remaining rates once a step saturates the hub: its p99 is over this, fewer
    /// than 99% of its updates were delivered, or more than 1% of its publishes failed or
    /// could not be sent in time.
    pub stop_when_p99_over: Option<Duration>,
    /// Publish rates, one step each (updates/s; 0 = idle).
    pub rates: Vec<f64>,
    /// The duration of each step.
    pub step_duration: Duration,
    /// Bytes of `data` per update.
    pub message_size: usize,
    /// Worker processes (0: one per [`SUBSCRIBERS_PER_PROCESS`]).
    pub processes: usize,
    /// The publisher JWT (needed when a rate is above 0).
    pub publish_token: Option<String>,
    /// A subscriber JWT, if the hub wants one.
    pub subscribe_token: Option<String>,
    /// Concurrent publishing connections.
    pub publish_connections: usize,
    /// Connection attempts in flight at once, per worker.
    pub connect_concurrency: usize,
    /// Pinning, if any.
    pub pinning: Option<Pinning>,
    /// How long to wait after connecting before reading the idle RSS.
    pub settle: Duration,
    /// After each step, wait until no event has arrived for this long…
    pub drain: Duration,
    /// …but no longer than this.
    pub drain_max: Duration,
    /// How long connecting everyone may take.
    pub connect_deadline: Duration,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

impl HubBench {
    /// Defaults: a server at 127.0.0.1:8080, 1,000 subscribers, one idle step of 10 s.
    pub fn new(worker_program: PathBuf, worker_args: Vec<String>) -> Self {
        HubBench {
            server: ServerTarget::Url(
                Url::parse("http://127.0.0.1:8080/.well-known/mercure").expect("a valid URL"),
            ),
            protocol: HubProtocol::Mercure,
            server_pid: None,
            other_nodes: Vec::new(),
            other_pids: Vec::new(),
            watch_pid: None,
            worker_program,
            worker_args,
            subscribers: 1_000,
            topic: "https://example.com/bench".into(),
            topics: 1,
            storm: None,
            stop_when_p99_over: None,
            rates: vec![0.0],
            step_duration: Duration::from_secs(10),
            message_size: 100,
            processes: 0,
            publish_token: None,
            subscribe_token: None,
            publish_connections: 4,
            connect_concurrency: 256,
            pinning: None,
            settle: Duration::from_secs(3),
            drain: Duration::from_secs(1),
            drain_max: Duration::from_secs(30),
            connect_deadline: Duration::from_secs(120),
            progress: true,
        }
    }

    /// Runs the benchmark; Ctrl-C stops it (children are killed) with [`Error::Interrupted`].
    pub async fn run(&self) -> Result<HubResults, Error> {
        self.validate()?;
        tokio::select! {
            result = self.run_inner() => result,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        if self.rates.is_empty() || self.rates.iter().any(|r| !r.is_finite() || *r < 0.0) {
            return Err(Error::Config("rates must be zero or more updates per second".into()));
        }
        let publishes = self.rates.iter().any(|&r| r > 0.0) || self.storm.is_some();
        if publishes && self.protocol.needs_token() && self.publish_token.is_none() {
            return Err(Error::Config("publishing needs a token (--token or --jwt-secret)".into()));
        }
        if let ServerTarget::Url(url) = &self.server {
            loopback_addr(url)?;
        }
        if self.topics > 1 && !self.other_nodes.is_empty() {
            return Err(Error::Config("many topics over several nodes is not supported".into()));
        }
        self.other_nodes.iter().try_for_each(|url| loopback_addr(url).map(drop))?;
        Ok(())
    }

    async fn run_inner(&self) -> Result<HubResults, Error> {
        let machine = Machine::read();
        let open_files = crate::raise_open_file_limit();
        if let Some(pinning) = &self.pinning {
            process::pin_self(&pinning.loadgen_cpus).await?;
        }

        // The server.
        let mut server_child = None;
        let mut server_group = None;
        let cpus = self.pinning.as_ref().map(|p| p.server_cpus.as_str());
        let (url, server_pid) = match &self.server {
            ServerTarget::Url(url) => (url.clone(), self.server_pid),
            ServerTarget::Spawn { program, args, path } => {
                let (child, url) = process::spawn_server(program, args, cpus, path).await?;
                let pid = child.id();
                server_child = Some(child);
                (url, pid)
            }
            ServerTarget::Command { command, path } => {
                let group =
                    process::spawn_command(command, cpus, &[], None, None, Duration::from_secs(30))
                        .await?;
                let url = Url::parse(&format!("http://{}{path}", group.addr))
                    .map_err(|e| Error::Config(format!("bad path {path:?}: {e}")))?;
                let pid = group.pgid;
                server_group = Some(group);
                (url, Some(pid))
            }
        };
        let nodes: Vec<Url> =
            std::iter::once(url.clone()).chain(self.other_nodes.iter().cloned()).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let group_pids = server_group.as_ref().map(process::Group::pids);
        let server_pids: Vec<u32> = match &group_pids {
            Some(pids) => pids.clone(),
            None => server_pid.into_iter().chain(self.other_pids.iter().copied()).collect(),
        };
        let server_cpus = server_pid.and_then(procfs::allowed_cpus);
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

        let client = publisher::client(self.publish_connections)?;
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
        if let Some(mut server) = server_child.take() {
            let _ = server.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), server.wait()).await;
        }
        if let Some(group) = server_group.take() {
            group.stop(Duration::from_secs(5)).await;
        }
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
            first_error: totals.first_error,
        })
    }

    /// The connect storm: see the module's documentation.
    async fn storm(
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

    async fn spawn_worker(
        &self,
        index: usize,
        config: &WorkerConfig,
        aggregate: Arc<Mutex<Aggregate>>,
    ) -> Result<Worker, Error> {
        let mut command = process::pinned(
            &self.worker_program,
            self.pinning.as_ref().map(|p| p.loadgen_cpus.as_str()),
        );
        command
            .args(&self.worker_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let mut stdin = child.stdin.take().ok_or_else(|| Error::Worker("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| Error::Worker("no stdout".into()))?;
        let mut line = serde_json::to_vec(config).map_err(|e| Error::Worker(e.to_string()))?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        stdin.flush().await?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<WorkerReport>(&line) {
                    Ok(report) => aggregate.lock().unwrap().apply(index, report),
                    Err(error) => eprintln!("worker {index}: unreadable report: {error}"),
                }
            }
        });
        Ok(Worker { child, stdin: Some(stdin) })
    }
}

/// A worker process and the pipe that stops it.
#[derive(Debug)]
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Worker {
    async fn stop(&mut self) {
        self.send("stop").await;
        self.stdin = None;
    }

    /// Writes a command line to the worker's stdin.
    async fn send(&mut self, command: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(format!("{command}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }
}

/// The summed sample of the server processes (one node, or every node of a hub).
/// Samples the processes, prints progress.
struct Monitor {
    server_pids: Vec<u32>,
    watch_pid: Option<u32>,
    loadgen_pids: Vec<u32>,
    aggregate: Arc<Mutex<Aggregate>>,
    print: bool,
    started: Instant,
    last_print: Option<Snapshot>,
}

/// The counters at one moment.
#[derive(Debug, Clone)]
struct Snapshot {
    at: Instant,
    server: Option<ProcSample>,
    watched: Option<ProcSample>,
    loadgen: Option<ProcSample>,
    totals: WorkerReport,
}

impl Monitor {
    fn new(
        server_pids: Vec<u32>,
        watch_pid: Option<u32>,
        workers: &[Worker],
        aggregate: Arc<Mutex<Aggregate>>,
        print: bool,
    ) -> Self {
        let mut loadgen_pids = vec![std::process::id()];
        loadgen_pids.extend(workers.iter().filter_map(|w| w.child.id()));
        Monitor {
            server_pids,
            watch_pid,
            loadgen_pids,
            aggregate,
            print,
            started: Instant::now(),
            last_print: None,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let loadgen: Vec<ProcSample> =
            self.loadgen_pids.iter().filter_map(|&pid| ProcSample::read(pid)).collect();
        Snapshot {
            at: Instant::now(),
            server: procfs::sample_all(&self.server_pids),
            watched: self.watch_pid.and_then(ProcSample::read),
            loadgen: procfs::sum(&loadgen),
            totals: self.aggregate.lock().unwrap().totals(),
        }
    }

    async fn sleep(&mut self, duration: Duration, phase: &str, step: Option<u32>) {
        let end = Instant::now() + duration;
        while Instant::now() < end {
            let left = end.saturating_duration_since(Instant::now());
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
            self.tick(phase, step);
        }
    }

    /// Waits until `done` or `deadline`, printing progress; returns `done()`.
    async fn wait_until(
        &mut self,
        phase: &str,
        deadline: Instant,
        done: impl Fn() -> bool,
    ) -> bool {
        while !done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.tick(phase, None);
        }
        done()
    }

    /// Waits until no event has arrived for `quiet`, or `max` has passed.
    async fn quiesce(&mut self, quiet: Duration, max: Duration) {
        let end = Instant::now() + max;
        let mut received = self.aggregate.lock().unwrap().totals().received;
        let mut since = Instant::now();
        while Instant::now() < end && since.elapsed() < quiet {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.tick("drain", None);
            let now = self.aggregate.lock().unwrap().totals().received;
            if now != received {
                received = now;
                since = Instant::now();
            }
        }
    }

    /// Prints a line if a second has passed since the last one.
    fn tick(&mut self, phase: &str, step: Option<u32>) {
        if !self.print {
            return;
        }
        let now = self.snapshot();
        let Some(last) = &self.last_print else {
            self.last_print = Some(now);
            return;
        };
        let seconds = now.at.duration_since(last.at).as_secs_f64();
        if seconds < 1.0 {
            return;
        }
        let deliveries =
            (now.totals.received - last.totals.received.min(now.totals.received)) as f64 / seconds;
        let p99 = step
            .and_then(|s| {
                self.aggregate.lock().unwrap().step(s).map(|(_, l)| l.quantile_micros(0.99))
            })
            .map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1e3));
        let cpu = |now: &Option<ProcSample>, last: &Option<ProcSample>| match (now, last) {
            (Some(now), Some(last)) => format!("{:.0}%", now.cpu_percent_since(last)),
            _ => "-".to_owned(),
        };
        let rss =
            now.server.map_or("-".to_owned(), |s| format!("{:.1} MiB", s.rss_kib as f64 / 1024.0));
        let t = &now.totals;
        eprintln!(
            "[{:>5.1}s] {phase:<8} connected {:>6} (pending {}) deliveries/s {:>9.0} p99 {} \
             errors {}/{} | server cpu {} rss {} | loadgen cpu {}",
            self.started.elapsed().as_secs_f64(),
            t.connected,
            t.pending,
            deliveries,
            p99,
            t.connect_errors,
            t.disconnects,
            cpu(&now.server, &last.server),
            rss,
            cpu(&now.loadgen, &last.loadgen),
        );
        self.last_print = Some(now);
    }
}

/// What the machine is.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPUs online.
    pub cpus: usize,
    /// The CPU model.
    pub cpu_model: String,
    /// `/proc/loadavg` when the run started.
    pub loadavg_start: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: cpuinfo.lines().filter(|l| l.starts_with("processor")).count(),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(String::new, |(_, m)| m.trim().to_owned()),
            loadavg_start: read_loadavg(),
        }
    }
}

fn read_loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned()
}

/// How connecting went.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectResult {
    /// Subscribers connected.
    pub connected: u64,
    /// From starting the workers to the last connection.
    pub seconds: f64,
    /// Connections per second.
    pub per_second: f64,
    /// Failed attempts (retries included).
    pub errors: u64,
    /// Subscribers that never connected.
    pub gave_up: u64,
    /// Connections the kernel dropped meanwhile because the server's accept queue was full
    /// (system-wide `ListenOverflows`); each costs its client a SYN retransmission, 1 s.
    pub listen_overflows: Option<u64>,
}

/// The server's memory with idle subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Subscribers connected when the RSS was read.
    pub subscribers: u64,
    /// RSS before any subscriber connected, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// RSS with every subscriber connected and idle, KiB.
    pub server_rss_idle_kib: Option<u64>,
    /// (idle − before) / subscribers, bytes.
    pub bytes_per_subscriber: Option<f64>,
}

/// How a connect storm went.
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// Subscribers connected before the storm (all of them left, then came back).
    pub subscribers: u64,
    /// Subscribers connected again.
    pub reconnected: u64,
    /// Whether all were connected again before the deadline.
    pub all_reconnected: bool,
    /// From the reconnect order to the last subscriber connected again, seconds.
    pub reconnect_seconds: f64,
    /// Reconnections per second over that time.
    pub reconnects_per_second: f64,
    /// Updates published while the subscribers were away.
    pub missed_published: u64,
    /// Replays expected: those updates × the subscribers of their topics.
    pub replay_expected: u64,
    /// Replayed updates received (with `Last-Event-ID`).
    pub replayed: u64,
    /// From the reconnect order until every replay had arrived, seconds (none: not all did
    /// before the deadline).
    pub replay_seconds: Option<f64>,
    /// Reconnect order → replayed update received, median, ms.
    pub replay_p50_ms: f64,
    /// 99th percentile, ms.
    pub replay_p99_ms: f64,
    /// Largest, ms.
    pub replay_max_ms: f64,
    /// Failed connection attempts during the storm.
    pub connect_errors: u64,
    /// Subscribers that gave up.
    pub gave_up: u64,
    /// Connections the kernel dropped for a full accept queue during the storm.
    pub listen_overflows: Option<u64>,
}

/// One publish rate's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    /// Target publish rate, updates/s.
    pub rate: f64,
    /// Updates the hub accepted.
    pub published: u64,
    /// Publishes that failed.
    pub publish_errors: u64,
    /// Publishes skipped because every publisher connection was busy.
    pub publish_behind: u64,
    /// Deliveries expected: published × the subscribers of a topic.
    pub expected: u64,
    /// Deliveries of this step's updates (counted until the end of the run).
    pub delivered: u64,
    /// `delivered` over the step's duration.
    pub deliveries_per_second: f64,
    /// Events received during the step's window, per second (whatever step they were from).
    pub received_per_second: f64,
    /// Publish→receive latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// 99.9th percentile, ms.
    pub p999_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
    /// Server CPU over the step, % of one core.
    pub server_cpu_percent: Option<f64>,
    /// Load generator CPU (coordinator + workers) over the step, % of one core.
    pub loadgen_cpu_percent: Option<f64>,
    /// The watched process's CPU (the nodes' Redis) over the step, % of one core.
    pub watched_cpu_percent: Option<f64>,
    /// Server RSS at the end of the step, KiB.
    pub server_rss_kib: Option<u64>,
    /// The server's write system calls per second over the step (`/proc/<pid>/io`).
    pub server_writes_per_second: Option<f64>,
    /// Streams that ended during the step.
    pub disconnects: u64,
    /// The first publish error, as an example.
    pub first_publish_error: Option<String>,
}

impl StepResult {
    fn measured(rate: f64, published: &PublishStats, before: &Snapshot, after: &Snapshot) -> Self {
        let seconds = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
        let cpu = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => Some(a.cpu_percent_since(b)),
            _ => None,
        };
        StepResult {
            rate,
            published: published.ok,
            publish_errors: published.errors,
            publish_behind: published.behind,
            expected: 0,
            delivered: 0,
            deliveries_per_second: 0.0,
            received_per_second: after.totals.received.saturating_sub(before.totals.received)
                as f64
                / seconds,
            p50_ms: 0.0,
            p99_ms: 0.0,
            p999_ms: 0.0,
            max_ms: 0.0,
            server_cpu_percent: cpu(&after.server, &before.server),
            loadgen_cpu_percent: cpu(&after.loadgen, &before.loadgen),
            watched_cpu_percent: cpu(&after.watched, &before.watched),
            server_rss_kib: after.server.map(|s| s.rss_kib),
            server_writes_per_second: match (after.server, before.server) {
                (Some(a), Some(b)) => a
                    .write_syscalls
                    .zip(b.write_syscalls)
                    .map(|(a, b)| a.saturating_sub(b) as f64 / seconds),
                _ => None,
            },
            disconnects: after.totals.disconnects.saturating_sub(before.totals.disconnects),
            first_publish_error: published.first_error.clone(),
        }
    }

    fn finish(
        &mut self,
        deliveries: Option<&(u64, crate::stats::Latency)>,
        subscribers: u64,
        duration: Duration,
    ) {
        self.expected = self.published * subscribers;
        if let Some((count, latency)) = deliveries {
            let ms = |q: f64| latency.quantile_micros(q) as f64 / 1e3;
            self.delivered = *count;
            self.deliveries_per_second = *count as f64 / duration.as_secs_f64().max(1e-9);
            self.p50_ms = ms(0.5);
            self.p99_ms = ms(0.99);
            self.p999_ms = ms(0.999);
            self.max_ms = latency.max_micros() as f64 / 1e3;
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct HubResults {
    /// The machine.
    pub machine: Machine,
    /// `/proc/loadavg` at the end.
    pub loadavg_end: String,
    /// The hub URL.
    pub url: String,
    /// `mercure` or `nchan`.
    pub protocol: String,
    /// Nodes the subscribers were spread over (1 for a single server).
    pub nodes: usize,
    /// The load generator's open-file limit.
    pub open_file_limit: u64,
    /// Subscribers asked for.
    pub subscribers: u64,
    /// The topic (the base of their names with several).
    pub topic: String,
    /// Topics the subscribers are spread over.
    pub topics: u64,
    /// Bytes of data per update.
    pub message_size: usize,
    /// Seconds per step.
    pub step_seconds: f64,
    /// Worker processes.
    pub processes: usize,
    /// CPUs the server may run on.
    pub server_cpus: Option<String>,
    /// CPUs the coordinator may run on.
    pub loadgen_cpus: Option<String>,
    /// Connecting.
    pub connect: ConnectResult,
    /// Idle memory.
    pub idle: IdleResult,
    /// The connect storm, if one was run.
    pub storm: Option<StormResult>,
    /// One per rate run.
    pub steps: Vec<StepResult>,
    /// The rate that saturated the hub, after which the higher ones were skipped.
    pub saturated_at: Option<f64>,
    /// Streams that ended before the run did.
    pub disconnects: u64,
    /// The first subscriber error, as an example.
    pub first_error: Option<String>,
}

/// The results as Markdown: a header, then a table of the steps.
pub fn summary(results: &HubResults) -> String {
    let mut out = String::new();
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let mib = |kib: Option<u64>| opt(kib.map(|k| k as f64 / 1024.0), 1);
    let topics = match results.topics {
        1 => "one topic".to_owned(),
        n => format!("{n} topics"),
    };
    out.push_str(&format!(
        "{} ({}): {} subscribers on {topics} over {} node(s), {}-byte messages, {} worker \
         process(es); server CPUs {}, load generator CPUs {}; {} CPUs ({}), load average at \
         start {}\n\n",
        results.url,
        results.protocol,
        results.subscribers,
        results.nodes,
        results.message_size,
        results.processes,
        results.server_cpus.as_deref().unwrap_or("?"),
        results.loadgen_cpus.as_deref().unwrap_or("?"),
        results.machine.cpus,
        results.machine.cpu_model,
        results.machine.loadavg_start,
    ));
    let c = &results.connect;
    out.push_str(&format!(
        "connect: {} connected in {:.2} s ({:.0}/s), {} failed attempts, {} gave up, \
         {} accept-queue overflows\n",
        c.connected,
        c.seconds,
        c.per_second,
        c.errors,
        c.gave_up,
        c.listen_overflows.map_or("?".to_owned(), |n| n.to_string()),
    ));
    let i = &results.idle;
    out.push_str(&format!(
        "idle: server RSS {} MiB before, {} MiB with {} idle subscribers: {} bytes per subscriber\n\n",
        mib(i.server_rss_before_kib),
        mib(i.server_rss_idle_kib),
        i.subscribers,
        opt(i.bytes_per_subscriber, 0),
    ));
    if let Some(s) = &results.storm {
        out.push_str(&format!(
            "storm: {} of {} reconnected at once in {:.2} s ({:.0}/s), {} failed attempts, {} \
             gave up, {} accept-queue overflows; {} of {} missed updates replayed{} (reconnect \
             order → replayed update p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms)\n\n",
            s.reconnected,
            s.subscribers,
            s.reconnect_seconds,
            s.reconnects_per_second,
            s.connect_errors,
            s.gave_up,
            s.listen_overflows.map_or("?".to_owned(), |n| n.to_string()),
            s.replayed,
            s.replay_expected,
            s.replay_seconds.map_or(String::new(), |t| format!(", all within {t:.2} s")),
            s.replay_p50_ms,
            s.replay_p99_ms,
            s.replay_max_ms,
        ));
    }
    out.push_str(
        "| publish/s | published | deliveries/s | delivered | p50 ms | p99 ms | p99.9 ms | max ms \
         | server CPU | loadgen CPU | watched CPU | server writes/s | events/write | server RSS MiB \
         | errors |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for s in &results.steps {
        let delivered = if s.expected > 0 {
            format!("{:.2}%", s.delivered as f64 * 100.0 / s.expected as f64)
        } else {
            "-".to_owned()
        };
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {}% | {}% | {}% | {} | {} | {} | {} |\n",
            s.rate,
            s.published,
            s.deliveries_per_second,
            delivered,
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            opt(s.server_cpu_percent, 0),
            opt(s.loadgen_cpu_percent, 0),
            opt(s.watched_cpu_percent, 0),
            opt(s.server_writes_per_second, 0),
            opt(
                s.server_writes_per_second
                    .filter(|w| *w > 0.0)
                    .map(|w| s.received_per_second / w),
                1
            ),
            mib(s.server_rss_kib),
            s.publish_errors + s.publish_behind + s.disconnects,
        ));
    }
    if let Some(rate) = results.saturated_at {
        out.push_str(&format!("\nsaturated at {rate} updates/s: higher rates skipped"));
    }
    out.push_str(&format!("\nstreams ended early: {}", results.disconnects));
    if let Some(error) = &results.first_error {
        out.push_str(&format!(" (first: {error})"));
    }
    out.push('\n');
    out
}

/// The socket address of a loopback `http` URL; anything else is refused.
fn loopback_addr(url: &Url) -> Result<SocketAddr, Error> {
    if url.scheme() != "http" {
        return Err(Error::Config(format!("only http:// URLs are benchmarked, not {url}")));
    }
    let host = url.host_str().unwrap_or_default();
    let ip = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) if host == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Err(_) => {
            return Err(Error::Config(format!("{url}: the target must be a loopback address")));
        }
    };
    if !ip.is_loopback() {
        return Err(Error::Config(format!("{url}: the target must be a loopback address")));
    }
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        let url = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            loopback_addr(&url("http://127.0.0.1:9/.well-known/mercure")).unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert!(loopback_addr(&url("http://localhost/x")).is_ok());
        assert!(loopback_addr(&url("http://[::1]:8080/x")).is_ok());
        assert!(loopback_addr(&url("http://10.0.0.1/x")).is_err());
        assert!(loopback_addr(&url("http://example.com/x")).is_err());
        assert!(loopback_addr(&url("https://127.0.0.1/x")).is_err());
    }
}
