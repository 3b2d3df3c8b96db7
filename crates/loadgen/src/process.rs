//! Starting the processes a benchmark measures, pinned to chosen CPUs with `taskset`: a
//! `sluice serve`, or a peer started by a shell command (nginx with Nchan, the LiteLLM proxy,
//! llama-server) in a process group of its own, so that it and its children are measured and
//! stopped together.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::Url;
use tokio::process::{Child, Command};

/// The environment variable that tells a peer's command which port to listen on.
pub const PORT_VAR: &str = "SLUICE_BENCH_PORT";

use crate::Error;

/// A command for `program`, run under `taskset -c cpus` when `cpus` is given.
pub fn pinned(program: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(cpus) => {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(cpus).arg(program);
            command
        }
        None => Command::new(program),
    }
}

/// Starts `sluice serve` as `program args` on a loopback port of its own (pinned to `cpus`),
/// waits until it accepts, and returns it with the URL of `path` on it. The child is killed
/// when dropped.
pub async fn spawn_server(
    program: &Path,
    args: &[String],
    cpus: Option<&str>,
    path: &str,
) -> Result<(Child, Url), Error> {
    spawn_server_with(pinned(program, cpus), args, path).await
}

/// Like [`spawn_server`], for a command already set up (pinning, environment). The server
/// listens on port 0 and writes the address it bound to a ready file, read back here: a port
/// picked beforehand could be taken by another process before the server binds it.
pub async fn spawn_server_with(
    mut command: Command,
    args: &[String],
    path: &str,
) -> Result<(Child, Url), Error> {
    static SPAWNED: AtomicU64 = AtomicU64::new(0);
    let ready_file = std::env::temp_dir().join(format!(
        "sluice-bench-{}-{}.address",
        std::process::id(),
        SPAWNED.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&ready_file);
    command
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready_file)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| Error::Server(format!("cannot start: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let addr: SocketAddr = loop {
        if let Ok(written) = std::fs::read_to_string(&ready_file) {
            let _ = std::fs::remove_file(&ready_file);
            break written
                .trim()
                .parse()
                .map_err(|e| Error::Server(format!("wrote {written:?} to its ready file: {e}")))?;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Server(format!("exited at start: {status}")));
        }
        if Instant::now() > deadline {
            return Err(Error::Server("not listening after 15 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let url = Url::parse(&format!("http://{addr}{path}"))
        .map_err(|e| Error::Config(format!("bad path {path:?}: {e}")))?;
    Ok((child, url))
}

/// Pins this process (every thread) to `cpus`.
pub async fn pin_self(cpus: &str) -> Result<(), Error> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .await
        .map_err(|e| Error::Config(format!("taskset (util-linux) is needed to pin: {e}")))?;
    if !status.success() {
        return Err(Error::Config(format!("taskset -c {cpus} failed: {status}")));
    }
    Ok(())
}

/// A free loopback port (bound, read, released), for a peer that cannot say which port it got
/// from port 0.
pub fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port())
}

/// A process started by a shell command, leader of its own process group.
#[derive(Debug)]
pub struct Group {
    child: Child,
    /// The process group (= the shell's pid, which `exec` makes the server's).
    pub pgid: u32,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Group {
    /// The processes of the group now (the leader first).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = crate::procfs::group_pids(self.pgid);
        pids.sort_by_key(|&pid| (pid != self.pgid, pid));
        pids
    }

    /// Stops every process of the group (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop(mut self, grace: Duration) {
        signal_group(self.pgid, "TERM");
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            signal_group(self.pgid, "KILL");
            let _ = self.child.wait().await;
        }
        // Children that outlived the leader.
        let deadline = Instant::now() + grace;
        while !crate::procfs::group_pids(self.pgid).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal_group(self.pgid, "KILL");
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // A no-op after `stop`; otherwise (an error, Ctrl-C) nothing is left running.
        if self.child.try_wait().ok().flatten().is_none()
            || !crate::procfs::group_pids(self.pgid).is_empty()
        {
            signal_group(self.pgid, "KILL");
        }
    }
}

/// Stops a server this benchmark started as it would be stopped in production (SIGTERM: it
/// ends its streams and closes its store; a heap profiler preloaded into it writes its last
/// records), killing it if it is still there after `grace`.
pub async fn terminate(mut child: Child, grace: Duration) {
    if let Some(pid) = child.id() {
        signal(&pid.to_string(), "TERM");
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

fn signal_group(pgid: u32, signal_name: &str) {
    signal(&format!("-{pgid}"), signal_name);
}

/// `kill -SIGNAL -- target` (a pid, or a process group as `-pgid`).
fn signal(target: &str, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(target)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `sh -c command` (under `taskset -c cpus` when given) in a process group of its own,
/// with [`PORT_VAR`] set to a free loopback port and `envs` added, and waits until that port
/// accepts connections and, with `ready_path`, until `GET ready_path` answers with a status
/// under 500 (sent with `bearer` when given). The command should `exec` the server.
pub async fn spawn_command(
    command: &str,
    cpus: Option<&str>,
    envs: &[(String, String)],
    ready_path: Option<&str>,
    bearer: Option<&str>,
    deadline: Duration,
) -> Result<Group, Error> {
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut shell = pinned(Path::new("sh"), cpus);
    shell
        .arg("-c")
        .arg(command)
        .env(PORT_VAR, port.to_string())
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .process_group(0);
    let child =
        shell.spawn().map_err(|e| Error::Server(format!("cannot start {command:?}: {e}")))?;
    let pgid = child.id().ok_or_else(|| Error::Server(format!("{command:?} exited at once")))?;
    let mut group = Group { child, pgid, addr };
    let started = Instant::now();
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build()?;
    loop {
        let listening = tokio::net::TcpStream::connect(addr).await.is_ok();
        let ready = match (listening, ready_path) {
            (false, _) => false,
            (true, None) => true,
            (true, Some(path)) => {
                let mut request = client.get(format!("http://{addr}{path}"));
                if let Some(bearer) = bearer {
                    request = request.bearer_auth(bearer);
                }
                request.send().await.is_ok_and(|r| r.status().as_u16() < 500)
            }
        };
        if ready {
            return Ok(group);
        }
        if let Ok(Some(status)) = group.child.try_wait() {
            return Err(Error::Server(format!("{command:?} exited at start: {status}")));
        }
        if started.elapsed() > deadline {
            return Err(Error::Server(format!(
                "{command:?} not ready on {addr} after {} s",
                deadline.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
