//! What a hub benchmark is asked to do: the server to load, how many subscribers on which
//! topics, the publish steps, the connect storm, the CPU pinning, and the checks made on all
//! that before anything starts (only loopback targets are accepted).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

use crate::Error;
use crate::protocol::HubProtocol;

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
    /// [`PORT_VAR`](crate::process::PORT_VAR); the hub is at `path` on it. Every process of
    /// the group counts as the server (nginx's master and worker).
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

    /// Refuses settings that cannot run, before anything is started.
    pub(super) fn validate(&self) -> Result<(), Error> {
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
        if self.topics > 1 && self.protocol == HubProtocol::Durable {
            return Err(Error::Config("durable streams are read one stream at a time".into()));
        }
        if self.topics > 1 && !self.other_nodes.is_empty() {
            return Err(Error::Config("many topics over several nodes is not supported".into()));
        }
        self.other_nodes.iter().try_for_each(|url| loopback_addr(url).map(drop))?;
        Ok(())
    }
}

/// The socket address of a loopback `http` URL; anything else is refused.
pub(crate) fn loopback_addr(url: &Url) -> Result<SocketAddr, Error> {
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
