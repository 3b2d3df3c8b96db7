//! Subscriptions served straight on their socket, past hyper.
//!
//! An idle subscriber is the hub's commonest client, and under hyper each one kept a 16 KiB
//! read buffer, an 8 KiB write buffer and a connection task of several KiB for a request that
//! will never send another byte (BENCHMARKS.md, "where an idle subscriber's memory goes"). So
//! when a plain HTTP/1.1 connection opens with `GET /.well-known/mercure`, the server reads that
//! one request head itself, runs it through the same router (limits, CORS, auth, access log,
//! the subscribe handler) and writes the answer on the socket directly:
//!
//! - an event stream goes out as it is, delimited by the connection's close (no chunk
//!   framing), every frame that is ready at a wake-up in one vectored write;
//! - any other answer (an error) goes out with its length;
//! - either way the connection closes after it (`Connection: close`), so nothing but this one
//!   request is ever parsed here. Every other first request, and HTTP/2, is hyper's.
//!
//! Over TLS (HTTP/1.1 by ALPN, or none) the same holds once the handshake is done: the
//! subscription's head is read through TLS, and a connection that opens with anything else
//! goes to hyper with the bytes read so far put back in front ([`Rewound`]). There the
//! server's task writes every frame (the fan-out cannot encrypt), so no socket is handed to
//! the hub. Under hyper an idle TLS subscriber held 34 KiB, 25 of them hyper's buffers.
//!
//! The bounds of the [parent module](super) hold here too: the request head is due within
//! [`Timeouts::request_head`] of accept, a write that makes no progress fails after
//! [`Timeouts::write`], and [`ConnHandle::hang_up`] resets the connection at once. What the
//! client sends after its head is read and dropped; its end of the connection closing ends
//! the stream.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep, sleep, timeout_at};
use tokio_rustls::server::TlsStream;
use tower::ServiceExt;

use super::{ClientAddr, ConnHandle, Control, Slot, Socket, Timeouts};
use sluice_hub::{DirectWrite, SocketWriter};

use crate::error::ApiError;
use crate::telemetry::count_timeout;

/// The most bytes of request head read here; past them, 431. Above the router's own limits
/// (60 KiB of target, 64 KiB of headers), so those answer first with their own words.
const MAX_HEAD_BYTES: usize = 128 * 1024;
/// The most header fields parsed; past them, 431 (the router answers above 100).
const MAX_HEAD_FIELDS: usize = 128;
/// The most frames gathered into one vectored write.
const MAX_SLICES: usize = 64;

/// Whether a connection's first bytes are a subscription this module serves: `GET` of `path`
/// exactly, with a query or none.
fn is_subscription(first: &[u8], path: &str) -> bool {
    let rest = first.strip_prefix(b"GET ").and_then(|r| r.strip_prefix(path.as_bytes()));
    matches!(rest, Some([b'?' | b' ', ..]))
}

/// How a connection opened.
pub(super) enum Opening<T, H> {
    /// Not with a subscription: the socket as hyper should read it (untouched, or with what
    /// was read put back) and its slot.
    Hyper(H, Slot),
    /// With a subscription, answered: what is left to write.
    Direct(Answer<T>),
    /// Closed, timed out or failed before there was anything to answer.
    Done,
}

/// Reads a subscription's head if the connection opens with one (a `GET` of `path`), and
/// answers it through `app`. Only the returned [`Answer`] lives on for as long as the stream
/// does: the caller boxes this future so that the router's state and the head's buffer are
/// freed once it is done.
pub(super) async fn open(
    mut stream: TcpStream,
    addr: SocketAddr,
    slot: Slot,
    app: Router,
    timeouts: Timeouts,
    path: &str,
) -> Opening<Arc<TcpStream>, TcpStream> {
    let head_due = Instant::now() + timeouts.request_head;
    let mut first = vec![0u8; path.len() + 5];
    let peeked = match timeout_at(head_due, stream.peek(&mut first)).await {
        Ok(Ok(peeked)) => peeked,
        Ok(Err(_)) => return Opening::Done,
        Err(_) => {
            count_timeout("request_head");
            return Opening::Done;
        }
    };
    if !is_subscription(&first[..peeked], path) {
        return Opening::Hyper(stream, slot);
    }
    let control = Arc::new(Control::default());
    let request = timeout_at(head_due, read_request(&mut stream, Vec::new())).await;
    // Shared from here on with the hub's fan-out, which may write live updates to it.
    let stream = Arc::new(stream);
    let socket = DirectSocket { stream: Arc::clone(&stream), control: Arc::clone(&control) };
    let socket = SubscriberSocket(Arc::new(socket));
    let Some(response) = respond(request, &app, addr, &control, Some(socket)).await else {
        return Opening::Done;
    };
    Answer::open(stream, response, control, timeouts, slot).await
}

/// [`open`] over TLS, once the handshake is done: the first bytes are read rather than
/// peeked, and handed back to hyper in front of the rest when they are not a subscription.
pub(super) async fn open_tls(
    mut stream: TlsStream<TcpStream>,
    addr: SocketAddr,
    slot: Slot,
    app: Router,
    timeouts: Timeouts,
    path: &str,
) -> Opening<TlsStream<TcpStream>, Rewound<TlsStream<TcpStream>>> {
    let head_due = Instant::now() + timeouts.request_head;
    let mut head = Vec::with_capacity(2048);
    let wanted = path.len() + 5;
    while head.len() < wanted {
        match timeout_at(head_due, stream.read_buf(&mut head)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Opening::Done,
            Ok(Ok(_)) => {}
            Err(_) => {
                count_timeout("request_head");
                return Opening::Done;
            }
        }
        // A head shorter than the path (or another first line) is not a subscription.
        if !wanted_prefix(&head, path) {
            break;
        }
    }
    if !is_subscription(&head, path) {
        return Opening::Hyper(Rewound { first: Bytes::from(head), stream }, slot);
    }
    let control = Arc::new(Control::default());
    let request = timeout_at(head_due, read_request(&mut stream, head)).await;
    let Some(response) = respond(request, &app, addr, &control, None).await else {
        return Opening::Done;
    };
    Answer::open(stream, response, control, timeouts, slot).await
}

/// Whether `first` may still become a subscription's first bytes (`GET ` and `path`).
fn wanted_prefix(first: &[u8], path: &str) -> bool {
    first.iter().zip(b"GET ".iter().chain(path.as_bytes())).all(|(got, wanted)| got == wanted)
}

/// The answer to a subscription's `request` (or to the failure to read it) through `app`, with
/// `socket` given to the handler for the hub's fan-out to write to; `None` when there is
/// nothing to answer (the client left, or its head was not in time).
async fn respond(
    request: Result<Result<Request<Body>, Refusal>, tokio::time::error::Elapsed>,
    app: &Router,
    addr: SocketAddr,
    control: &Arc<Control>,
    socket: Option<SubscriberSocket>,
) -> Option<Response<Body>> {
    let response = match request {
        Err(_) => {
            count_timeout("request_head");
            return None;
        }
        Ok(Err(Refusal::Closed)) => return None,
        Ok(Err(Refusal::Answer(error))) => error.into_response(),
        Ok(Ok(mut request)) => {
            request.extensions_mut().insert(ConnectInfo(ClientAddr(addr)));
            request.extensions_mut().insert(ConnHandle::connection(control));
            if let Some(socket) = socket {
                request.extensions_mut().insert(socket);
            }
            match app.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    };
    Some(response)
}

/// Why no request came out of a head.
enum Refusal {
    /// The client closed, or the socket failed: nothing to answer.
    Closed,
    /// A head this server refuses, with the answer that says why.
    Answer(ApiError),
}

/// Reads one request head (and nothing after it; over TLS, what arrived with it) into a
/// bodiless request; `head` holds what was read of it already.
async fn read_request<R: AsyncRead + Unpin>(
    stream: &mut R,
    mut head: Vec<u8>,
) -> Result<Request<Body>, Refusal> {
    head.reserve(2048usize.saturating_sub(head.len()));
    if let Some(request) = parse_head(&head)? {
        return Ok(request);
    }
    loop {
        if head.len() == head.capacity() {
            if head.len() >= MAX_HEAD_BYTES {
                return Err(Refusal::Answer(head_too_large()));
            }
            head.reserve(head.len());
        }
        match stream.read_buf(&mut head).await {
            Ok(0) | Err(_) => return Err(Refusal::Closed),
            Ok(_) => {}
        }
        if let Some(request) = parse_head(&head)? {
            return Ok(request);
        }
    }
}

fn head_too_large() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("at most {MAX_HEAD_BYTES} bytes of request head are accepted"),
    )
}

/// The request in `head`, or `None` while the head is incomplete.
fn parse_head(head: &[u8]) -> Result<Option<Request<Body>>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEAD_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    let malformed =
        |what: String| Refusal::Answer(ApiError::bad_request("malformed_request", what));
    match parsed.parse(head) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::Answer(head_too_large())),
        Err(error) => return Err(malformed(format!("the request head is malformed: {error}"))),
    }
    let target = parsed.path.unwrap_or_default();
    let uri: Uri = target.parse().map_err(|_| {
        Refusal::Answer(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target ({} bytes) cannot be read", target.len()),
        ))
    })?;
    let mut request =
        Request::builder().method(Method::GET).uri(uri).version(if parsed.version == Some(0) {
            axum::http::Version::HTTP_10
        } else {
            axum::http::Version::HTTP_11
        });
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| malformed(format!("{:?} is not a header name", field.name)))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| malformed(format!("the {name} header's value is not valid")))?;
        let has_body =
            (name == header::CONTENT_LENGTH && value != "0") || name == header::TRANSFER_ENCODING;
        if has_body {
            return Err(malformed("a subscription request carries no body".to_owned()));
        }
        request = request.header(name, value);
    }
    request.body(Body::empty()).map(Some).map_err(|e| malformed(e.to_string()))
}

/// The response's head (and, for anything but an event stream, its whole body) as bytes to
/// write, with the body still to stream (empty unless it is an event stream).
async fn encode_response(response: Response<Body>) -> Result<(VecDeque<Bytes>, Body), axum::Error> {
    let (parts, body) = response.into_parts();
    let streaming = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
    let mut head = BytesMut::with_capacity(256);
    let reason = parts.status.canonical_reason().unwrap_or("");
    head.put_slice(format!("HTTP/1.1 {} {reason}\r\n", parts.status.as_str()).as_bytes());
    for (name, value) in &parts.headers {
        if matches!(
            *name,
            header::CONNECTION | header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::DATE
        ) {
            continue;
        }
        head.put_slice(name.as_str().as_bytes());
        head.put_slice(b": ");
        head.put_slice(value.as_bytes());
        head.put_slice(b"\r\n");
    }
    head.put_slice(b"date: ");
    head.put_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
    head.put_slice(b"\r\nconnection: close\r\n");
    if streaming {
        head.put_slice(b"\r\n");
        return Ok((VecDeque::from([head.freeze()]), body));
    }
    let body = body.collect().await?.to_bytes();
    head.put_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    Ok((VecDeque::from([head.freeze(), body]), Body::empty()))
}

/// A subscription's answer being written: all an idle subscriber's connection holds.
pub(super) struct Answer<T> {
    transport: T,
    /// Bytes to write before more of `body`.
    queue: VecDeque<Bytes>,
    /// The event stream (empty once an error's body is in `queue`).
    body: Body,
    /// The hub's hand-over, when its fan-out may write live updates to the socket too.
    direct: Option<Arc<DirectWrite>>,
    control: Arc<Control>,
    write_timeout: Duration,
    _slot: Slot,
}

impl<T: Transport> Answer<T> {
    /// `response`, to be written on `transport` (the whole of its body when it is not an event
    /// stream).
    async fn open<H>(
        transport: T,
        response: Response<Body>,
        control: Arc<Control>,
        timeouts: Timeouts,
        slot: Slot,
    ) -> Opening<T, H> {
        let direct =
            response.extensions().get::<DirectHandle>().map(|handle| Arc::clone(&handle.0));
        match encode_response(response).await {
            Ok((queue, body)) => Opening::Direct(Answer {
                transport,
                queue,
                body,
                direct,
                control,
                write_timeout: timeouts.write,
                _slot: slot,
            }),
            Err(error) => {
                tracing::debug!(%error, "a response body failed before it was sent");
                Opening::Done
            }
        }
    }

    /// Writes the answer until it ends, the client closes, a write stalls past the write
    /// timeout or the connection is hung up; then closes the connection.
    pub(super) async fn write(&mut self) {
        let outcome = self.write_stream().await;
        if let Some(direct) = &self.direct {
            direct.close();
        }
        // Hung up, timed out or failed: reset rather than close, since the peer will not read
        // what is queued, so the kernel must not keep it.
        if let Err(error) = outcome {
            tracing::debug!(%error, "an event stream ended with an error");
            self.transport.reset_on_close();
        }
    }

    /// Writes `queue`, then `body`'s frames as they come, until the body ends, the client
    /// closes, a write stalls past the write timeout or the connection is hung up.
    async fn write_stream(&mut self) -> io::Result<()> {
        let Answer { transport, queue, body, direct, control, write_timeout, .. } = self;
        let mut ended = body.is_end_stream();
        let mut stall: Option<Pin<Box<Sleep>>> = None;
        poll_fn(|cx| {
            loop {
                if control.killed.load(Ordering::Acquire) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "hung up by the server",
                    )));
                }
                control.write_waker.register(cx.waker());
                if let Poll::Ready(gone) = transport.poll_client_gone(cx) {
                    return Poll::Ready(gone);
                }
                // Writing now: the fan-out stops writing, and what it began goes out first.
                if let Some(direct) = direct {
                    direct.writer_busy(queue);
                }
                while !ended && queue.len() < MAX_SLICES {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data()
                                && !data.is_empty()
                            {
                                queue.push_back(data);
                            }
                        }
                        Poll::Ready(Some(Err(error))) => {
                            return Poll::Ready(Err(io::Error::other(error)));
                        }
                        Poll::Ready(None) => ended = true,
                        Poll::Pending => break,
                    }
                }
                let written = if queue.is_empty() {
                    // Nothing left to hand over: what the transport holds must reach the
                    // socket before this waits (or ends).
                    match transport.poll_flush(cx) {
                        Poll::Ready(Ok(())) if ended => return Poll::Ready(Ok(())),
                        Poll::Ready(Ok(())) => {
                            if let Some(direct) = direct {
                                direct.writer_idle();
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                        Poll::Pending => Poll::Pending,
                    }
                } else {
                    let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                    let count = queue.len().min(MAX_SLICES);
                    for (slice, frame) in slices.iter_mut().zip(queue.iter()) {
                        *slice = IoSlice::new(frame);
                    }
                    transport.poll_write_vectored(cx, &slices[..count]).map_ok(Some)
                };
                match written {
                    Poll::Ready(Ok(Some(0))) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(Some(written))) => {
                        stall = None;
                        consume(queue, written);
                    }
                    Poll::Ready(Ok(None)) => stall = None,
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Pending => {
                        let stall = stall.get_or_insert_with(|| Box::pin(sleep(*write_timeout)));
                        if stall.as_mut().poll(cx).is_ready() {
                            count_timeout("write");
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the client stopped reading",
                            )));
                        }
                        return Poll::Pending;
                    }
                }
            }
        })
        .await
    }
}

/// What a direct answer is written on: a plain socket (shared with the hub's fan-out) or TLS.
pub(super) trait Transport: Send {
    /// Ready with `Ok` once the client has closed its end; what it sends is read and dropped.
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Hands over what it can of `slices`.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Writes out what it holds (the TLS records of what was handed over).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Makes closing reset the connection.
    fn reset_on_close(&self);
}

impl Transport for Arc<TcpStream> {
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut discard = [0u8; 512];
        loop {
            if let Err(error) = std::task::ready!(self.poll_read_ready(cx)) {
                return Poll::Ready(Err(error));
            }
            match self.try_read(&mut discard) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
    }

    /// Through a shared reference: the fan-out may hold the socket too.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            if let Err(error) = std::task::ready!(self.poll_write_ready(cx)) {
                return Poll::Ready(Err(error));
            }
            match self.try_write_vectored(slices) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                outcome => return Poll::Ready(outcome),
            }
        }
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl Transport for TlsStream<TcpStream> {
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut discard = [0u8; 512];
        loop {
            let mut read = ReadBuf::new(&mut discard);
            std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // What was handed over before goes out first, so rustls holds one write's records.
        std::task::ready!(Pin::new(&mut *self).poll_flush(cx))?;
        Pin::new(&mut *self).poll_write_vectored(cx, slices)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self).poll_flush(cx)
    }

    fn reset_on_close(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }
}

/// A TLS stream whose first bytes were read to see what it opens with, put back in front for
/// hyper.
pub(super) struct Rewound<S> {
    first: Bytes,
    stream: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let count = self.first.len().min(buf.remaining());
        buf.put_slice(&self.first.split_to(count));
        if self.first.is_empty() {
            // Its buffer goes with it, rather than live as long as the connection.
            self.first = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, slices)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Socket for Rewound<TlsStream<TcpStream>> {
    fn reset_on_close(&self) {
        Transport::reset_on_close(&self.stream);
    }
}

/// The socket of a directly served subscriber, as the hub's fan-out writes to it.
#[derive(Debug)]
struct DirectSocket {
    stream: Arc<TcpStream>,
    control: Arc<Control>,
}

impl SocketWriter for DirectSocket {
    fn try_write(&self, frame: &[u8]) -> io::Result<usize> {
        // `writev` of one slice rather than `send` (what a plain write of a socket is): the
        // same cost, and counted like every other write of the server in `/proc/<pid>/io`,
        // which is how the load generator counts the server's writes.
        match self.stream.try_write_vectored(&[IoSlice::new(frame)]) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
            outcome => outcome,
        }
    }

    fn wake(&self) {
        self.control.write_waker.wake();
    }
}

/// A request extension: the socket the subscribe handler may give the hub's fan-out.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberSocket(pub(crate) Arc<dyn SocketWriter>);

/// A response extension: the hub's hand-over for a subscription given a [`SubscriberSocket`],
/// which the writer of its stream follows.
#[derive(Debug, Clone)]
pub(crate) struct DirectHandle(pub(crate) Arc<DirectWrite>);

/// Drops the first `written` bytes of `queue`.
fn consume(queue: &mut VecDeque<Bytes>, mut written: usize) {
    while written > 0 {
        let Some(front) = queue.front_mut() else { return };
        if written < front.len() {
            front.advance(written);
            return;
        }
        written -= front.len();
        queue.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_get_of_the_hub_path_itself_is_a_subscription() {
        let is = |first: &[u8]| is_subscription(first, "/.well-known/mercure");
        assert!(is(b"GET /.well-known/mercure?topic=a HTTP/1.1"));
        assert!(is(b"GET /.well-known/mercure HTTP/1.1"));
        assert!(!is(b"GET /.well-known/mercure/subscriptions HTTP/1.1"));
        assert!(!is(b"POST /.well-known/mercure HTTP/1.1"));
        assert!(!is(b"GET /.well-known/mercurex HTTP/1.1"));
        assert!(!is(b"PRI * HTTP/2.0\r\n"));
        assert!(!is(b"GET /.well-known/merc"), "a partial first segment is hyper's");
    }

    #[test]
    fn a_tls_opening_is_read_on_only_while_it_may_still_be_a_subscription() {
        let may = |first: &[u8]| wanted_prefix(first, "/.well-known/mercure");
        assert!(may(b"GE"));
        assert!(may(b"GET /.well-known/merc"));
        assert!(may(b"GET /.well-known/mercure?topic=a HTTP/1.1"));
        assert!(!may(b"POST /"));
        assert!(!may(b"GET /x"));
    }

    #[test]
    fn consume_drops_whole_frames_then_advances_into_the_next() {
        let mut queue: VecDeque<Bytes> =
            [&b"abc"[..], b"de", b"fgh"].into_iter().map(Bytes::from_static).collect();
        consume(&mut queue, 4);
        assert_eq!(queue, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        consume(&mut queue, 4);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_a_body_is_refused() {
        assert!(matches!(
            parse_head(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x"),
            Ok(None)
        ));
        let request =
            parse_head(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nLast-Event-ID: 7\r\n\r\n")
                .ok()
                .flatten()
                .unwrap();
        assert_eq!(request.uri().query(), Some("topic=a"));
        assert_eq!(request.headers()["last-event-id"], "7");
        let with_body =
            b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert!(matches!(parse_head(with_body), Err(Refusal::Answer(e)) if e.status() == 400));
        assert!(matches!(
            parse_head(b"GET /x HTTP/1.1\r\nbad header\r\n\r\n"),
            Err(Refusal::Answer(_))
        ));
    }
}
