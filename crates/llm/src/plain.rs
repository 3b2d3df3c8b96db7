//! A small HTTP/1.1 client for upstreams reached in the clear with no proxy: a local vLLM,
//! Ollama or llama.cpp server, another Sluice.
//!
//! An answer streams for seconds to minutes, and for all that time its upstream request holds
//! what the client gave it. Through reqwest (hyper) that is an 8 KiB read buffer, an 8 KiB
//! write buffer and a request channel of 9 KiB, on a connection that carries one request at a
//! time: 25 of the 42 KiB an open stream cost the gateway (BENCHMARKS.md, "memory per open
//! stream"). Here a streamed answer holds its socket and a read buffer of [`READ_SIZE`]. The
//! request is written in one write; the response head is parsed with `httparse`; the body is
//! read as its head frames it (chunks, a length, or the connection's close). A connection
//! whose answer was read to its end goes back to a pool for the next request to the same
//! upstream; one dropped early (the client left) is closed, which is how the upstream learns
//! to stop.
//!
//! Everything else (TLS, where HTTP/2 shares one connection among many answers; proxies)
//! stays with reqwest: [`PlainClient::serves`] says which.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use reqwest::Url;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one read of a response asks the socket for, and so what a streamed answer's
/// connection holds.
pub(crate) const READ_SIZE: usize = 4096;
/// The longest response head read; past it, the response is refused.
const MAX_HEAD: usize = 64 * 1024;
/// The most header fields in a response head.
const MAX_FIELDS: usize = 64;
/// How long a pooled connection may sit idle before it is closed rather than reused: below
/// the idle timeouts servers commonly use (Sluice's and nginx's are longer), so the upstream
/// rarely closes a connection as it is reused.
const IDLE_FOR: Duration = Duration::from_secs(30);
/// The most idle connections kept per upstream.
const MAX_IDLE: usize = 256;

/// Idle connections, by upstream (`host:port`).
type Pool = Arc<Mutex<HashMap<String, Vec<(TcpStream, Instant)>>>>;

/// The client: a pool of kept-alive connections and a bound on connecting.
#[derive(Debug, Clone)]
pub(crate) struct PlainClient {
    idle: Pool,
    connect_timeout: Duration,
    /// Whether the environment names a proxy for `http` (which reqwest follows).
    proxied: bool,
}

/// A response: its status, its `Retry-After`, and its body as it arrives.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: Body,
}

impl PlainClient {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        const PROXIES: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];
        let proxied =
            PROXIES.iter().any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        PlainClient { idle: Pool::default(), connect_timeout, proxied }
    }

    /// Whether this client serves `url`: `http`, with no proxy set in the environment.
    pub(crate) fn serves(&self, url: &Url) -> bool {
        url.scheme() == "http" && url.host_str().is_some() && !self.proxied
    }

    /// POSTs `body` (JSON) to `url` with `headers`, and returns once the response's head is in.
    /// A pooled connection that fails before any of the response arrived (the upstream closed
    /// it meanwhile) is replaced by a new one, once.
    pub(crate) async fn post(
        &self,
        url: &Url,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Response> {
        let upstream = upstream_of(url)?;
        let request = encode_request(url, &upstream, headers, body);
        while let Some(stream) = self.pooled(&upstream) {
            match self.exchange(stream, &upstream, &request).await {
                Ok(response) => return Ok(response),
                Err(Failure::BeforeResponse(_)) => continue,
                Err(Failure::During(error)) => return Err(error),
            }
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&upstream))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connecting timed out"))??;
        stream.set_nodelay(true)?;
        match self.exchange(stream, &upstream, &request).await {
            Ok(response) => Ok(response),
            Err(Failure::BeforeResponse(error) | Failure::During(error)) => Err(error),
        }
    }

    /// An idle connection to `upstream` that is still open, if the pool has one.
    fn pooled(&self, upstream: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = idle.get_mut(upstream)?;
        while let Some((stream, since)) = list.pop() {
            // Closed by the upstream (or sending unasked bytes): not reusable.
            let open = matches!(stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            if open && since.elapsed() < IDLE_FOR {
                return Some(stream);
            }
        }
        None
    }

    /// Writes `request` on `stream` and reads the response's head.
    async fn exchange(
        &self,
        mut stream: TcpStream,
        upstream: &str,
        request: &[u8],
    ) -> Result<Response, Failure> {
        stream.write_all(request).await.map_err(Failure::BeforeResponse)?;
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        let (status, retry_after, framing, reusable) = loop {
            // Nothing of the response yet: the connection may have been closed while pooled.
            let failure = if buf.is_empty() { Failure::BeforeResponse } else { Failure::During };
            let read = std::future::poll_fn(|cx| poll_read_some(&mut stream, cx, &mut buf));
            if read.await.map_err(failure)? == 0 {
                return Err(failure(io::ErrorKind::UnexpectedEof.into()));
            }
            if let Some(head) = parse_head(&buf).map_err(Failure::During)? {
                buf.advance(head.length);
                break (head.status, head.retry_after, head.framing, head.keep_alive);
            }
            if buf.len() >= MAX_HEAD {
                return Err(Failure::During(invalid("the response head is too long")));
            }
        };
        let back_to = reusable.then(|| (Arc::clone(&self.idle), upstream.to_owned()));
        let body = Body { stream: Some(stream), buf, framing, back_to };
        Ok(Response { status, retry_after, body })
    }
}

/// Why an exchange failed.
enum Failure {
    /// Before any of the response: on a pooled connection, worth one more try on a new one.
    BeforeResponse(io::Error),
    /// Once the response began, or on a new connection.
    During(io::Error),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// `host:port` of `url`, to connect to and to pool by.
fn upstream_of(url: &Url) -> io::Result<String> {
    let host = url.host_str().ok_or_else(|| invalid("the upstream URL has no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    Ok(format!("{host}:{port}"))
}

/// The request's bytes: head and body, for one write.
fn encode_request(url: &Url, upstream: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let mut request = format!(
        "POST {target} HTTP/1.1\r\nhost: {upstream}\r\ncontent-type: application/json\r\n\
         accept: text/event-stream\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        let _ = write!(request, "{name}: {value}\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A response head, parsed.
struct Head {
    length: usize,
    status: u16,
    retry_after: Option<String>,
    framing: Framing,
    /// Whether the connection may carry another request after this response.
    keep_alive: bool,
}

/// The response head at the start of `buf`, or `None` while it is incomplete.
fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut fields);
    let length = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(invalid(&format!("the response head is malformed: {error}"))),
    };
    let status = parsed.code.unwrap_or_default();
    if (100..200).contains(&status) {
        // Nothing here asks for an interim response, so none is expected.
        return Err(invalid("an interim (1xx) response was not asked for"));
    }
    let mut chunked = false;
    let mut content_length: Option<u64> = None;
    let mut closes = parsed.version == Some(0);
    let mut retry_after = None;
    for field in parsed.headers.iter() {
        let value = std::str::from_utf8(field.value).unwrap_or_default().trim();
        if field.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        } else if field.name.eq_ignore_ascii_case("content-length") {
            let parsed: u64 =
                value.parse().map_err(|_| invalid("a content-length is not a number"))?;
            if content_length.is_some_and(|earlier| earlier != parsed) {
                return Err(invalid("the response has two different content-lengths"));
            }
            content_length = Some(parsed);
        } else if field.name.eq_ignore_ascii_case("connection") {
            closes |= value.split(',').any(|token| token.trim().eq_ignore_ascii_case("close"));
        } else if field.name.eq_ignore_ascii_case("retry-after") {
            retry_after = Some(value.to_owned());
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked(Chunked::Size)
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        Framing::Close
    };
    let keep_alive = !closes && framing != Framing::Close;
    Ok(Some(Head { length, status, retry_after, framing, keep_alive }))
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// With its last chunk.
    Chunked(Chunked),
    /// When the connection closes.
    Close,
}

/// Where a chunked body's reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// At a chunk's size line.
    Size,
    /// Inside a chunk, with this many bytes of it left.
    Data(u64),
    /// At the line end after a chunk's data.
    DataEnd,
    /// After the last chunk, at the trailer's lines.
    Trailer,
}

/// A response body, as its bytes arrive. Read to its end, it gives its connection back to
/// the pool; dropped before, it closes it.
pub(crate) struct Body {
    stream: Option<TcpStream>,
    /// What was read and not yet given out.
    buf: BytesMut,
    framing: Framing,
    /// Where the connection goes once the body is read, if it may be reused.
    back_to: Option<(Pool, String)>,
}

/// What a body's buffer gives next.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Data(Bytes),
    /// More must be read first.
    More,
    End,
}

impl Body {
    /// The next piece of the body that `buf` holds.
    fn next_piece(&mut self) -> io::Result<Piece> {
        let piece = match &mut self.framing {
            Framing::Length(0) => Piece::End,
            Framing::Length(left) => {
                let take = (*left).min(self.buf.len() as u64);
                *left -= take;
                match take {
                    0 => Piece::More,
                    _ => Piece::Data(self.buf.split_to(take as usize).freeze()),
                }
            }
            Framing::Close if self.buf.is_empty() => Piece::More,
            Framing::Close => Piece::Data(self.buf.split().freeze()),
            Framing::Chunked(state) => chunk(state, &mut self.buf)?,
        };
        if piece == Piece::End {
            self.framing = Framing::Length(0);
        }
        Ok(piece)
    }

    /// The body is over: its connection goes back to the pool if it may.
    fn finish(&mut self) {
        let (Some(stream), Some((pool, upstream))) = (self.stream.take(), self.back_to.take())
        else {
            return;
        };
        // Bytes past the body's end were not asked for: the connection is not reusable.
        if !self.buf.is_empty() {
            return;
        }
        let mut idle = pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let list = idle.entry(upstream).or_default();
        if list.len() < MAX_IDLE {
            list.push((stream, Instant::now()));
        }
    }

    /// Reads the whole body, up to `limit` bytes (the rest is dropped): for an error's message.
    pub(crate) async fn text(mut self, limit: usize) -> String {
        use futures_util::StreamExt;
        let mut text = Vec::new();
        while let Some(Ok(piece)) = self.next().await {
            text.extend_from_slice(&piece[..piece.len().min(limit.saturating_sub(text.len()))]);
        }
        String::from_utf8_lossy(&text).into_owned()
    }
}

impl Stream for Body {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let body = &mut *self;
        loop {
            match body.next_piece() {
                Ok(Piece::Data(data)) if data.is_empty() => continue,
                Ok(Piece::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Piece::End) => {
                    body.finish();
                    return Poll::Ready(None);
                }
                Ok(Piece::More) => {}
                Err(error) => {
                    body.stream = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            let Some(stream) = &mut body.stream else { return Poll::Ready(None) };
            match ready!(poll_read_some(stream, cx, &mut body.buf)) {
                Ok(0) if body.framing == Framing::Close => {
                    body.stream = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    body.stream = None;
                    let error =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "the body ended early");
                    return Poll::Ready(Some(Err(error)));
                }
                Ok(_) => {}
                Err(error) => {
                    body.stream = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
        }
    }
}

/// Reads what `stream` has into `buf`, up to [`READ_SIZE`] at a time; the bytes read.
fn poll_read_some(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let start = buf.len();
    buf.resize(start + READ_SIZE, 0);
    let mut read = ReadBuf::new(&mut buf[start..]);
    let outcome = Pin::new(stream).poll_read(cx, &mut read).map_ok(|()| read.filled().len());
    buf.truncate(start + outcome_len(&outcome));
    outcome
}

fn outcome_len(outcome: &Poll<io::Result<usize>>) -> usize {
    match outcome {
        Poll::Ready(Ok(read)) => *read,
        _ => 0,
    }
}

/// Reads the next piece of a chunked body from `buf`.
fn chunk(state: &mut Chunked, buf: &mut BytesMut) -> io::Result<Piece> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(line) = take_line(buf)? else { return Ok(Piece::More) };
                let size = line.split(|&b| b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size).unwrap_or_default().trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| invalid("a chunk's size is not a hex number"))?;
                *state = if size == 0 { Chunked::Trailer } else { Chunked::Data(size) };
            }
            Chunked::Data(left) => {
                let take = left.min(buf.len() as u64);
                if take == 0 {
                    return Ok(Piece::More);
                }
                *state = if take == left { Chunked::DataEnd } else { Chunked::Data(left - take) };
                return Ok(Piece::Data(buf.split_to(take as usize).freeze()));
            }
            Chunked::DataEnd => {
                let Some(line) = take_line(buf)? else { return Ok(Piece::More) };
                if !line.is_empty() {
                    return Err(invalid("a chunk's data runs past its size"));
                }
                *state = Chunked::Size;
            }
            Chunked::Trailer => {
                let Some(line) = take_line(buf)? else { return Ok(Piece::More) };
                if line.is_empty() {
                    return Ok(Piece::End);
                }
            }
        }
    }
}

/// The next line of `buf` (without its line end), taken out of it; `None` while incomplete.
fn take_line(buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_HEAD {
            return Err(invalid("a line of the body's framing is too long"));
        }
        return Ok(None);
    };
    let mut line = buf.split_to(end + 1).freeze();
    line.truncate(if end > 0 && line[end - 1] == b'\r' { end - 1 } else { end });
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to a chunked decoder in pieces of `step` bytes: the data, and whether the
    /// body ended.
    fn dechunk(wire: &[u8], step: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut state = Chunked::Size;
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for piece in wire.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match chunk(&mut state, &mut buf)? {
                    Piece::Data(bytes) => data.extend_from_slice(&bytes),
                    Piece::More => break,
                    Piece::End => return Ok((data, true)),
                }
            }
        }
        Ok((data, false))
    }

    #[test]
    fn a_chunked_body_is_read_whole_however_it_arrives() {
        let wire =
            b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            let (data, ended) = dechunk(wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert!(ended, "step {step}");
        }
        let (data, ended) = dechunk(b"3\r\nabc\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), ended), (&b"abc"[..], false), "no last chunk yet");
    }

    #[test]
    fn broken_chunk_framing_is_an_error() {
        assert!(dechunk(b"zz\r\nabc\r\n", 4).is_err(), "a size that is not hex");
        assert!(dechunk(b"2\r\nabc\r\n0\r\n\r\n", 4).is_err(), "data past its size");
    }

    fn head(wire: &str) -> Head {
        parse_head(wire.as_bytes()).unwrap().expect("a whole head")
    }

    #[test]
    fn a_response_head_says_how_its_body_ends_and_whether_the_connection_is_reused() {
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n")
                .unwrap()
                .is_none()
        );
        let streamed = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!((streamed.status, streamed.framing), (200, Framing::Chunked(Chunked::Size)));
        assert!(streamed.keep_alive);
        let refused = head("HTTP/1.1 429 Too Many\r\nRetry-After: 3\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((refused.status, refused.framing), (429, Framing::Length(12)));
        assert_eq!(refused.retry_after.as_deref(), Some("3"));
        let closing = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n");
        assert!(!closing.keep_alive);
        let until_close = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(until_close.framing, Framing::Close);
        assert!(!until_close.keep_alive);
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n").keep_alive);
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n")
                .is_err()
        );
        assert!(parse_head(b"HTTP/1.1 100 Continue\r\n\r\n").is_err());
    }

    #[test]
    fn a_request_is_one_write_of_its_head_and_body() {
        let url = Url::parse("http://127.0.0.1:8081/v1/chat/completions?x=1").unwrap();
        let upstream = upstream_of(&url).unwrap();
        let wire = encode_request(&url, &upstream, &[("authorization", "Bearer k")], b"{}");
        let wire = String::from_utf8(wire).unwrap();
        assert!(
            wire.starts_with("POST /v1/chat/completions?x=1 HTTP/1.1\r\nhost: 127.0.0.1:8081\r\n")
        );
        assert!(wire.contains("\r\ncontent-length: 2\r\n"));
        assert!(wire.ends_with("authorization: Bearer k\r\n\r\n{}"));
        assert_eq!(
            upstream_of(&Url::parse("http://localhost/v1").unwrap()).unwrap(),
            "localhost:80"
        );
    }
}
