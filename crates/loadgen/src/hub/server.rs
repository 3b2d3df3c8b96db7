//! The server a benchmark measures: started (pinned to its CPUs) or found at its URL, made
//! ready for the run, and stopped at the end. Shared by the hub and Durable Streams
//! benchmarks.

use std::time::Duration;

use reqwest::Url;
use tokio::process::Child;

use super::config::ServerTarget;
use crate::Error;
use crate::process;
use crate::protocol::HubProtocol;

impl ServerTarget {
    /// Starts the server (pinned to `cpus`), or takes the running one at its URL (`pid`: its
    /// process, if known), and gives it a second to settle.
    pub(crate) async fn start(
        &self,
        pid: Option<u32>,
        cpus: Option<&str>,
    ) -> Result<RunningServer, Error> {
        let server = match self {
            ServerTarget::Url(url) => {
                RunningServer { url: url.clone(), pid, child: None, group: None }
            }
            ServerTarget::Spawn { program, args, path } => {
                let (child, url) = process::spawn_server(program, args, cpus, path).await?;
                RunningServer { url, pid: child.id(), child: Some(child), group: None }
            }
            ServerTarget::Command { command, path } => {
                let group =
                    process::spawn_command(command, cpus, &[], None, None, Duration::from_secs(30))
                        .await?;
                let url = Url::parse(&format!("http://{}{path}", group.addr))
                    .map_err(|e| Error::Config(format!("bad path {path:?}: {e}")))?;
                RunningServer { url, pid: Some(group.pgid), child: None, group: Some(group) }
            }
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(server)
    }
}

/// A server being measured: one the benchmark started (killed if dropped before
/// [`RunningServer::stop`]), or one found running.
#[derive(Debug)]
pub(crate) struct RunningServer {
    /// Where it serves.
    pub(crate) url: Url,
    /// Its process (a command's: its process group's leader), if known.
    pub(crate) pid: Option<u32>,
    child: Option<Child>,
    group: Option<process::Group>,
}

impl RunningServer {
    /// Its processes: a command's whole group, else its own and `others` (more nodes).
    pub(crate) fn pids(&self, others: &[u32]) -> Vec<u32> {
        match &self.group {
            Some(group) => group.pids(),
            None => self.pid.into_iter().chain(others.iter().copied()).collect(),
        }
    }

    /// Stops it if the benchmark started it.
    pub(crate) async fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        if let Some(group) = self.group.take() {
            group.stop(Duration::from_secs(5)).await;
        }
    }
}

/// Makes `topic` ready to be subscribed to, if the protocol needs that (a durable stream is
/// created).
pub(crate) async fn prepare(
    protocol: HubProtocol,
    client: &reqwest::Client,
    url: &Url,
    topic: &str,
) -> Result<(), Error> {
    let Some(request) = protocol.prepare(client, url, topic) else { return Ok(()) };
    let response = request.send().await.map_err(|e| Error::Server(format!("{topic}: {e}")))?;
    if !response.status().is_success() {
        return Err(Error::Server(format!("preparing {topic}: HTTP {}", response.status())));
    }
    Ok(())
}
