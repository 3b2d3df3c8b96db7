//! A worker process: thousands of subscribers on one thread, reporting to the coordinator.
//!
//! The coordinator starts a worker by re-executing its own binary (`sluice bench hub-worker`)
//! and talks to it over pipes, so the protocol lives here, on both ends:
//!
//! - stdin: one JSON line, a [`WorkerConfig`]; then `stop` (or end of input, which is what a
//!   coordinator that died leaves) asks the worker to send its last report and exit.
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
use crate::subscriber::{self, Shared, Target};

/// What a worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerConfig {
    /// The hub's address (a loopback address).
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The subscription's path and query (`/.well-known/mercure?topic=…`).
    pub path_and_query: String,
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
    // Blocking stdin reads on a thread of their own: `stop` or end of input stops the worker.
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "stop" => break,
                Ok(_) => {}
            }
        }
        let _ = stop_tx.send(true);
    });

    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, work(config, stop_rx))
    })
    .join()
    .map_err(|_| Error::Worker("the worker thread panicked".into()))?
}

async fn work(config: WorkerConfig, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
    let target = Rc::new(Target::new(
        config.addr,
        &config.host,
        &config.path_and_query,
        config.token.as_deref(),
        Duration::from_millis(config.connect_timeout_ms),
        config.connect_attempts,
    ));
    let shared = Rc::new(Shared::new(config.subscribers));
    let connects = Rc::new(tokio::sync::Semaphore::new(config.connect_concurrency.max(1)));
    for _ in 0..config.subscribers {
        tokio::task::spawn_local(subscriber::run(
            Rc::clone(&target),
            Rc::clone(&shared),
            Rc::clone(&connects),
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
