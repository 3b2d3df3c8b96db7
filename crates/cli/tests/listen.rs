//! `sluice listen` as a user runs it: the real binary against a local server.

use std::process::{Command, Output};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const STREAM: &str = "id: 1\ndata: one\n\nevent: note\ndata: two\ndata: lines\n\n: comment\ndata: {\"x\": \"三\"}\n\n";

fn sse(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}

async fn echo_headers(headers: HeaderMap) -> Response {
    let get = |name: &str| headers.get(name).map_or("-", |v| v.to_str().unwrap()).to_owned();
    sse(format!("data: {} {}\n\n", get("x-token"), get("last-event-id")))
}

/// Starts the server on its own runtime thread and returns its base URL.
fn start() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = Router::new()
                .route("/stream", get(|| async { sse(STREAM.to_owned()) }))
                .route("/headers", get(echo_headers))
                .route(
                    "/missing",
                    get(|| async { (StatusCode::NOT_FOUND, r#"{"error":"no such topic"}"#) }),
                );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    url
}

fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice")).args(args).output().unwrap()
}

fn stdout(output: &Output) -> &str {
    std::str::from_utf8(&output.stdout).unwrap()
}

#[test]
fn json_prints_one_object_per_event_and_nothing_else() {
    let url = format!("{}/stream", start());
    let output = sluice(&["listen", "--json", "--no-reconnect", &url]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        concat!(
            r#"{"id":"1","event":"message","data":"one"}"#,
            "\n",
            r#"{"id":"1","event":"note","data":"two\nlines"}"#,
            "\n",
            r#"{"id":"1","event":"message","data":"{\"x\": \"三\"}"}"#,
            "\n"
        )
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("connected"));
}

#[test]
fn plain_output_is_the_canonical_wire_form() {
    let url = format!("{}/stream", start());
    let output = sluice(&["listen", "--no-reconnect", "--quiet", &url]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout(&output),
        "event: message\nid: 1\ndata: one\n\nevent: note\nid: 1\ndata: two\ndata: lines\n\n\
         event: message\nid: 1\ndata: {\"x\": \"三\"}\n\n"
    );
    assert!(output.stderr.is_empty(), "--quiet: {:?}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn sends_headers_and_the_starting_event_id() {
    let url = format!("{}/headers", start());
    let output = sluice(&[
        "listen",
        "--json",
        "--no-reconnect",
        "-H",
        "X-Token: yes",
        "--last-event-id",
        "7",
        &url,
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output), "{\"id\":\"7\",\"event\":\"message\",\"data\":\"yes 7\"}\n");
}

#[test]
fn count_stops_after_that_many_events_even_across_reconnects() {
    let url = format!("{}/stream", start());
    let output = sluice(&["listen", "--json", "--count", "5", &url]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout(&output).lines().count(), 5);
    assert!(String::from_utf8_lossy(&output.stderr).contains("reconnecting"));
}

#[test]
fn a_refused_stream_fails_with_the_status_on_stderr() {
    let url = format!("{}/missing", start());
    let output = sluice(&["listen", &url]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("404") && stderr.contains("no such topic"), "{stderr}");
}

#[test]
fn a_malformed_header_is_a_usage_error() {
    let output = sluice(&["listen", "-H", "no colon here", "http://127.0.0.1:1/"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("Name: value"));
}
