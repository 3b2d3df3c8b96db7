//! A worker process: thousands of subscribers on one thread, reporting to the coordinator.
//!
//! The coordinator starts a worker by re-executing its own binary (`sluice bench hub-worker`)
//! and talks to it over pipes, so the protocol lives here, on both ends:
//!
//! - stdin: one JSON line, a [`WorkerConfig`]; then `stop` (or end of input, which is what a
//!   coordinator that died leaves) asks the worker to send its last report and exit;
//!   `disconnect` closes every stream (the subscribers wait); `reconnect <ns>` opens them
//!   all again at once, each with the last event id it saw, latencies now counted from
//!   `<ns>` (ns since the Unix epoch) at the earliest.
//! - stdout: one JSON [`WorkerReport`](crate::stats::WorkerReport) line every
//!   `report_interval_ms`, and a last one with `"last": true`.
//!
//! A worker also stops by itself after `max_seconds`, so nothing is left running.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::Error;
use crate::protocol::HubProtocol;
use crate::subscriber::{self, Control, Shared, Target};

/// What a worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// The hub's address (a loopback address).
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The subscription's path and query (`/.well-known/mercure?topic=…`). With more than
    /// one topic, each subscriber's topic number is appended to it.
    pub path_and_query: String,
    /// Topics: with more than one, subscriber i of this worker takes topic number
    /// (`first_topic` + i) mod `topics`.
    #[serde(default)]
    pub topics: u64,
    /// See `topics`.
    #[serde(default)]
    pub first_topic: u64,
    /// Reconnects in flight at once after `reconnect` (0: all of them).
    #[serde(default)]
    pub storm_concurrency: usize,
    /// Whether a reconnect sends `Last-Event-ID`.
    #[serde(default = "yes")]
    pub resume: bool,
    /// How the subscribers read: a hub's event stream, or a durable stream from an offset.
    #[serde(default)]
    pub protocol: HubProtocol,
    /// A subscriber JWT, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// How many subscribers to open.
    pub subscribers: u64,
    /// Connection attempts in flight at once.
    pub connect_concurrency: usize,
    /// How long one attempt (connect, request, response head) may take.
    pub connect_timeout_ms: u64,
    /// Attempts per subscriber before it gives up.
    pub connect_attempts: u32,
    /// Milliseconds between reports.
    pub report_interval_ms: u64,
    /// The worker exits after this many seconds whatever happens.
    pub max_seconds: u64,
}

fn yes() -> bool {
    true
}

/// A line the coordinator writes to a worker's stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Stop,
    Disconnect,
    /// Reconnect, timing latencies from this moment (ns since the epoch) at the earliest.
    Reconnect(u64),
}

fn parse_command(line: &str) -> Option<Command> {
    let mut words = line.split_whitespace();
    match words.next()? {
        "stop" => Some(Command::Stop),
        "disconnect" => Some(Command::Disconnect),
        "reconnect" => Some(Command::Reconnect(words.next().and_then(|n| n.parse().ok())?)),
        _ => None,
    }
}

/// Runs a worker: reads its [`WorkerConfig`] from stdin, reports on stdout until stopped.
///
/// Blocks the calling thread; it runs its own single-threaded runtime on a thread of its own,
/// so it may be called from inside another runtime's blocking section.
pub fn run() -> Result<(), Error> {
    let mut line = String::new();
    let stdin = std::io::stdin();
    stdin.lock().read_line(&mut line)?;
    let config: WorkerConfig =
        serde_json::from_str(&line).map_err(|e| Error::Worker(format!("bad config: {e}")))?;
    crate::raise_open_file_limit();

    let (stop_tx, stop_rx) = watch::channel(false);
    let (commands_tx, commands_rx) = tokio::sync::mpsc::unbounded_channel();
    // Blocking stdin reads on a thread of their own: `stop` or end of input stops the worker.
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => match parse_command(&line) {
                    Some(Command::Stop) => break,
                    Some(command) => {
                        let _ = commands_tx.send(command);
                    }
                    None => {}
                },
            }
        }
        let _ = stop_tx.send(true);
    });

    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, work(config, stop_rx, commands_rx))
    })
    .join()
    .map_err(|_| Error::Worker("the worker thread panicked".into()))?
}

async fn work(
    config: WorkerConfig,
    mut stop: watch::Receiver<bool>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Command>,
) -> Result<(), Error> {
    let target = Rc::new(
        Target::new(
            config.addr,
            &config.host,
            &config.path_and_query,
            config.token.as_deref(),
            Duration::from_millis(config.connect_timeout_ms),
            config.connect_attempts,
        )
        .resume(config.resume)
        .protocol(config.protocol),
    );
    let shared = Rc::new(Shared::new(config.subscribers, config.storm_concurrency));
    let connects = Rc::new(tokio::sync::Semaphore::new(config.connect_concurrency.max(1)));
    let (control, control_rx) = watch::channel(Control::default());
    for index in 0..config.subscribers {
        let topic = (config.topics > 1).then(|| (config.first_topic + index) % config.topics);
        tokio::task::spawn_local(subscriber::run(
            Rc::clone(&target),
            topic,
            Rc::clone(&shared),
            Rc::clone(&connects),
            control_rx.clone(),
        ));
    }

    let deadline = tokio::time::sleep(Duration::from_secs(config.max_seconds));
    tokio::pin!(deadline);
    let mut ticks = tokio::time::interval(Duration::from_millis(config.report_interval_ms.max(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = std::io::stdout();
    loop {
        let last = tokio::select! {
            _ = ticks.tick() => false,
            _ = stop.wait_for(|stop| *stop) => true,
            () = &mut deadline => true,
            Some(command) = commands.recv() => {
                match command {
                    Command::Disconnect => {
                        control.send_replace(Control { disconnected: true });
                    }
                    Command::Reconnect(floor) => {
                        shared.stats.borrow().set_floor(floor);
                        control.send_replace(Control { disconnected: false });
                    }
                    Command::Stop => {}
                }
                continue;
            }
        };
        let mut report = shared.stats.borrow_mut().take_report();
        report.last = last;
        let mut line = serde_json::to_vec(&report).map_err(|e| Error::Worker(e.to_string()))?;
        line.push(b'\n');
        // A coordinator that went away closed the pipe: stop too.
        if out.write_all(&line).and_then(|()| out.flush()).is_err() || last {
            // Returning drops the LocalSet's tasks, which closes every connection.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands() {
        assert_eq!(parse_command("stop\n"), Some(Command::Stop));
        assert_eq!(parse_command("disconnect\n"), Some(Command::Disconnect));
        assert_eq!(parse_command("reconnect 123\n"), Some(Command::Reconnect(123)));
        assert_eq!(parse_command("reconnect\n"), None);
        assert_eq!(parse_command("\n"), None);
    }

    #[test]
    fn old_configs_still_read() {
        let line = r#"{"addr":"127.0.0.1:1","host":"h","path_and_query":"/","token":null,
            "subscribers":1,"connect_concurrency":1,"connect_timeout_ms":1,"connect_attempts":1,
            "report_interval_ms":10,"max_seconds":1}"#;
        let config: WorkerConfig = serde_json::from_str(line).unwrap();
        assert!(config.resume);
        assert_eq!(config.topics, 0);
        assert_eq!(config.protocol, HubProtocol::Mercure);
    }
}
