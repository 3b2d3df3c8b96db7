//! `sluice serve` as an operator runs it: a real process, killed, restarted, stopped.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use sluice_client::{EventSource, Item};

use common::{SECRET, publisher_token, spawn_serve};

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().unwrap()
}

/// Starts `sluice serve --listen 127.0.0.1:PORT` with a publisher key, and waits for it: the
/// process and its port (the kernel's pick when PORT is 0).
fn serve(port: u16, dir: &Path, extra: &[&str]) -> (Child, u16) {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["--listen", &listen, "--jwt-secret", SECRET, "--anonymous"];
    args.extend_from_slice(extra);
    let (child, address) = spawn_serve(dir, &args, &[]);
    (child, address.port())
}

fn publish(port: u16, token: &str, data: &str) -> Option<String> {
    let hub = format!("http://127.0.0.1:{port}/.well-known/mercure");
    let output =
        sluice(&["publish", "--hub", &hub, "--topic", "/log", "--data", data, "--token", token]);
    output.status.success().then(|| String::from_utf8(output.stdout).unwrap().trim().to_owned())
}

/// Every event id from the start of history up to and including the one with `data == last`.
async fn history_until(port: u16, last: &str) -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{port}/.well-known/mercure?topic=/log");
    let mut source = EventSource::get(&url).last_event_id("earliest").build().unwrap();
    let mut seen = Vec::new();
    while let Some(item) = source.next().await {
        if let Item::Message(event) = item.unwrap() {
            let done = event.data == last;
            seen.push((event.last_event_id, event.data));
            if done {
                break;
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_update() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(0, dir.path(), &[]);
    let token = publisher_token();

    // Publish without pause from another thread; kill -9 the server mid-stream.
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let publishing = {
        let (acknowledged, token) = (Arc::clone(&acknowledged), token.clone());
        std::thread::spawn(move || {
            for n in 0.. {
                match publish(port, &token, &format!("update {n}")) {
                    Some(id) => acknowledged.lock().unwrap().push(id),
                    None => break,
                }
            }
        })
    };
    while acknowledged.lock().unwrap().len() < 30 {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill().unwrap(); // SIGKILL: no flush, no goodbye
    server.wait().unwrap();
    publishing.join().unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();

    let (mut server, _) = serve(port, dir.path(), &[]);
    publish(port, &token, "after restart").expect("the restarted hub accepts updates");
    let history = history_until(port, "after restart").await;
    let kept: Vec<&str> = history.iter().map(|(id, _)| id.as_str()).collect();
    for id in &acknowledged {
        assert!(kept.contains(&id.as_str()), "acknowledged {id} is missing after kill -9");
    }
    let data: Vec<&str> = history.iter().map(|(_, d)| d.as_str()).collect();
    for (n, d) in data[..acknowledged.len()].iter().enumerate() {
        assert_eq!(*d, format!("update {n}"), "history keeps publication order");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn sigterm_ends_streams_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(0, dir.path(), &["--store", "memory"]);
    let url = format!("http://127.0.0.1:{port}/.well-known/mercure?topic=/t");
    let listener = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["listen", "--no-reconnect", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let token = publisher_token();
    // Once an update goes through, the listener is certainly subscribed.
    let listener = wait_connected(listener);
    publish(port, &token, "x").unwrap();

    let kill = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(kill.success());
    assert!(server.wait().unwrap().success(), "sluice serve exits 0 on SIGTERM");
    let output = listener.wait_with_output().unwrap();
    assert!(output.status.success(), "the stream ended normally: {output:?}");
}

/// SIGTERM while answers stream: both run to their end before the process exits 0, a Chat
/// Completions answer relayed straight and a Responses answer kept in the hub (whose store
/// stays open until the answers in flight are done).
#[test]
fn sigterm_lets_answers_in_flight_finish_and_exits_cleanly() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let words = (1..=30).map(|n| format!("w{n}")).collect::<Vec<_>>().join(" ");
    let args = ["--listen", "127.0.0.1:0", "--store", "memory", "--provider", "scripted"];
    let env =
        [("SLUICE_SCRIPTED_TEXT", words.as_str()), ("SLUICE_SCRIPTED_TOKENS_PER_SECOND", "20")];
    let (mut server, address) = spawn_serve(dir.path(), &args, &env);
    let ask = |path: &str, body: &str| {
        let mut socket = std::net::TcpStream::connect(address).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        socket.write_all(format!("{head}{body}").as_bytes()).unwrap();
        // Read until the first word has arrived: the answer is under way.
        let mut read = Vec::new();
        let mut buffer = [0; 4096];
        while !String::from_utf8_lossy(&read).contains("w1") {
            let n = socket.read(&mut buffer).unwrap();
            assert!(n > 0, "the answer ended early: {}", String::from_utf8_lossy(&read));
            read.extend_from_slice(&buffer[..n]);
        }
        (socket, read)
    };
    let message = r#"[{"role": "user", "content": "hi"}]"#;
    let chat = format!(r#"{{"model": "scripted", "stream": true, "messages": {message}}}"#);
    let (mut relayed, mut relayed_read) = ask("/v1/chat/completions", &chat);
    let response = r#"{"model": "scripted", "stream": true, "input": "hi"}"#;
    let (mut kept, mut kept_read) = ask("/v1/responses", response);

    let kill = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(kill.success());
    relayed.read_to_end(&mut relayed_read).unwrap();
    let relayed = String::from_utf8(relayed_read).unwrap();
    assert!(relayed.contains("w30") && relayed.contains("[DONE]"), "{relayed}");
    kept.read_to_end(&mut kept_read).unwrap();
    let kept = String::from_utf8(kept_read).unwrap();
    assert!(kept.contains("w30") && kept.contains("response.completed"), "{kept}");
    assert!(server.wait().unwrap().success(), "sluice serve exits 0 on SIGTERM");
}

/// Waits until `sluice listen` says it is connected, then hands the process back.
fn wait_connected(mut listener: Child) -> Child {
    use std::io::{BufRead, BufReader};
    let stderr = listener.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("connected"), "{first}");
    std::thread::spawn(move || lines.for_each(drop));
    listener
}

#[tokio::test]
async fn on_port_0_the_ready_file_and_the_start_line_name_the_port_bound() {
    let dir = tempfile::tempdir().unwrap();
    let ready_file = dir.path().join("address");
    let server = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--store", "memory", "--ready-file"])
        .arg(&ready_file)
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut written = None;
    for _ in 0..600 {
        written = std::fs::read_to_string(&ready_file).ok();
        if written.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let written = written.expect("the ready file is written once the server listens");
    assert!(written.ends_with('\n'), "{written:?}");
    let address: std::net::SocketAddr = written.trim().parse().unwrap();
    assert_eq!(address.ip().to_string(), "127.0.0.1");
    assert_ne!(address.port(), 0);
    let health = reqwest::get(format!("http://{address}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    let kill = Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let output = server.wait_with_output().unwrap();
    assert!(output.status.success());
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains(&format!("hub http://{address}/.well-known/mercure")), "{log}");
    assert!(!ready_file.exists(), "a clean exit removes the ready file");
}

#[test]
fn settings_come_from_the_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    // Two loopback addresses (all of 127.0.0.0/8 is loopback on Linux), each with port 0:
    // the address the server reports having bound says which setting it took.
    std::fs::write(
        dir.path().join("sluice.toml"),
        "listen = \"127.0.0.2:0\"\nstore = \"memory\"\nmax_topics = 1\n",
    )
    .unwrap();
    let (mut from_file, address) = spawn_serve(dir.path(), &[], &[]);
    assert_eq!(address.ip().to_string(), "127.0.0.2", "the file's listen");
    let two_topics = format!("http://{address}/.well-known/mercure?topic=/a&topic=/b");
    let output = sluice(&["listen", "--no-reconnect", &two_topics]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 topic selectors") && stderr.contains("at most 1 are allowed"),
        "{stderr}"
    );
    from_file.kill().unwrap();
    from_file.wait().unwrap();

    let (mut from_flag, address) = spawn_serve(dir.path(), &["--listen", "127.0.0.1:0"], &[]);
    assert_eq!(address.ip().to_string(), "127.0.0.1", "the flag won");
    from_flag.kill().unwrap();
    from_flag.wait().unwrap();

    std::fs::write(dir.path().join("sluice.toml"), "listen = 42\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir.path())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("sluice.toml"));
}

#[test]
fn sluice_chat_prints_the_answer_as_it_streams_and_its_speed() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, port) = serve(0, dir.path(), &["--store", "memory", "--provider", "scripted"]);
    let url = format!("http://127.0.0.1:{port}");
    let output = sluice(&["chat", "--url", &url, "--model", "scripted", "ça va? 你好"]);
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "Hello! This is Sluice's scripted model. You said: ça va? 你好\n"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("tokens/s") && stderr.contains("first after"), "{stderr}");
}

/// The value of a counter on the server's `/metrics` page.
async fn counter(port: u16, name: &str) -> u64 {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_reads_the_window_of_recent_updates_unless_it_is_off() {
    for (window, from, other) in [
        (None, "sluice_replay_pages_from_memory_total", "sluice_replay_pages_from_store_total"),
        (
            Some("0"),
            "sluice_replay_pages_from_store_total",
            "sluice_replay_pages_from_memory_total",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--store", "sqlite:history.db"];
        args.extend(window.iter().flat_map(|mib| ["--replay-window-mib", *mib]));
        let (mut server, port) = serve(0, dir.path(), &args);
        let token = publisher_token();
        let first = publish(port, &token, "one").unwrap();
        publish(port, &token, "two").unwrap();
        publish(port, &token, "three").unwrap();

        let url = format!("http://127.0.0.1:{port}/.well-known/mercure?topic=/log");
        let mut source = EventSource::get(&url).last_event_id(&first).build().unwrap();
        let mut replayed = Vec::new();
        while replayed.len() < 2 {
            if let Item::Message(event) = source.next().await.unwrap().unwrap() {
                replayed.push(event.data);
            }
        }
        assert_eq!(replayed, ["two", "three"], "{window:?}");
        assert!(counter(port, from).await >= 1, "{from} with --replay-window-mib {window:?}");
        assert_eq!(counter(port, other).await, 0, "{other} with --replay-window-mib {window:?}");
        server.kill().unwrap();
        server.wait().unwrap();
    }
}
