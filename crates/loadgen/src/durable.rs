//! `sluice bench durable`: a Durable Streams server (Sluice's `/v1/stream/`, or the protocol's
//! Node reference server) under three loads, each against a fresh server when the benchmark
//! starts it:
//!
//! 1. **Appends/s.** W writers, each on a keep-alive connection of its own (raw HTTP/1.1, so
//!    that the client costs little beside the server), append one JSON message of
//!    `message_size` bytes at a time to one fresh stream, the next as soon as the last is
//!    answered, for a warm-up and then the measured time; with or without idempotent producer
//!    headers (writer i is producer `bench-i`, epoch 0, sequence 0, 1, 2, …). Measured:
//!    appends/s, each append's round trip, errors, the server's CPU and RSS.
//! 2. **Read-to-live latency.** N readers tail one stream over SSE from `offset=now`, and one
//!    writer appends at set rates, each message stamped with its send time; every reader
//!    records append → receipt. This is the hub benchmark ([`HubBench`]) speaking
//!    [`HubProtocol::Durable`]: the same worker processes of raw readers, the same paced
//!    writer, the same per-step histograms, CPU and delivered fraction.
//! 3. **Memory per idle reader.** The server's RSS before and after N readers connect (and a
//!    few seconds of settling), over N: the hub benchmark with no writes.
//!
//! ```no_run
//! use sluice_loadgen::durable::{DurableBench, summary};
//! use sluice_loadgen::hub::ServerTarget;
//!
//! # async fn run() -> Result<(), sluice_loadgen::Error> {
//! let bench = DurableBench {
//!     server: ServerTarget::Url("http://127.0.0.1:8080/v1/stream".parse().unwrap()),
//!     writers: vec![1, 16],
//!     ..DurableBench::new(std::env::current_exe()?, vec!["bench".into(), "hub-worker".into()])
//! };
//! println!("{}", summary(&bench.run().await?));
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Url;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::chunked::{Dechunker, Progress};
use crate::hub::{self, HubBench, HubResults, Machine, Pinning, RunningServer, ServerTarget};
use crate::procfs::{self, ProcSample};
use crate::protocol::{HubProtocol, stream_url};
use crate::stamp::stamped_json;
use crate::stats::Latency;
use crate::{Error, now_nanos, process};

/// The largest response head a writer accepts.
const MAX_HEAD: usize = 16 * 1024;

/// A Durable Streams benchmark's settings. A part runs when it has something to do: appends
/// with writers, the live part with readers and rates, memory with idle reader counts.
#[derive(Debug, Clone)]
pub struct DurableBench {
    /// The server; its URL (given, or the spawned server's path) is the streams' root, e.g.
    /// `http://127.0.0.1:8080/v1/stream`. A spawned one is started afresh for every part.
    pub server: ServerTarget,
    /// The pid of a running server (with [`ServerTarget::Url`]), for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// This binary, to re-execute as a reader worker.
    pub worker_program: PathBuf,
    /// The arguments that make it a worker (`bench hub-worker`).
    pub worker_args: Vec<String>,
    /// Pinning, if any.
    pub pinning: Option<Pinning>,
    /// The start of the names of the streams made (each part makes its own).
    pub stream: String,
    /// Bytes of each JSON message.
    pub message_size: usize,
    /// Concurrent writers, one appends run each (and each producer setting).
    pub writers: Vec<usize>,
    /// Whether the writers are idempotent producers: one appends run each.
    pub producers: Vec<bool>,
    /// How long appends are measured.
    pub append_duration: Duration,
    /// How long writers append before the measurement starts.
    pub warmup: Duration,
    /// Readers of the live part.
    pub readers: u64,
    /// Append rates of the live part (messages/s), one step each.
    pub rates: Vec<f64>,
    /// The duration of each live step.
    pub step_duration: Duration,
    /// Idle reader counts, one memory run each.
    pub idle: Vec<u64>,
    /// How long readers sit connected before the idle RSS is read.
    pub settle: Duration,
    /// Print a progress line every second on stderr.
    pub progress: bool,
}

impl DurableBench {
    /// Defaults: the streams of a server at 127.0.0.1:8080, 1 and 16 writers without and with
    /// producer headers for 10 s each, 1,000 readers at 10 and 100 messages/s, 1,000 idle.
    pub fn new(worker_program: PathBuf, worker_args: Vec<String>) -> Self {
        DurableBench {
            server: ServerTarget::Url(
                Url::parse("http://127.0.0.1:8080/v1/stream").expect("a valid URL"),
            ),
            server_pid: None,
            worker_program,
            worker_args,
            pinning: None,
            stream: "bench".into(),
            message_size: 100,
            writers: vec![1, 16],
            producers: vec![false, true],
            append_duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            readers: 1_000,
            rates: vec![10.0, 100.0],
            step_duration: Duration::from_secs(10),
            idle: vec![1_000],
            settle: Duration::from_secs(3),
            progress: true,
        }
    }

    /// Runs every part; Ctrl-C stops it (servers it started are killed) with
    /// [`Error::Interrupted`].
    pub async fn run(&self) -> Result<DurableResults, Error> {
        if self.writers.contains(&0) || self.idle.contains(&0) {
            return Err(Error::Config("writer and idle reader counts start at 1".into()));
        }
        if let ServerTarget::Url(url) = &self.server {
            hub::loopback_addr(url)?;
        }
        tokio::select! {
            result = self.run_inner() => result,
            _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
        }
    }

    async fn run_inner(&self) -> Result<DurableResults, Error> {
        let machine = Machine::read();
        crate::raise_open_file_limit();
        if let Some(pinning) = &self.pinning {
            process::pin_self(&pinning.loadgen_cpus).await?;
        }
        // Stream names of their own on a server that may have run this before.
        let run = format!("{}-{:x}", self.stream, now_nanos());
        let cpus = self.pinning.as_ref().map(|p| p.server_cpus.as_str());
        let mut appends = Vec::new();
        for &writers in &self.writers {
            for &producers in &self.producers {
                let server = self.server.start(self.server_pid, cpus).await?;
                let kind = if producers { "producers" } else { "plain" };
                let name = format!("{run}-appends-{writers}-{kind}");
                let result = self.appends(&server, &name, writers, producers).await;
                server.stop().await;
                appends.push(result?);
            }
        }
        let live = if self.readers > 0 && !self.rates.is_empty() {
            let topic = format!("{run}-live");
            let rates = self.rates.clone();
            Some(self.readers(self.readers, rates, self.step_duration, topic).run().await?)
        } else {
            None
        };
        let mut idle = Vec::with_capacity(self.idle.len());
        for &readers in &self.idle {
            let topic = format!("{run}-idle-{readers}");
            // As the hub benchmark's idle runs: no writes, a short step after the settling.
            let bench = self.readers(readers, vec![0.0], Duration::from_secs(2), topic);
            idle.push(bench.run().await?);
        }
        Ok(DurableResults {
            machine,
            loadavg_end: hub::read_loadavg(),
            server: match &self.server {
                ServerTarget::Url(url) => url.to_string(),
                ServerTarget::Spawn { program, args, path } => {
                    format!("{} {} (at {path})", program.display(), args.join(" "))
                }
                ServerTarget::Command { command, path } => format!("{command} (at {path})"),
            },
            message_size: self.message_size,
            appends,
            live,
            idle,
        })
    }

    /// The hub benchmark for `readers` readers of one stream, written to at `rates`.
    fn readers(&self, readers: u64, rates: Vec<f64>, step: Duration, topic: String) -> HubBench {
        HubBench {
            server: self.server.clone(),
            protocol: HubProtocol::Durable,
            server_pid: self.server_pid,
            subscribers: readers,
            topic,
            rates,
            step_duration: step,
            message_size: self.message_size,
            // One writer, as an application appending to one stream would.
            publish_connections: 1,
            pinning: self.pinning.clone(),
            settle: self.settle,
            progress: self.progress,
            ..HubBench::new(self.worker_program.clone(), self.worker_args.clone())
        }
    }

    /// One appends run: `writers` writers on a fresh stream `name`.
    async fn appends(
        &self,
        server: &RunningServer,
        name: &str,
        writers: usize,
        producers: bool,
    ) -> Result<AppendResult, Error> {
        let client = crate::publisher::client(1)?;
        hub::prepare(HubProtocol::Durable, &client, &server.url, name).await?;
        let stream = stream_url(&server.url, name);
        let addr = hub::loopback_addr(&stream)?;
        let server_pids = server.pids(&[]);
        let answered = Arc::new(AtomicU64::new(0));
        let measure_from = Instant::now() + self.warmup;
        let end = measure_from + self.append_duration;
        let tasks: Vec<_> = (0..writers)
            .map(|index| {
                let writer = Writer {
                    addr,
                    path: stream.path().to_owned(),
                    producer: producers.then(|| format!("bench-{index}")),
                    message_size: self.message_size,
                    measure_from,
                    end,
                    answered: Arc::clone(&answered),
                };
                tokio::spawn(writer.run())
            })
            .collect();

        let label = format!("{writers} writer(s){}", if producers { ", producers" } else { "" });
        let sample = || AppendSample {
            at: Instant::now(),
            answered: answered.load(Ordering::Relaxed),
            server: procfs::sample_all(&server_pids),
            loadgen: ProcSample::read(std::process::id()),
        };
        let started = Instant::now();
        let mut last = sample();
        let mut before = None;
        loop {
            let now = Instant::now();
            if before.is_none() && now >= measure_from {
                before = Some(sample());
            }
            if now >= end {
                break;
            }
            let phase_end = if before.is_none() { measure_from } else { end };
            tokio::time::sleep_until((now + Duration::from_secs(1)).min(phase_end)).await;
            let now = sample();
            if self.progress && now.at.duration_since(last.at) >= Duration::from_millis(900) {
                let phase = if before.is_none() { "warm-up" } else { "appends" };
                eprintln!(
                    "[{:>5.1}s] {phase:<8} {label}: {:>7.0} appends/s | {}",
                    started.elapsed().as_secs_f64(),
                    (now.answered - last.answered) as f64
                        / now.at.duration_since(last.at).as_secs_f64(),
                    now.usage_since(&last),
                );
                last = now;
            }
        }
        let after = sample();
        let mut tally = Tally::default();
        for task in tasks {
            let writer = task.await.map_err(|e| Error::Worker(format!("writer: {e}")))?;
            tally.merge(writer);
        }
        let before = before.unwrap_or_else(|| last.clone());
        let cpu = |a: &Option<ProcSample>, b: &Option<ProcSample>| match (a, b) {
            (Some(a), Some(b)) => Some(a.cpu_percent_since(b)),
            _ => None,
        };
        let ms = |q: f64| tally.latency.quantile_micros(q) as f64 / 1e3;
        let seconds = self.append_duration.as_secs_f64();
        Ok(AppendResult {
            writers,
            producers,
            seconds,
            appends: tally.appends,
            appends_per_second: tally.appends as f64 / seconds,
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: tally.latency.max_micros() as f64 / 1e3,
            errors: tally.errors,
            duplicates: tally.duplicates,
            first_error: tally.first_error,
            server_cpu_percent: cpu(&after.server, &before.server),
            loadgen_cpu_percent: cpu(&after.loadgen, &before.loadgen),
            server_rss_kib: after.server.map(|s| s.rss_kib),
        })
    }
}

/// The counters of an appends run at one moment.
#[derive(Debug, Clone)]
struct AppendSample {
    at: Instant,
    answered: u64,
    server: Option<ProcSample>,
    loadgen: Option<ProcSample>,
}

impl AppendSample {
    /// The server's CPU and RSS and the load generator's CPU since `earlier`, for progress.
    fn usage_since(&self, earlier: &AppendSample) -> String {
        let cpu = |now: &Option<ProcSample>, then: &Option<ProcSample>| match (now, then) {
            (Some(now), Some(then)) => format!("{:.0}%", now.cpu_percent_since(then)),
            _ => "-".to_owned(),
        };
        let rss =
            self.server.map_or("-".to_owned(), |s| format!("{:.1} MiB", s.rss_kib as f64 / 1024.0));
        format!(
            "server cpu {} rss {rss} | loadgen cpu {}",
            cpu(&self.server, &earlier.server),
            cpu(&self.loadgen, &earlier.loadgen)
        )
    }
}

/// One writer: appends back to back on its own connection until `end`.
#[derive(Debug)]
struct Writer {
    addr: SocketAddr,
    path: String,
    /// Its `Producer-Id`, when it writes as an idempotent producer (epoch 0).
    producer: Option<String>,
    message_size: usize,
    /// Appends sent from here on are measured.
    measure_from: Instant,
    /// No append is sent from here on.
    end: Instant,
    /// Appends answered with success by every writer so far (for progress).
    answered: Arc<AtomicU64>,
}

/// What writers measured.
#[derive(Debug, Default)]
struct Tally {
    /// Appends answered with success (sent in the measured time).
    appends: u64,
    /// Appends refused or failed (in all the time).
    errors: u64,
    /// Appends a producer sent that the server answered as retries (204): none should be.
    duplicates: u64,
    /// Round trips of the measured appends.
    latency: Latency,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, error: impl Into<String>) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.into());
    }

    fn merge(&mut self, other: Tally) {
        self.appends += other.appends;
        self.errors += other.errors;
        self.duplicates += other.duplicates;
        self.latency.merge(&other.latency);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

impl Writer {
    async fn run(self) -> Tally {
        let mut tally = Tally::default();
        let mut connection = None;
        let mut seq = 0u64;
        while Instant::now() < self.end {
            if connection.is_none() {
                match Connection::open(self.addr).await {
                    Ok(opened) => connection = Some(opened),
                    Err(error) => {
                        tally.error(format!("connect: {error}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let Some(open) = connection.as_mut() else { continue };
            let request = self.request(&stamped_json(now_nanos(), 0, self.message_size), seq);
            let sent = Instant::now();
            let answer = open.exchange(&request).await;
            let round_trip = sent.elapsed();
            let status = match answer {
                Ok(answer) => {
                    if !answer.keep_alive {
                        connection = None;
                    }
                    answer.status
                }
                Err(error) => {
                    // Sent again on a new connection, with the same sequence number.
                    connection = None;
                    tally.error(error);
                    continue;
                }
            };
            if !(200..300).contains(&status) {
                tally.error(format!("HTTP {status}"));
                continue;
            }
            seq += 1;
            self.answered.fetch_add(1, Ordering::Relaxed);
            if self.producer.is_some() && status == 204 {
                tally.duplicates += 1;
            }
            if sent >= self.measure_from {
                tally.appends += 1;
                tally.latency.record_micros(round_trip.as_micros() as u64);
            }
        }
        tally
    }

    /// The append of `message`, as producer sequence number `seq` when a producer.
    fn request(&self, message: &str, seq: u64) -> Vec<u8> {
        let mut request = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n",
            self.path,
            self.addr,
            message.len()
        );
        if let Some(id) = &self.producer {
            request.push_str(&format!(
                "Producer-Id: {id}\r\nProducer-Epoch: 0\r\nProducer-Seq: {seq}\r\n"
            ));
        }
        request.push_str("\r\n");
        request.push_str(message);
        request.into_bytes()
    }
}

/// A keep-alive HTTP/1.1 connection that sends one request at a time.
#[derive(Debug)]
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// What an answer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    status: u16,
    /// Whether the connection can carry the next request.
    keep_alive: bool,
}

/// How an answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (204, 304, or a `Content-Length: 0`).
    Empty,
    /// This many bytes.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection { stream, buffer: Vec::with_capacity(4096) })
    }

    /// Sends `request` and reads the answer, its body read and dropped.
    async fn exchange(&mut self, request: &[u8]) -> Result<Answer, String> {
        self.stream.write_all(request).await.map_err(|e| format!("send: {e}"))?;
        self.buffer.clear();
        let head_end = loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if self.buffer.len() > MAX_HEAD {
                return Err("response head too large".into());
            }
            self.read_more().await?;
        };
        let (status, framing, keep_alive) = parse_answer(&self.buffer[..head_end])?;
        match framing {
            Framing::Empty => {}
            Framing::UntilClose => return Ok(Answer { status, keep_alive: false }),
            Framing::Length(length) => {
                while self.buffer.len() < head_end + length {
                    self.read_more().await?;
                }
            }
            Framing::Chunked => {
                let mut dechunker = Dechunker::new();
                let mut from = head_end;
                while dechunker.feed(&self.buffer[from..], |_| {}).map_err(|e| e.to_string())?
                    == Progress::More
                {
                    from = self.buffer.len();
                    self.read_more().await?;
                }
            }
        }
        Ok(Answer { status, keep_alive })
    }

    async fn read_more(&mut self) -> Result<(), String> {
        self.buffer.reserve(4096);
        match self.stream.read_buf(&mut self.buffer).await {
            Ok(0) => Err("closed by the server".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("receive: {e}")),
        }
    }
}

/// The status, body framing and keep-alive of a response head.
fn parse_answer(head: &[u8]) -> Result<(u16, Framing, bool), String> {
    let text = std::str::from_utf8(head).map_err(|_| "response head is not UTF-8".to_owned())?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse::<usize>().ok(),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let framing = match (status, chunked, length) {
        (100..=199 | 204 | 304, _, _) | (_, false, Some(0)) => Framing::Empty,
        (_, true, _) => Framing::Chunked,
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };
    Ok((status, framing, !close))
}

/// One appends run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct AppendResult {
    /// Concurrent writers.
    pub writers: usize,
    /// Whether they were idempotent producers.
    pub producers: bool,
    /// The measured time, s (after the warm-up).
    pub seconds: f64,
    /// Appends answered with success, sent in the measured time.
    pub appends: u64,
    /// `appends` over `seconds`.
    pub appends_per_second: f64,
    /// An append's round trip, median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Longest, ms.
    pub max_ms: f64,
    /// Appends refused or failed, warm-up included.
    pub errors: u64,
    /// A producer's appends answered as retries (none should be).
    pub duplicates: u64,
    /// The first error, as an example.
    pub first_error: Option<String>,
    /// Server CPU over the measured time, % of one core.
    pub server_cpu_percent: Option<f64>,
    /// The load generator's CPU over the measured time, % of one core.
    pub loadgen_cpu_percent: Option<f64>,
    /// Server RSS at the end, KiB.
    pub server_rss_kib: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct DurableResults {
    /// The machine.
    pub machine: Machine,
    /// `/proc/loadavg` at the end.
    pub loadavg_end: String,
    /// The server measured (its URL, or the command that started it).
    pub server: String,
    /// Bytes of each JSON message.
    pub message_size: usize,
    /// One per writer count and producer setting.
    pub appends: Vec<AppendResult>,
    /// Readers of one stream at rising append rates.
    pub live: Option<HubResults>,
    /// Idle readers, one run per count.
    pub idle: Vec<HubResults>,
}

/// The results as Markdown: the appends, the live steps, and the memory of idle readers.
pub fn summary(results: &DurableResults) -> String {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
    let mut out = format!(
        "{}: {}-byte JSON messages; {} CPUs ({}), load average at start {}, at end {}\n\n",
        results.server,
        results.message_size,
        results.machine.cpus,
        results.machine.cpu_model,
        results.machine.loadavg_start,
        results.loadavg_end,
    );
    if !results.appends.is_empty() {
        out.push_str(
            "| writers | producers | appends/s | append p50 ms | p99 ms | max ms | server CPU \
             | loadgen CPU | errors | duplicates |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for a in &results.appends {
            out.push_str(&format!(
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {}% | {}% | {} | {} |\n",
                a.writers,
                if a.producers { "yes" } else { "no" },
                a.appends_per_second,
                a.p50_ms,
                a.p99_ms,
                a.max_ms,
                opt(a.server_cpu_percent),
                opt(a.loadgen_cpu_percent),
                a.errors,
                a.duplicates,
            ));
        }
        if let Some(error) = results.appends.iter().find_map(|a| a.first_error.as_ref()) {
            out.push_str(&format!("\nfirst append error: {error}\n"));
        }
        out.push('\n');
    }
    if let Some(live) = &results.live {
        out.push_str("Read-to-live latency:\n\n");
        out.push_str(&hub::summary(live));
        out.push('\n');
    }
    if !results.idle.is_empty() {
        out.push_str(
            "| idle readers | connected in s | server RSS before MiB | with readers MiB | KiB per \
             reader |\n|---:|---:|---:|---:|---:|\n",
        );
        let mib =
            |kib: Option<u64>| kib.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
        for run in &results.idle {
            out.push_str(&format!(
                "| {} | {:.2} | {} | {} | {} |\n",
                run.idle.subscribers,
                run.connect.seconds,
                mib(run.idle.server_rss_before_kib),
                mib(run.idle.server_rss_idle_kib),
                run.idle
                    .bytes_per_subscriber
                    .map_or("-".to_owned(), |b| format!("{:.1}", b / 1024.0)),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_framed_as_their_heads_say() {
        let parse = |head: &str| parse_answer(head.as_bytes()).unwrap();
        assert_eq!(parse("HTTP/1.1 204 No Content\r\n\r\n"), (204, Framing::Empty, true));
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nKeep-Alive: timeout=5\r\n\r\n"),
            (200, Framing::Chunked, true)
        );
        assert_eq!(
            parse("HTTP/1.1 409 Conflict\r\ncontent-length: 12\r\nconnection: close\r\n\r\n"),
            (409, Framing::Length(12), false)
        );
        assert_eq!(parse("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").1, Framing::Empty);
        assert_eq!(parse("HTTP/1.0 200 OK\r\n\r\n").1, Framing::UntilClose);
        assert!(parse_answer(b"nonsense\r\n\r\n").is_err());
    }

    #[test]
    fn producers_stamp_their_appends() {
        let writer = Writer {
            addr: "127.0.0.1:9".parse().unwrap(),
            path: "/v1/stream/s".into(),
            producer: Some("bench-3".into()),
            message_size: 100,
            measure_from: Instant::now(),
            end: Instant::now(),
            answered: Arc::default(),
        };
        let message = stamped_json(1, 0, 100);
        let request = String::from_utf8(writer.request(&message, 7)).unwrap();
        assert!(request.starts_with("POST /v1/stream/s HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(request.contains("\r\nContent-Length: 100\r\n"), "{request}");
        assert!(
            request.contains("Producer-Id: bench-3\r\nProducer-Epoch: 0\r\nProducer-Seq: 7\r\n")
        );
        assert!(request.ends_with(&format!("\r\n\r\n{message}")));
        let plain = Writer { producer: None, ..writer };
        assert!(!String::from_utf8(plain.request(&message, 7)).unwrap().contains("Producer"));
    }

    /// A server that answers every request on a connection the way `answers` says, in turn.
    async fn answering(answers: Vec<&'static str>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            for answer in answers {
                let _ = socket.read(&mut request).await.unwrap();
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_reads_each_answer_whole() {
        let addr = answering(vec![
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\nnope!",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        ])
        .await;
        let mut connection = Connection::open(addr).await.unwrap();
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(connection.exchange(b"POST / HTTP/1.1\r\n\r\n").await.unwrap());
        }
        let codes: Vec<u16> = statuses.iter().map(|a| a.status).collect();
        assert_eq!(codes, [200, 204, 400, 200]);
        assert!(statuses[..3].iter().all(|a| a.keep_alive));
        assert!(!statuses[3].keep_alive);
    }
}
