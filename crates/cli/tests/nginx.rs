//! Two nodes on one Redis behind Debian's nginx, configured by `deploy/nginx.conf`: events pass
//! through unbuffered, an idle stream outlives nginx's read timeout thanks to keep-alive
//! comments, and when a node dies its clients reconnect through nginx to the other node,
//! which resumes them from Last-Event-ID with nothing lost.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Server, publish, publisher_token};
use futures_util::StreamExt;
use sluice_client::{EventSource, Item};
use sluice_hub::testing::RedisServer;

const PATIENCE: Duration = Duration::from_secs(30);

/// A port nobody listens on now, for nginx: unlike `sluice serve`, it cannot say which port it
/// got from port 0, so its port is picked (and may, rarely, be taken before it binds).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nginx running `deploy/nginx.conf` with the nodes' ports, its own port and a short read
/// timeout put in the lines marked `# test:`; stopped when dropped.
struct Nginx {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(nodes: &[u16], read_timeout: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["logs", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        // nginx's workers may run as another user: let them in.
        Command::new("chmod").args(["-R", "a+rwx"]).arg(dir.path()).status().unwrap();
        let port = free_port();
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nginx.conf"),
        )
        .unwrap();
        let mut config = String::new();
        let mut nodes_written = false;
        for line in template.lines() {
            let replaced = if line.contains("# test: nodes") {
                if std::mem::replace(&mut nodes_written, true) {
                    continue;
                }
                nodes
                    .iter()
                    .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;"))
                    .collect::<Vec<_>>()
                    .join("\n")
            } else if line.contains("# test: listen") {
                format!("        listen 127.0.0.1:{port};")
            } else if line.contains("# test: read timeout") {
                format!("            proxy_read_timeout {read_timeout};")
            } else {
                line.to_owned()
            };
            config.push_str(&replaced);
            config.push('\n');
        }
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let nginx = ["/usr/sbin/nginx", "nginx"]
            .into_iter()
            .find(|p| Command::new(p).arg("-v").stderr(Stdio::null()).status().is_ok())
            .expect("nginx runs (scripts/setup.sh installs it)");
        let mut child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Nginx { port, child, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("nginx did not start on {port}");
    }

    fn hub(&self) -> String {
        format!("http://127.0.0.1:{}/.well-known/mercure", self.port)
    }
}

impl Drop for Nginx {
    /// Stops nginx with SIGTERM, which its master passes on to its workers and waits for: a
    /// SIGKILL would end the master alone and leave the workers running, orphaned, on the port.
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next message of `source`, within PATIENCE; counts the openings it passes.
async fn next_message(source: &mut EventSource, opens: &mut usize) -> sluice_client::MessageEvent {
    let next = async {
        loop {
            match source.next().await {
                Some(Ok(Item::Message(event))) => return event,
                Some(Ok(Item::Open)) => *opens += 1,
                Some(Ok(Item::Reconnecting { .. })) => {}
                other => panic!("the stream broke: {other:?}"),
            }
        }
    };
    tokio::time::timeout(PATIENCE, next).await.expect("an event arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_events_flow_idle_streams_live_and_a_dead_node_loses_no_one() {
    let redis = RedisServer::start();
    let store = redis.url();
    let args = ["--store", store.as_str(), "--keep-alive", "1", "--retry", "200"];
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = Server::start(dirs[0].path(), &args);
    let b = Server::start(dirs[1].path(), &args);
    let nginx = Nginx::start(&[a.port, b.port], "3s");
    let token = publisher_token();
    let client = reqwest::Client::new();
    let url = format!("{}?topic=/through", nginx.hub());

    // Unbuffered: each event arrives before the next is published.
    let mut sources: Vec<(EventSource, usize, Vec<String>)> = (0..6)
        .map(|_| {
            let source = EventSource::get(&url)
                .retry(Duration::from_millis(200))
                .max_backoff(Duration::from_millis(500))
                .build()
                .unwrap();
            (source, 0, Vec::new())
        })
        .collect();
    for (source, opens, _) in &mut sources {
        match source.next().await {
            Some(Ok(Item::Open)) => *opens += 1,
            other => panic!("expected the stream to open, got {other:?}"),
        }
    }
    for n in 0..3 {
        publish(&client, &nginx.hub(), &token, "/through", &format!("{n}")).await.unwrap();
        for (source, opens, seen) in &mut sources {
            seen.push(next_message(source, opens).await.data);
        }
    }

    // Idle for longer than nginx's read timeout: the keep-alive comments hold the streams.
    tokio::time::sleep(Duration::from_secs(5)).await;
    publish(&client, &nginx.hub(), &token, "/through", "after idle").await.unwrap();
    for (source, opens, seen) in &mut sources {
        seen.push(next_message(source, opens).await.data);
        assert_eq!(*opens, 1, "no stream was cut by nginx while idle");
    }

    // A node dies: its clients come back through nginx to the other one and miss nothing.
    a.kill();
    for n in 3..8 {
        publish(&client, &nginx.hub(), &token, "/through", &format!("{n}")).await.unwrap();
    }
    let want: Vec<String> =
        ["0", "1", "2", "after idle", "3", "4", "5", "6", "7"].map(String::from).into();
    let mut reconnected = 0;
    for (source, opens, seen) in &mut sources {
        while seen.len() < want.len() {
            seen.push(next_message(source, opens).await.data);
        }
        assert_eq!(*seen, want, "every update once, in order, across the node's death");
        reconnected += usize::from(*opens > 1);
    }
    assert!(reconnected > 0, "some clients were on the node that died");
}
