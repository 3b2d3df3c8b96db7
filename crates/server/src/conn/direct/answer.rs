//! Writing a direct answer on its socket: the response's head, then its body as it comes,
//! every frame that is ready at a wake-up in one vectored write, under the write bound and the
//! hang-up of the [parent module](super); and what it is written on ([`Transport`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Response, header};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Sleep, sleep};

use super::super::{Control, Slot, Socket, Timeouts};
use super::{DirectHandle, Drain, Draining, MAX_HEAD_BYTES, SubscriberSocket};
use sluice_hub::{DirectWrite, SocketWriter};

use crate::telemetry::count_timeout;

/// The most frames gathered into one vectored write (a chunk takes three slices).
const MAX_SLICES: usize = 64;
/// The end of a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What follows an answer on its connection.
pub(super) enum After {
    /// The connection closes: an event stream is delimited by the close.
    Close,
    /// The client may send its next request: an event stream goes out in chunks, and what
    /// the client sends meanwhile (`read`, up to a bound) is kept for it.
    KeepAlive { read: Vec<u8> },
}

/// How a response's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// By its `content-length`: the body is already in the queue.
    Length,
    /// By the connection's close.
    Close,
    /// In chunks, ended by the last chunk.
    Chunked,
}

/// An answer being written: all a directly served connection holds while it streams.
pub(in crate::conn) struct Answer<T> {
    transport: T,
    /// Bytes to write before more of `body`.
    queue: VecDeque<Bytes>,
    /// The body still to stream (empty once a whole body is in `queue`).
    body: Body,
    framing: Framing,
    /// What the client sent during the answer, kept for its next request; `None` when the
    /// connection closes after this answer (what it sends is then read and dropped).
    read: Option<Vec<u8>>,
    /// The hub's hand-over, when its fan-out may write live updates to the socket too.
    direct: Option<Arc<DirectWrite>>,
    control: Arc<Control>,
    write_timeout: Duration,
    slot: Slot,
    /// Counts the answer in flight, for shutdown to wait for, until it is written (not while
    /// its connection then waits for the next request).
    draining: Option<Draining>,
}

impl<T: Transport> Answer<T> {
    /// `response`, to be written on `transport`, followed by `after`. `None` when the
    /// response's body failed before anything was written.
    pub(super) async fn open(
        transport: T,
        response: Response<Body>,
        after: After,
        control: Arc<Control>,
        timeouts: Timeouts,
        slot: Slot,
        draining: Option<Draining>,
    ) -> Option<Answer<T>> {
        let direct =
            response.extensions().get::<DirectHandle>().map(|handle| Arc::clone(&handle.0));
        let (mut read, mut keep_alive) = match after {
            After::Close => (None, false),
            After::KeepAlive { read } => (Some(read), true),
        };
        // An answer that closes its connection (a refused body, say) says so.
        if response.headers().get(header::CONNECTION).is_some_and(|v| v == "close") {
            (read, keep_alive) = (None, false);
        }
        match encode_response(response, keep_alive).await {
            Ok((queue, body, framing)) => Some(Answer {
                transport,
                queue,
                body,
                framing,
                read,
                direct,
                control,
                write_timeout: timeouts.write,
                slot,
                draining,
            }),
            Err(error) => {
                tracing::debug!(%error, "a response body failed before it was sent");
                None
            }
        }
    }

    /// Writes the answer until it ends, the client closes, a write stalls past the write
    /// timeout or the connection is hung up; true when it ended and the connection stays open
    /// ([`Answer::kept_alive`]). Through `&mut self`, so that the task awaiting it holds the
    /// answer once, not also in the future (a TLS connection is large).
    pub(in crate::conn) async fn write(&mut self) -> bool {
        let outcome = self.write_stream().await;
        self.draining = None;
        if let Some(direct) = &self.direct {
            direct.close();
        }
        match outcome {
            Ok(()) if self.read.is_none() => {
                // The stream ends here: a TLS client is told so (`close_notify`) rather than
                // left to take the close for a cut.
                let close = poll_fn(|cx| self.transport.poll_close(cx));
                if let Ok(Err(error)) = tokio::time::timeout(self.write_timeout, close).await {
                    tracing::debug!(%error, "a closing connection could not say so");
                }
                false
            }
            Ok(()) => true,
            // Hung up, timed out or failed: reset rather than close, since the peer will not
            // read what is queued, so the kernel must not keep it.
            Err(error) => {
                tracing::debug!(%error, "an answer ended with an error");
                self.transport.reset_on_close();
                false
            }
        }
    }

    /// Waits, once written and kept alive, until the client sends its next request (or sent
    /// it already): false when the connection should close instead, after
    /// [`Timeouts::idle_connection`] of silence (counted) or once shutdown has begun. Waiting
    /// here rather than in the next [`open`](super::open) keeps an idle connection's task to
    /// this answer's remains: no request buffer, no opening.
    pub(in crate::conn) async fn wait_for_next(&mut self, idle: Duration, drain: &Drain) -> bool {
        if self.read.as_ref().is_some_and(|read| !read.is_empty()) {
            return true;
        }
        let readable = poll_fn(|cx| self.transport.poll_readable(cx));
        tokio::select! {
            readable = tokio::time::timeout(idle, readable) => match readable {
                Ok(readable) => readable.is_ok(),
                Err(_) => {
                    count_timeout("idle_connection");
                    false
                }
            },
            () = drain.closing() => false,
        }
    }

    /// The connection for its next request, once written: the transport, what the client
    /// sent meanwhile, and its slot.
    pub(in crate::conn) fn kept_alive(self) -> Option<(T, Vec<u8>, Slot)> {
        self.read.map(|read| (self.transport, read, self.slot))
    }

    /// Writes `queue`, then `body`'s frames as they come, until the body ends, the client
    /// closes, a write stalls past the write timeout or the connection is hung up.
    async fn write_stream(&mut self) -> io::Result<()> {
        let Answer {
            transport, queue, body, framing, read, direct, control, write_timeout, ..
        } = self;
        let mut ended = body.is_end_stream();
        if ended && *framing == Framing::Chunked {
            queue.push_back(Bytes::from_static(LAST_CHUNK));
        }
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
                if poll_client_gone(transport, read.as_mut(), cx).is_ready() {
                    return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
                }
                // Writing now: the fan-out stops writing, and what it began goes out first.
                if let Some(direct) = direct {
                    direct.writer_busy(queue);
                }
                while !ended && queue.len() + 3 <= MAX_SLICES {
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data()
                                && !data.is_empty()
                            {
                                push_frame(queue, data, *framing);
                            }
                        }
                        Poll::Ready(Some(Err(error))) => {
                            return Poll::Ready(Err(io::Error::other(error)));
                        }
                        Poll::Ready(None) => {
                            ended = true;
                            if *framing == Framing::Chunked {
                                queue.push_back(Bytes::from_static(LAST_CHUNK));
                            }
                        }
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

/// Ready once the client has closed its end (or its socket failed). What it sends meanwhile
/// goes into `keep` (for its next request) while that holds less than a request head's bound,
/// or is dropped when there is no `keep`. A full `keep` is not read from: the client waits.
pub(super) fn poll_client_gone<T: Transport>(
    transport: &mut T,
    mut keep: Option<&mut Vec<u8>>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let mut discard = [0u8; 512];
    loop {
        let mut read = match keep.as_deref_mut() {
            Some(keep) if keep.len() >= MAX_HEAD_BYTES => return Poll::Pending,
            Some(_) | None => ReadBuf::new(&mut discard),
        };
        match transport.poll_read_some(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(()),
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(()),
            Poll::Ready(Ok(())) => {
                if let Some(keep) = keep.as_deref_mut() {
                    keep.extend_from_slice(read.filled());
                }
            }
        }
    }
}

/// Queues one frame of a body as `framing` puts it on the wire.
fn push_frame(queue: &mut VecDeque<Bytes>, data: Bytes, framing: Framing) {
    if framing != Framing::Chunked {
        return queue.push_back(data);
    }
    queue.push_back(Bytes::from(format!("{:x}\r\n", data.len())));
    queue.push_back(data);
    queue.push_back(Bytes::from_static(b"\r\n"));
}

/// The response's head (and, for anything but an event stream, its whole body) as bytes to
/// write, with the body still to stream and how it is delimited. An event stream on a
/// connection kept alive goes out in chunks; on one that closes, as it is.
async fn encode_response(
    response: Response<Body>,
    keep_alive: bool,
) -> Result<(VecDeque<Bytes>, Body, Framing), axum::Error> {
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
    head.put_slice(b"\r\n");
    if !keep_alive {
        head.put_slice(b"connection: close\r\n");
    }
    if streaming {
        let framing = if keep_alive {
            head.put_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        } else {
            Framing::Close
        };
        head.put_slice(b"\r\n");
        return Ok((VecDeque::from([head.freeze()]), body, framing));
    }
    let body = body.collect().await?.to_bytes();
    head.put_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    Ok((VecDeque::from([head.freeze(), body]), Body::empty(), Framing::Length))
}

/// What a direct answer is written on: a plain socket (which the hub's fan-out may share) or
/// TLS.
pub(in crate::conn) trait Transport: Send + Sized + 'static {
    /// The socket hyper is given when a request is not served here.
    type Socket: Socket;

    /// Reads what the client sent into `buf` (nothing: it closed).
    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>>;

    /// Hands over what it can of `slices`.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>>;

    /// Writes out what it holds (the TLS records of what was handed over).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ready once the socket has bytes to read (or has closed), without reading them.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Makes closing reset the connection.
    fn reset_on_close(&self);

    /// Says that nothing more will be written, where the transport can (TLS's `close_notify`),
    /// before the connection closes.
    fn poll_close(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// The transport a subscription's event stream is written on, once its request is read
    /// and what the transport held is written out: itself, or over TLS the connection with
    /// its records sealed here ([`super::tls`]). `None` when the connection is lost.
    fn for_subscription(self) -> Option<Self> {
        Some(self)
    }

    /// The socket as the hub's fan-out may write to it, when it can (not through TLS).
    fn subscriber_socket(&self, control: &Arc<Control>) -> Option<SubscriberSocket>;

    /// The connection for hyper, with `first` (read here already) put back in front; `None`
    /// if it cannot be handed over (still shared).
    fn rewound(self, first: Bytes) -> Option<Rewound<Self::Socket>>;
}

impl Transport for Arc<TcpStream> {
    type Socket = TcpStream;

    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        read_some(self, cx, buf)
    }

    /// Through a shared reference: the fan-out may hold the socket too.
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            match self.try_write_vectored(slices) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                outcome => return Poll::Ready(outcome),
            }
        }
    }

    fn poll_flush(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }

    fn subscriber_socket(&self, control: &Arc<Control>) -> Option<SubscriberSocket> {
        let socket = DirectSocket { stream: Arc::clone(self), control: Arc::clone(control) };
        Some(SubscriberSocket(Arc::new(socket)))
    }

    fn rewound(self, first: Bytes) -> Option<Rewound<TcpStream>> {
        Arc::try_unwrap(self).ok().map(|stream| Rewound { first, stream })
    }
}

/// Reads what `stream` has into `buf`, through a shared reference (the fan-out may hold the
/// socket too).
pub(super) fn read_some(
    stream: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        std::task::ready!(stream.poll_read_ready(cx))?;
        match stream.try_read(buf.initialize_unfilled()) {
            Ok(read) => {
                buf.advance(read);
                return Poll::Ready(Ok(()));
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Poll::Ready(Err(error)),
        }
    }
}

/// A connection whose first bytes were read to see what they ask for, put back in front for
/// hyper.
pub(in crate::conn) struct Rewound<S> {
    pub(super) first: Bytes,
    pub(super) stream: S,
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

impl<S: Socket> Socket for Rewound<S> {
    fn reset_on_close(&self) {
        self.stream.reset_on_close();
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
    fn consume_drops_whole_frames_then_advances_into_the_next() {
        let mut queue: VecDeque<Bytes> =
            [&b"abc"[..], b"de", b"fgh"].into_iter().map(Bytes::from_static).collect();
        consume(&mut queue, 4);
        assert_eq!(queue, [Bytes::from_static(b"e"), Bytes::from_static(b"fgh")]);
        consume(&mut queue, 4);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_chunk_is_its_size_in_hex_its_bytes_and_a_line_end() {
        let mut queue = VecDeque::new();
        push_frame(&mut queue, Bytes::from(vec![b'x'; 26]), Framing::Chunked);
        let wire: Vec<u8> = queue.iter().flat_map(|b| b.iter().copied()).collect();
        assert_eq!(wire, [&b"1a\r\n"[..], &[b'x'; 26], b"\r\n"].concat());
        let mut queue = VecDeque::new();
        push_frame(&mut queue, Bytes::from_static(b"data: x\n\n"), Framing::Close);
        assert_eq!(queue, [Bytes::from_static(b"data: x\n\n")]);
    }
}
