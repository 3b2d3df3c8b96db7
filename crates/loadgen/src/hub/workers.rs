//! The worker processes that hold the subscribers: this binary run again (`bench
//! hub-worker`), told its share by one JSON line on stdin, reporting on stdout, and driven by
//! command lines (`disconnect`, `reconnect NS`, `stop`).

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

use super::config::HubBench;
use crate::Error;
use crate::process;
use crate::stats::{Aggregate, WorkerReport};
use crate::worker::WorkerConfig;

impl HubBench {
    /// Starts worker process `index` with `config` on its stdin; its reports, one JSON line
    /// each on its stdout, are applied to `aggregate` as they come.
    pub(super) async fn spawn_worker(
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
pub(super) struct Worker {
    pub(super) child: Child,
    stdin: Option<ChildStdin>,
}

impl Worker {
    /// Asks the worker to stop, and closes its stdin.
    pub(super) async fn stop(&mut self) {
        self.send("stop").await;
        self.stdin = None;
    }

    /// Writes a command line to the worker's stdin.
    pub(super) async fn send(&mut self, command: &str) {
        if let Some(stdin) = &mut self.stdin {
            let _ = stdin.write_all(format!("{command}\n").as_bytes()).await;
            let _ = stdin.flush().await;
        }
    }
}
