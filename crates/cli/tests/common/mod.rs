//! What the process-level tests share: a real `sluice serve` on a port of its own (port 0,
//! read back), in a directory of its own, that a test can stop, kill -9 and start again on the
//! same port and files.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use sluice_client::{EventSource, Item, MessageEvent};

/// The longest any single wait in these tests may take before the test fails.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

/// The HS256 key of every test server.
pub(crate) const SECRET: &str = "process-test-secret";

/// Starts `sluice serve ARGS` in `dir`, with `env` set, and waits until it listens: the
/// process and the address it bound. ARGS should say `--listen`; with port 0 the kernel picks
/// a free port as the server binds, and the server writes the address it got to a ready file
/// read here, so no port is picked beforehand and then found taken.
pub(crate) fn spawn_serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let ready = tempfile::tempdir().unwrap();
    let ready_file = ready.path().join("address");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .arg("serve")
        .args(args)
        .arg("--ready-file")
        .arg(&ready_file)
        .envs(env.iter().copied())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..600 {
        if let Ok(address) = std::fs::read_to_string(&ready_file) {
            return (child, address.trim().parse().unwrap());
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("sluice serve {args:?} exited at start: {status}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    panic!("sluice serve {args:?} did not start");
}

/// A `sluice serve` process.
pub(crate) struct Server {
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Server {
    /// Starts `sluice serve --listen 127.0.0.1:0 --jwt-secret SECRET --anonymous ARGS` in
    /// `dir` and waits until it accepts; its port is the one the kernel gave it.
    pub(crate) fn start(dir: &Path, args: &[&str]) -> Server {
        Server::start_with_env(dir, args, &[])
    }

    /// [`Server::start`], with these environment variables set for the process.
    pub(crate) fn start_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut server = Server {
            port: 0,
            dir: dir.to_owned(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the process again (after a stop or a kill), on the same port and files (the
    /// first start, with port 0, learns the port).
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        let listen = format!("127.0.0.1:{}", self.port);
        let mut args = vec!["--listen", &listen, "--jwt-secret", SECRET, "--anonymous"];
        args.extend(self.args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> =
            self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (child, address) = spawn_serve(&self.dir, &args, &env);
        self.port = address.port();
        self.child = Some(child);
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The hub's URL.
    pub(crate) fn hub(&self) -> String {
        format!("{}/.well-known/mercure", self.url())
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// `kill -9`: no flush, no goodbye.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    pub(crate) fn stop(&mut self) {
        let child = self.child.take().expect("running");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        assert!(status.unwrap().success());
        let exit = child.wait_with_output().unwrap().status;
        assert!(exit.success(), "sluice serve exits 0 on SIGTERM: {exit}");
    }

    /// The value of a metric in `/metrics` (summed over its label sets), 0 when absent.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        metric_from(
            &reqwest::get(format!("{}/metrics", self.url())).await.unwrap().text().await.unwrap(),
            name,
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The value of `name` (with the labels given in `name`, if any) in a Prometheus text page.
pub(crate) fn metric_from(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                || (name.contains('{') && line.starts_with(name))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A publisher token for every topic.
pub(crate) fn publisher_token() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["token", "--secret", SECRET, "--publish", "*", "--subscribe", "*"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Publishes `data` on `topic`; the update's id, or the refusal's status.
pub(crate) async fn publish(
    client: &reqwest::Client,
    hub: &str,
    token: &str,
    topic: &str,
    data: &str,
) -> Result<String, reqwest::StatusCode> {
    let response = client
        .post(hub)
        .bearer_auth(token)
        .form(&[("topic", topic), ("data", data)])
        .send()
        .await
        .map_err(|_| reqwest::StatusCode::SERVICE_UNAVAILABLE)?;
    if response.status().is_success() {
        Ok(response.text().await.unwrap())
    } else {
        Err(response.status())
    }
}

/// The events of `url` (from `last_event_id`, if any) until `enough` says so or the stream
/// ends, without reconnecting.
pub(crate) async fn events_until(
    url: &str,
    last_event_id: Option<&str>,
    enough: impl Fn(&[MessageEvent]) -> bool,
) -> Vec<MessageEvent> {
    let mut builder = EventSource::get(url).reconnect(false);
    if let Some(id) = last_event_id {
        builder = builder.last_event_id(id);
    }
    let mut source = builder.build().unwrap();
    let mut seen = Vec::new();
    let read = async {
        while !enough(&seen) {
            match source.next().await {
                Some(Ok(Item::Message(event))) => seen.push(event),
                Some(Ok(_)) => {}
                Some(Err(error)) => panic!("{url}: {error}"),
                None => break,
            }
        }
    };
    if tokio::time::timeout(PATIENCE, read).await.is_err() {
        panic!("{url}: waited {PATIENCE:?} for the events, got {seen:?}");
    }
    seen
}

/// The data of each event.
pub(crate) fn data(events: &[MessageEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

/// The event types of an answer's stream.
pub(crate) fn kinds(events: &[MessageEvent]) -> Vec<&str> {
    events.iter().map(|e| &*e.event_type).collect()
}

/// Starts an answer from the scripted model on `server`: its JSON (`id`, `events_url`,
/// `cancel_url`).
pub(crate) async fn start_answer(server: &Server) -> serde_json::Value {
    let request =
        serde_json::json!({"model": "scripted", "messages": [{"role": "user", "content": "hi"}]});
    let response = reqwest::Client::new()
        .post(format!("{}/api/generations", server.url()))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}
