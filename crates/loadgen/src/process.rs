//! Starting the processes a benchmark measures, pinned to chosen CPUs with `taskset`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::Url;
use tokio::process::{Child, Command};

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

/// Starts `program args --listen 127.0.0.1:PORT` on a free port (pinned to `cpus`), waits
/// until it accepts, and returns it with the URL of `path` on it. The child is killed when
/// dropped.
pub async fn spawn_server(
    program: &Path,
    args: &[String],
    cpus: Option<&str>,
    path: &str,
) -> Result<(Child, Url), Error> {
    spawn_server_with(pinned(program, cpus), args, path).await
}

/// Like [`spawn_server`], for a command already set up (pinning, environment).
pub async fn spawn_server_with(
    mut command: Command,
    args: &[String],
    path: &str,
) -> Result<(Child, Url), Error> {
    let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    command
        .args(args)
        .arg("--listen")
        .arg(addr.to_string())
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| Error::Server(format!("cannot start: {e}")))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Server(format!("exited at start: {status}")));
        }
        if Instant::now() > deadline {
            return Err(Error::Server(format!("not listening on {addr} after 15 s")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
