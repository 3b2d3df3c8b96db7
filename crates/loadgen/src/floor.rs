//! The floor hub: the least a hub can do to deliver an update, so that the hub benchmark can
//! measure what the kernel and the load generator cost on their own, beside Sluice and Nchan.
//!
//! It speaks Nchan's wire form ([`HubProtocol::Nchan`](crate::protocol::HubProtocol)): `GET
//! /sub/<channel>` answers an unchunked `text/event-stream`, `POST /pub/<channel>` (with a
//! `Content-Length` body) encodes one SSE frame and writes it to every subscriber of the channel
//! with one non-blocking `write` each, on one thread, before it answers `201`. No history, no
//! authorization, no per-subscriber queue, task or timer: a subscriber whose socket buffer is
//! full is dropped. Whatever Sluice costs above this hub's figures is Sluice's own; what this
//! hub costs is the floor on this machine.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Error;

/// The subscribers of each channel.
type Channels = Rc<RefCell<HashMap<String, Vec<TcpStream>>>>;

/// The largest request head or publish body accepted.
const MAX_REQUEST: usize = 64 * 1024;

/// Serves on `listener` until the process is stopped (on a current-thread runtime). It takes
/// a bound listener, not an address, so that a caller can bind port 0 and know the port.
pub async fn serve(listener: std::net::TcpListener) -> Result<(), Error> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let channels: Channels = Rc::default();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            loop {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                tokio::task::spawn_local(connection(stream, Rc::clone(&channels)));
            }
        })
        .await
}

/// One connection: a subscriber (kept in `channels` once its head is answered) or a publisher
/// (served until it closes).
async fn connection(mut stream: TcpStream, channels: Channels) {
    let mut buffer = Vec::with_capacity(1024);
    let mut next_id = 0u64;
    loop {
        let Some(head_end) = read_until_head(&mut stream, &mut buffer).await else { return };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut words = head.split_whitespace();
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if let (true, Some(channel)) = (method == "GET", path.strip_prefix("/sub/")) {
            let reply = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                         Cache-Control: no-cache\r\nConnection: keep-alive\r\n\r\n: hi\n\n";
            if stream.write_all(reply.as_bytes()).await.is_ok() {
                channels.borrow_mut().entry(channel.to_owned()).or_default().push(stream);
            }
            return;
        }
        let Some(channel) = path.strip_prefix("/pub/").filter(|_| method == "POST") else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
            return;
        };
        let length = content_length(&head).unwrap_or(0).min(MAX_REQUEST);
        buffer.drain(..head_end);
        while buffer.len() < length {
            if read_more(&mut stream, &mut buffer).await.is_none() {
                return;
            }
        }
        let body: Vec<u8> = buffer.drain(..length).collect();
        let frame = frame(next_id, &body);
        next_id += 1;
        let delivered = fan_out(&channels, channel, &frame);
        let reply = format!(
            "HTTP/1.1 {}\r\nContent-Length: 0\r\n\r\n",
            if delivered > 0 { "201 Created" } else { "202 Accepted" }
        );
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Writes `frame` to every subscriber of `channel` with one non-blocking write each; drops
/// those that cannot take it whole. Returns how many took it. A `writev` of one slice, as
/// Sluice's direct writes are: a plain socket write is a `send`, which `/proc/<pid>/io` does
/// not count among the server's writes.
fn fan_out(channels: &Channels, channel: &str, frame: &[u8]) -> usize {
    let mut channels = channels.borrow_mut();
    let Some(subscribers) = channels.get_mut(channel) else { return 0 };
    let frame = [std::io::IoSlice::new(frame)];
    subscribers.retain(|s| s.try_write_vectored(&frame).is_ok_and(|n| n == frame[0].len()));
    subscribers.len()
}

/// An SSE event with `id` and the body as its data, one `data:` line per line.
fn frame(id: u64, body: &[u8]) -> Vec<u8> {
    let mut frame = format!("id: {id}\n").into_bytes();
    for line in body.split(|&b| b == b'\n') {
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(line);
        frame.push(b'\n');
    }
    frame.push(b'\n');
    frame
}

/// Reads until `buffer` holds a whole request head; returns the offset after it.
async fn read_until_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(at + 4);
        }
        if buffer.len() > MAX_REQUEST {
            return None;
        }
        read_more(stream, buffer).await?;
    }
}

async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_id_and_every_line() {
        assert_eq!(frame(7, b"a\nb"), b"id: 7\ndata: a\ndata: b\n\n");
        assert_eq!(content_length("POST /pub/x HTTP/1.1\r\ncontent-LENGTH: 12\r\n"), Some(12));
        assert_eq!(content_length("GET / HTTP/1.1\r\n"), None);
    }

    #[tokio::test]
    async fn a_publish_reaches_every_subscriber_of_its_channel() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            runtime.unwrap().block_on(serve(listener)).unwrap();
        });
        let mut subscribers = Vec::new();
        for channel in ["a", "a", "b"] {
            // Bound already: a connection waits in the backlog until the hub accepts it.
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let request = format!("GET /sub/{channel} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut head = Vec::new();
            read_until_head(&mut stream, &mut head).await.unwrap();
            subscribers.push(stream);
        }
        let mut publisher = TcpStream::connect(addr).await.unwrap();
        publisher
            .write_all(b"POST /pub/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
            .await
            .unwrap();
        let mut reply = Vec::new();
        read_until_head(&mut publisher, &mut reply).await.unwrap();
        assert!(reply.starts_with(b"HTTP/1.1 201"), "{}", String::from_utf8_lossy(&reply));
        for subscriber in &mut subscribers[..2] {
            let mut got = Vec::new();
            while !got.ends_with(b"data: hello\n\n") {
                read_more(subscriber, &mut got).await.unwrap();
            }
            assert!(got.ends_with(b"id: 0\ndata: hello\n\n"));
        }
        // Channel b got nothing: its subscriber has only the opening comment.
        let mut other = vec![0u8; 64];
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            subscribers[2].read(&mut other),
        )
        .await;
        let before = String::from_utf8_lossy(&other);
        assert!(read.is_err() || !before.contains("hello"), "{before}");
    }
}
