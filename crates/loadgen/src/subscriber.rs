//! A lean event-stream subscriber: a raw HTTP/1.1 GET over a tokio `TcpStream`, its body
//! de-chunked (when chunked) and decoded in place, each event's publish→receive latency
//! recorded.
//!
//! Thousands of these run in one worker process on one thread, so a subscriber owns no read
//! buffer: it waits until its socket is readable, then reads into the worker's one shared
//! buffer and decodes what it got before yielding again. Its own state is a
//! [`Dechunker`](crate::chunked::Dechunker), an SSE [`Decoder`] and the socket.
//!
//! The coordinator may ask every subscriber to drop its connection and, later, to reconnect
//! all at once (a connect storm): each then sends the last event id it saw as
//! `Last-Event-ID`, so the hub replays what it missed.
//!
//! A reader of a durable stream ([`HubProtocol::Durable`]) gets `data` events holding JSON
//! arrays of stamped messages ([`stamped_json`](crate::stamp::stamped_json)) and `control`
//! events holding the offset to read on from; when the server ends its response (Sluice does
//! every minute, as the protocol suggests) and the stream is not closed, it reads again from
//! that offset, as the protocol's clients do.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use sluice_sse::{Decoder, MessageEvent};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::chunked::{Dechunker, Progress};
use crate::protocol::HubProtocol;
use crate::stamp::{now_nanos, parse_stamp};
use crate::stats::{Latency, StepDelta, WorkerReport};

/// The largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// What every subscriber of a worker shares: its counters and histograms, and the read
/// buffer. Single-threaded (a `LocalSet`), so plain `RefCell`s.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stats: RefCell<Stats>,
    buffer: RefCell<Vec<u8>>,
    /// Reconnect attempts in flight at once during a storm.
    storm: tokio::sync::Semaphore,
}

impl Shared {
    /// `storm_concurrency`: reconnects in flight at once after a `reconnect` (0: all).
    pub(crate) fn new(subscribers: u64, storm_concurrency: usize) -> Self {
        let stats = Stats {
            report: WorkerReport { pending: subscribers, ..WorkerReport::default() },
            steps: BTreeMap::new(),
            floor_nanos: Cell::new(0),
        };
        let storm = match storm_concurrency {
            0 => tokio::sync::Semaphore::MAX_PERMITS,
            n => n,
        };
        Shared {
            stats: RefCell::new(stats),
            buffer: RefCell::new(vec![0; 64 * 1024]),
            storm: tokio::sync::Semaphore::new(storm),
        }
    }
}

/// What the coordinator has asked of every subscriber of a worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Control {
    /// Between a `disconnect` and the next `reconnect`: streams are to be closed.
    pub(crate) disconnected: bool,
}

/// A worker's running counters.
#[derive(Debug)]
pub(crate) struct Stats {
    /// The counters (its `steps` stays empty: deltas live in `steps` below).
    pub(crate) report: WorkerReport,
    steps: BTreeMap<u32, (u64, Latency)>,
    /// Latency is counted from the send time or from this (ns since the epoch), whichever is
    /// later: set to the moment of a `reconnect`, so what a replay delivers is timed from the
    /// reconnect instead of from when it was published, while the subscriber was away.
    floor_nanos: Cell<u64>,
}

impl Stats {
    fn error(&mut self, error: impl std::fmt::Display) {
        if self.report.first_error.is_none() {
            self.report.first_error = Some(error.to_string());
        }
    }

    /// Times latencies from `nanos` at the earliest (see `floor_nanos`).
    pub(crate) fn set_floor(&self, nanos: u64) {
        self.floor_nanos.set(nanos);
    }

    fn event(&mut self, data: &str, now_nanos: u64) {
        self.report.received += 1;
        match parse_stamp(data) {
            Some((sent, step)) => {
                let (count, latency) = self.steps.entry(step).or_default();
                *count += 1;
                let from = sent.max(self.floor_nanos.get());
                latency.record_micros(now_nanos.saturating_sub(from) / 1_000);
            }
            None => self.report.untimed += 1,
        }
    }

    /// The report to send now: counters, plus the step deltas since the last one, which are
    /// then cleared.
    pub(crate) fn take_report(&mut self) -> WorkerReport {
        let mut report = self.report.clone();
        for (&step, (count, latency)) in &mut self.steps {
            if *count > 0 {
                report.steps.push(StepDelta { step, count: *count, buckets: latency.buckets() });
                *count = 0;
                latency.clear();
            }
        }
        report
    }
}

/// Where and how subscribers connect.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// The path and query (a subscriber's topic number is appended to it).
    path_and_query: String,
    /// The header lines after the request line, without the blank line that ends them.
    headers: String,
    /// Whether a reconnect sends the last event id seen.
    resume: bool,
    /// Whether this reads a durable stream: the offset ends the path and query.
    durable: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) attempts: u32,
}

impl Target {
    pub(crate) fn new(
        addr: SocketAddr,
        host: &str,
        path_and_query: &str,
        token: Option<&str>,
        connect_timeout: Duration,
        attempts: u32,
    ) -> Self {
        let mut headers =
            format!("Host: {host}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
        if let Some(token) = token {
            headers.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        Target {
            addr,
            path_and_query: path_and_query.to_owned(),
            headers,
            resume: true,
            durable: false,
            connect_timeout,
            attempts: attempts.max(1),
        }
    }

    /// Whether a reconnect sends `Last-Event-ID` (on by default).
    pub(crate) fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// How the stream is read: as a hub's, or as a durable stream from an offset.
    pub(crate) fn protocol(mut self, protocol: HubProtocol) -> Self {
        self.durable = protocol == HubProtocol::Durable;
        self
    }

    /// The request of the subscriber to topic number `topic` (none: the path as given), with
    /// `Last-Event-ID: last_id` when resuming and `last_id` is not empty; for a durable
    /// stream, `last_id` is the offset to read from (`now` when empty), last in the query.
    fn request(&self, topic: Option<u64>, last_id: &str) -> Vec<u8> {
        let mut request = format!("GET {}", self.path_and_query);
        if let Some(topic) = topic {
            request.push_str(&topic.to_string());
        }
        if self.durable {
            request.push_str(if last_id.is_empty() { "now" } else { last_id });
        }
        request.push_str(" HTTP/1.1\r\n");
        request.push_str(&self.headers);
        if self.resume && !self.durable && !last_id.is_empty() {
            request.push_str(&format!("Last-Event-ID: {last_id}\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    }
}

/// An error with a short description for the report.
#[derive(Debug)]
struct Failure {
    message: String,
    /// Seconds the server asked to wait (503 Retry-After).
    retry_after: Option<u64>,
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Failure { message: error.to_string(), retry_after: None }
    }
}

fn failure(message: impl Into<String>) -> Failure {
    Failure { message: message.into(), retry_after: None }
}

/// One subscriber: connects (taking a permit of `connects` for the attempt, retrying with
/// backoff), then reads its stream until it ends or the worker stops. When `control` asks,
/// it closes its stream, waits, and reconnects (taking a permit of the storm semaphore, with
/// `Last-Event-ID`).
pub(crate) async fn run(
    target: std::rc::Rc<Target>,
    topic: Option<u64>,
    shared: std::rc::Rc<Shared>,
    connects: std::rc::Rc<tokio::sync::Semaphore>,
    mut control: watch::Receiver<Control>,
) {
    let mut last_id = String::new();
    let mut reconnecting = false;
    loop {
        let mut attempt = 0;
        let (stream, leftover, chunked) = loop {
            attempt += 1;
            let permit =
                if reconnecting { shared.storm.acquire().await } else { connects.acquire().await };
            let request = target.request(topic, &last_id);
            let result = match tokio::time::timeout(
                target.connect_timeout,
                open(&target, &request, &shared),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(failure("timed out connecting")),
            };
            drop(permit);
            match result {
                Ok(opened) => break opened,
                Err(error) => {
                    {
                        let mut stats = shared.stats.borrow_mut();
                        stats.report.connect_errors += 1;
                        stats.error(format!("connect: {}", error.message));
                        if attempt >= target.attempts {
                            stats.report.pending -= 1;
                            stats.report.gave_up += 1;
                            return;
                        }
                    }
                    let wait = error.retry_after.map_or(
                        Duration::from_millis(100 * u64::from(attempt)),
                        Duration::from_secs,
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        };
        {
            let mut stats = shared.stats.borrow_mut();
            stats.report.pending -= 1;
            stats.report.connected += 1;
            stats.report.last_connected_ns = now_nanos();
            if reconnecting {
                stats.report.reconnected += 1;
            }
        }
        let mut body = Body {
            dechunker: chunked.then(Dechunker::new),
            decoder: Decoder::new(),
            durable: target.durable.then(|| DurableRead { offset: last_id.clone(), closed: false }),
        };
        let ended = tokio::select! {
            result = read_stream(&stream, &shared, &leftover, &mut body) => Some(result),
            Ok(_) = control.wait_for(|c| c.disconnected) => None,
        };
        last_id = match &body.durable {
            Some(read) => read.offset.clone(),
            None => body.decoder.last_event_id().to_owned(),
        };
        drop(stream);
        if let Some(result) = ended {
            let mut stats = shared.stats.borrow_mut();
            stats.report.connected -= 1;
            // A durable read the server ended before the stream did goes on from its offset.
            if result.is_ok() && body.durable.as_ref().is_some_and(|read| !read.closed) {
                stats.report.pending += 1;
                stats.report.resumed += 1;
                reconnecting = false;
                continue;
            }
            stats.report.disconnects += 1;
            stats.error(match result {
                Ok(()) => "stream: ended by the server".to_owned(),
                Err(error) => format!("stream: {}", error.message),
            });
            return;
        }
        // Asked to disconnect: wait for the reconnect.
        {
            let mut stats = shared.stats.borrow_mut();
            stats.report.connected -= 1;
            stats.report.pending += 1;
        }
        if control.wait_for(|c| !c.disconnected).await.is_err() {
            return;
        }
        reconnecting = true;
    }
}

/// Connects, sends the request, reads the head. Returns the stream, the body bytes read
/// with the head, and whether the body is chunked.
async fn open(
    target: &Target,
    request: &[u8],
    shared: &Shared,
) -> Result<(TcpStream, Vec<u8>, bool), Failure> {
    let mut stream = TcpStream::connect(target.addr).await?;
    stream.write_all(request).await?;
    let mut head = Vec::with_capacity(1024);
    loop {
        stream.readable().await?;
        let mut buffer = shared.buffer.borrow_mut();
        match stream.try_read(&mut buffer) {
            Ok(0) => return Err(failure("closed before the response head")),
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        drop(buffer);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let body = head.split_off(end + 4);
            let chunked = parse_head(&head)?;
            return Ok((stream, body, chunked));
        }
        if head.len() > MAX_HEAD {
            return Err(failure("response head too large"));
        }
    }
}

/// Checks the status (200) and content type; says whether the body is chunked.
fn parse_head(head: &[u8]) -> Result<bool, Failure> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).unwrap_or_default();
    let mut chunked = false;
    let mut event_stream = false;
    let mut retry_after = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = value.contains("chunked"),
            "content-type" => event_stream = value.starts_with("text/event-stream"),
            "retry-after" => retry_after = value.parse().ok(),
            _ => {}
        }
    }
    if status != "200" {
        return Err(Failure { message: format!("HTTP {status}"), retry_after });
    }
    if !event_stream {
        return Err(failure("not text/event-stream"));
    }
    Ok(chunked)
}

/// Reads and decodes the body until it ends (`Ok`) or fails.
async fn read_stream(
    stream: &TcpStream,
    shared: &Shared,
    leftover: &[u8],
    body: &mut Body,
) -> Result<(), Failure> {
    if body.consume(leftover, now_nanos(), &mut shared.stats.borrow_mut())? == Progress::Done {
        return Ok(());
    }
    loop {
        stream.readable().await?;
        let mut buffer = shared.buffer.borrow_mut();
        match stream.try_read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                let mut stats = shared.stats.borrow_mut();
                if body.consume(&buffer[..n], now_nanos(), &mut stats)? == Progress::Done {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// A response body being decoded.
struct Body {
    dechunker: Option<Dechunker>,
    decoder: Decoder,
    /// Where a durable read stands (none: a hub's stream).
    durable: Option<DurableRead>,
}

/// A durable stream's read: the offset its last `control` event gave, and whether that said
/// the stream is closed.
struct DurableRead {
    offset: String,
    closed: bool,
}

/// A message of a durable stream's `data` event (its other fields are padding).
#[derive(Deserialize)]
struct StampedMessage<'a> {
    #[serde(borrow)]
    stamp: std::borrow::Cow<'a, str>,
}

/// A durable stream's `control` event.
#[derive(Deserialize)]
struct ControlEvent {
    #[serde(rename = "streamNextOffset")]
    next_offset: String,
    #[serde(rename = "streamClosed", default)]
    closed: bool,
}

impl DurableRead {
    /// Records the messages of a `data` event, or takes the offset of a `control` event.
    fn event(&mut self, event: &MessageEvent, now_nanos: u64, stats: &mut Stats) {
        match &*event.event_type {
            "data" => match serde_json::from_str::<Vec<StampedMessage<'_>>>(&event.data) {
                Ok(messages) => {
                    for message in messages {
                        stats.event(&message.stamp, now_nanos);
                    }
                }
                Err(_) => stats.event("", now_nanos),
            },
            "control" => {
                if let Ok(control) = serde_json::from_str::<ControlEvent>(&event.data) {
                    self.offset = control.next_offset;
                    self.closed = control.closed;
                }
            }
            _ => {}
        }
    }
}

impl Body {
    fn consume(
        &mut self,
        input: &[u8],
        now_nanos: u64,
        stats: &mut Stats,
    ) -> Result<Progress, Failure> {
        let decoder = &mut self.decoder;
        let durable = &mut self.durable;
        let mut decode_error = None;
        let mut decode = |data: &[u8]| {
            let on_event = |event: MessageEvent| match durable {
                Some(read) => read.event(&event, now_nanos, stats),
                None => stats.event(&event.data, now_nanos),
            };
            if decode_error.is_none()
                && let Err(error) = decoder.feed(data, on_event)
            {
                decode_error = Some(error);
            }
        };
        let progress = match &mut self.dechunker {
            Some(dechunker) => {
                dechunker.feed(input, &mut decode).map_err(|e| failure(e.to_string()))?
            }
            None => {
                decode(input);
                Progress::More
            }
        };
        match decode_error {
            Some(error) => Err(failure(error.to_string())),
            None => Ok(progress),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stamp::{stamped_data, stamped_json};

    #[test]
    fn stamps_round_trip_and_pad() {
        let data = stamped_data(1_700_000_000_123_456_789, 4, 64);
        assert_eq!(data.len(), 64);
        assert_eq!(parse_stamp(&data), Some((1_700_000_000_123_456_789, 4)));
        assert_eq!(stamped_data(5, 0, 1), "5 0 ");
        assert_eq!(parse_stamp("hello"), None);
    }

    #[test]
    fn a_chunked_event_stream_records_latency_per_step() {
        let mut stats = Shared::new(1, 0).stats.into_inner();
        let mut body =
            Body { dechunker: Some(Dechunker::new()), decoder: Decoder::new(), durable: None };
        let event = format!("data: {}\n\n", stamped_data(1_000_000, 2, 40));
        let wire = format!("2\r\n:\n\r\n{:x}\r\n{event}\r\n", event.len());
        for piece in wire.as_bytes().chunks(7) {
            body.consume(piece, 3_000_000, &mut stats).unwrap();
        }
        let report = stats.take_report();
        assert_eq!(report.received, 1);
        assert_eq!(report.steps.len(), 1);
        assert_eq!(report.steps[0].step, 2);
        assert_eq!(report.steps[0].count, 1);
        // 2 ms after it was sent.
        assert_eq!(report.steps[0].buckets.len(), 1);
        assert!((1_999..=2_001).contains(&report.steps[0].buckets[0].0));
        // Deltas are cleared once reported.
        assert!(stats.take_report().steps.is_empty());
    }

    #[test]
    fn a_raw_nchan_stream_keeps_its_last_id_and_honours_the_floor() {
        let shared = Shared::new(1, 0);
        let mut stats = shared.stats.borrow_mut();
        let mut body = Body { dechunker: None, decoder: Decoder::new(), durable: None };
        let wire = format!(
            ": hi\n\nid: 1795955849:0\ndata: {}\n\nid: 1795955849:1\ndata: {}\n\n",
            stamped_data(1_000_000, 0, 40),
            stamped_data(1_000_000, 1, 40)
        );
        // The first event whole, then the floor, then the second.
        let second = wire.find("id: 1795955849:1").unwrap();
        body.consume(&wire.as_bytes()[..second], 3_000_000, &mut stats).unwrap();
        // From here on, latencies count from 2.5 ms at the earliest.
        stats.set_floor(2_500_000);
        body.consume(&wire.as_bytes()[second..], 3_000_000, &mut stats).unwrap();
        assert_eq!(body.decoder.last_event_id(), "1795955849:1");
        let report = stats.take_report();
        assert_eq!(report.received, 2);
        assert_eq!(report.untimed, 0);
        let micros = |step: u32| {
            report.steps.iter().find(|d| d.step == step).map(|d| d.buckets[0].0).unwrap()
        };
        assert!((1_999..=2_001).contains(&micros(0)));
        assert!((499..=501).contains(&micros(1)));
    }

    #[test]
    fn a_durable_read_counts_each_message_and_keeps_its_offset() {
        let mut stats = Shared::new(1, 0).stats.into_inner();
        let read = DurableRead { offset: String::new(), closed: false };
        let mut body = Body { dechunker: None, decoder: Decoder::new(), durable: Some(read) };
        let (a, b) = (stamped_json(1_000_000, 0, 60), stamped_json(2_000_000, 0, 60));
        // Sluice sends the messages read together as one array; the reference server one each.
        let wire = format!(
            "event: control\ndata:{{\"streamNextOffset\":\"0_0\",\"upToDate\":true}}\n\n\
             event: data\ndata:[{a},{b}]\n\n\
             event: control\ndata:{{\"streamNextOffset\":\"2_120\",\"streamCursor\":\"9\"}}\n\n"
        );
        body.consume(wire.as_bytes(), 3_000_000, &mut stats).unwrap();
        let read = body.durable.as_ref().unwrap();
        assert_eq!((read.offset.as_str(), read.closed), ("2_120", false));
        let report = stats.take_report();
        assert_eq!((report.received, report.untimed), (2, 0));
        let buckets = &report.steps[0].buckets;
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), 2);
        let closing =
            "event: control\ndata:{\"streamNextOffset\":\"2_120\",\"streamClosed\":true}\n\n";
        body.consume(closing.as_bytes(), 3_000_000, &mut stats).unwrap();
        assert!(body.durable.unwrap().closed);
    }

    #[test]
    fn durable_reads_start_now_and_go_on_from_their_offset() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let path = HubProtocol::Durable.subscribe_path(
            &"http://h/v1/stream".parse().unwrap(),
            "bench",
            None,
        );
        let target = Target::new(addr, "h", &path, None, Duration::from_secs(1), 1)
            .protocol(HubProtocol::Durable);
        let first = String::from_utf8(target.request(None, "")).unwrap();
        assert!(first.starts_with("GET /v1/stream/bench?live=sse&offset=now HTTP/1.1\r\n"));
        let again = String::from_utf8(target.request(None, "2_120")).unwrap();
        assert!(again.starts_with("GET /v1/stream/bench?live=sse&offset=2_120 HTTP/1.1\r\n"));
        assert!(!again.contains("Last-Event-ID"));
    }

    #[test]
    fn requests_name_the_topic_and_resume() {
        let addr = "127.0.0.1:9".parse().unwrap();
        let target = Target::new(addr, "h", "/sub/bench-", None, Duration::from_secs(1), 1);
        let first = String::from_utf8(target.request(Some(7), "")).unwrap();
        assert!(first.starts_with("GET /sub/bench-7 HTTP/1.1\r\nHost: h\r\n"), "{first}");
        assert!(!first.contains("Last-Event-ID"));
        assert!(first.ends_with("\r\n\r\n"));
        let again = String::from_utf8(target.request(Some(7), "5:1")).unwrap();
        assert!(again.contains("\r\nLast-Event-ID: 5:1\r\n"), "{again}");
        let target = target.resume(false);
        assert!(!String::from_utf8(target.request(None, "5:1")).unwrap().contains("Last-Event"));
    }

    #[test]
    fn parses_heads() {
        let ok =
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n";
        assert!(parse_head(ok).unwrap());
        let busy = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n";
        let error = parse_head(busy).unwrap_err();
        assert_eq!(error.retry_after, Some(1));
        assert_eq!(error.message, "HTTP 503");
    }
}
