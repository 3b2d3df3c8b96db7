//! Serving connections: the accept loop, the connection limit, and a bound on every wait a
//! client can impose.
//!
//! Each accepted socket is wrapped in a [`Conn`] that enforces what hyper alone does not:
//!
//! - **Request head**: a new connection has [`Timeouts::request_head`] from accept to deliver a
//!   whole request head; a kept-alive one has as long from the first byte of its next request.
//!   Slowloris clients, trickling a header byte every few seconds, are closed at that bound.
//! - **Idle keep-alive**: a connection with no request in flight and no byte arriving is
//!   closed after [`Timeouts::idle_connection`] (longer than nginx's upstream keep-alive, so a
//!   proxy closes first and never reuses a socket the server is closing).
//! - **Writes**: a write that makes no progress for [`Timeouts::write`] (a subscriber that
//!   stopped reading, its socket buffers full) fails, which resets the connection (the kernel
//!   drops what it held for a peer that reads no more).
//! - **Hang-up**: the hub can close a connection at once ([`ConnHandle::hang_up`]) when it cuts
//!   a slow subscriber off, even while a write to it is stuck; the socket is reset, so the
//!   kernel frees its send queue instead of holding it for the peer.
//! - **HTTP/2 streams**: one connection carries many, so both of the above apply per stream
//!   too: a hang-up resets the request's stream (RST_STREAM), and a stream whose window stays
//!   closed with a frame waiting for [`Timeouts::write`] is reset, while the socket (and so
//!   the connection's own write bound) still takes the other streams' frames ([`Watched`]).
//!
//! An HTTP/1.1 connection (plain or over TLS) whose request is a subscription, or asks for an
//! answer of the AI protocols, is served past hyper, straight on its socket ([`direct`]),
//! under the same bounds.
//!
//! Every bound that is hit is counted in `sluice_timeouts_total{wait=…}`. Past the connection
//! limit, the server still accepts, answers 503 with `Retry-After` and closes, so clients
//! learn to come back instead of hanging in the kernel's backlog.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep, sleep};
use tower::ServiceExt;

use crate::config::Timeouts;
use crate::error::ApiError;
use crate::telemetry::count_timeout;

mod direct;

pub(crate) use direct::{DirectHandle, DirectPaths, SubscriberSocket};

/// How long to wait before accepting again after the OS refused (out of files, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long, after the shutdown signal, open connections get to finish before the server
/// stops anyway. Event streams end at once (the hub cuts them); this bounds the rest.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The peer address of a connection, for handlers (`ConnectInfo<ClientAddr>`).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// What a handler may do to its own connection, or over HTTP/2 its own stream (a request
/// extension).
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle(Hangs);

#[derive(Debug, Clone)]
enum Hangs {
    /// An HTTP/1.1 connection: one request at a time.
    Connection(Arc<Control>),
    /// One HTTP/2 stream: the connection's other streams go on.
    Stream(Arc<StreamWatch>),
}

impl ConnHandle {
    /// The handle of a whole connection (HTTP/1.1).
    fn connection(control: &Arc<Control>) -> Self {
        ConnHandle(Hangs::Connection(Arc::clone(control)))
    }

    /// Closes the connection now: pending and later reads and writes fail, and the socket is
    /// reset so the kernel drops what it still had to send. Over HTTP/2, resets the request's
    /// stream (RST_STREAM) and drops what is queued for it, however closed its window.
    pub(crate) fn hang_up(&self) {
        match &self.0 {
            Hangs::Connection(control) => {
                control.killed.store(true, Ordering::Release);
                control.read_waker.wake();
                control.write_waker.wake();
            }
            Hangs::Stream(watch) => {
                watch.killed.store(true, Ordering::Release);
                watch.waker.wake();
            }
        }
    }
}

/// One HTTP/2 stream's bounds, which the connection's cannot give: its socket may take every
/// write while this stream's window stays closed. Shared by the stream's task ([`Watched`]),
/// its response body ([`Tracked`]) and its [`ConnHandle`].
#[derive(Debug, Default)]
struct StreamWatch {
    killed: AtomicBool,
    /// Wakes the stream's task.
    waker: AtomicWaker,
    /// Since when the body has handed hyper a frame that hyper has not sent: it asks for the
    /// next frame only once the last one is handed to h2, so this lasts while the stream's
    /// window is closed.
    unsent_since: std::sync::Mutex<Option<Instant>>,
}

impl StreamWatch {
    fn set_unsent_since(&self, since: Option<Instant>) {
        *self.unsent_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = since;
    }

    fn unsent_since(&self) -> Option<Instant> {
        *self.unsent_since.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

std::thread_local! {
    /// The watch of the HTTP/2 stream whose request the service has just taken, for the
    /// executor to attach to that stream's task. hyper calls the service and then spawns the
    /// stream's task, one right after the other on the same thread, and offers no other way
    /// to reach a stream from its request.
    static STARTING: std::cell::RefCell<Option<Arc<StreamWatch>>> =
        const { std::cell::RefCell::new(None) };
}

/// Spawns hyper's tasks on tokio, wrapping each HTTP/2 stream's in a [`Watched`], so that the
/// stream can be reset by its [`ConnHandle`] or its write bound.
#[derive(Debug, Clone, Copy)]
struct StreamExecutor {
    write_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, task: F) {
        match STARTING.with(|starting| starting.borrow_mut().take()) {
            Some(watch) => {
                let stall = Box::pin(sleep(self.write_timeout));
                let write_timeout = self.write_timeout;
                tokio::spawn(Watched { task: Box::pin(task), watch, stall, write_timeout });
            }
            None => {
                tokio::spawn(task);
            }
        }
    }
}

/// An HTTP/2 stream's task, ended early (which makes h2 reset the stream, RST_STREAM with
/// CANCEL, and drop what it queued for it) when its [`ConnHandle`] hangs up, or when its
/// body has had a frame unsent for the write timeout (counted as a `write` timeout).
struct Watched<F> {
    task: Pin<Box<F>>,
    watch: Arc<StreamWatch>,
    stall: Pin<Box<Sleep>>,
    write_timeout: Duration,
}

impl<F: Future> Future for Watched<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.watch.waker.register(cx.waker());
        if self.watch.killed.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(output) = self.task.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if let Some(since) = self.watch.unsent_since() {
            let due = since + self.write_timeout;
            if self.stall.deadline() != due {
                self.stall.as_mut().reset(due);
            }
            if self.stall.as_mut().poll(cx).is_ready() {
                count_timeout("write");
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    }
}

/// State shared by a connection's socket wrapper and the requests on it.
#[derive(Debug, Default)]
struct Control {
    /// Requests whose response is not finished.
    in_flight: AtomicUsize,
    /// Requests finished so far: a change restarts the idle clock.
    finished: AtomicU64,
    killed: AtomicBool,
    read_waker: AtomicWaker,
    write_waker: AtomicWaker,
}

/// Marks a request in flight until its response body is dropped.
#[derive(Debug)]
struct InFlight(Arc<Control>);

impl InFlight {
    fn start(control: &Arc<Control>) -> Self {
        control.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(control))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        // The socket wrapper may be parked on a read: let it restart its idle clock.
        self.0.read_waker.wake();
    }
}

/// A response body that keeps its request counted as in flight until it is dropped, and over
/// HTTP/2 tells its stream's watch whether a frame it handed out is still unsent.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
    watch: Option<Arc<StreamWatch>>,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Some(watch) = &self.watch {
            // Asked again: the last frame was sent. A new one is unsent until the next ask.
            let handed_out = matches!(&polled, Poll::Ready(Some(Ok(frame))) if frame.is_data());
            watch.set_unsent_since(handed_out.then(Instant::now));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Where a connection with nothing in flight is in its wait for a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// Just accepted: the first head is due `request_head` after accept.
    Fresh,
    /// Idle between requests: closed after `idle_connection` without a byte.
    Idle,
    /// Bytes of a head arrived: the rest is due `request_head` after the first.
    InHead,
}

/// A connection's byte stream: TCP, or TLS over TCP.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Makes closing reset the connection: the kernel drops what it still had to send.
    fn reset_on_close(&self);
}

impl Socket for TcpStream {
    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl<S: Socket> Socket for Box<S> {
    fn reset_on_close(&self) {
        (**self).reset_on_close();
    }
}

impl Socket for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        let _ = self.get_ref().0.set_zero_linger();
    }
}

/// A socket with the bounds of the [module docs](self).
struct Conn<S> {
    stream: S,
    control: Arc<Control>,
    timeouts: Timeouts,
    waiting: Waiting,
    /// When the current wait for a head ends.
    deadline: Pin<Box<Sleep>>,
    /// The `finished` count the current wait started from.
    seen_finished: u64,
    /// Armed while a write is pending.
    write_stall: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl<S: Socket> Conn<S> {
    fn new(stream: S, control: Arc<Control>, timeouts: Timeouts, slot: Slot) -> Self {
        Conn {
            stream,
            control,
            timeouts,
            waiting: Waiting::Fresh,
            deadline: Box::pin(sleep(timeouts.request_head)),
            seen_finished: 0,
            write_stall: None,
            _slot: slot,
        }
    }

    fn killed(&self) -> Option<io::Error> {
        if !self.control.killed.load(Ordering::Acquire) {
            return None;
        }
        // Reset rather than close: the peer will not read what is queued, so do not keep it.
        self.stream.reset_on_close();
        Some(io::Error::new(io::ErrorKind::ConnectionAborted, "hung up by the server"))
    }

    /// Called when a read found nothing: fails once the wait for a head has lasted too long.
    fn check_head_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.control.in_flight.load(Ordering::Acquire) > 0 {
            return Poll::Pending;
        }
        let finished = self.control.finished.load(Ordering::Acquire);
        if finished != self.seen_finished {
            self.seen_finished = finished;
            self.waiting = Waiting::Idle;
            let until = Instant::now() + self.timeouts.idle_connection;
            self.deadline.as_mut().reset(until);
        }
        ready!(self.deadline.as_mut().poll(cx));
        count_timeout(match self.waiting {
            Waiting::Idle => "idle_connection",
            Waiting::Fresh | Waiting::InHead => "request_head",
        });
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request in time")))
    }

    /// Bytes arrived with nothing in flight: a head has begun.
    fn head_began(&mut self) {
        if self.waiting == Waiting::Idle && self.control.in_flight.load(Ordering::Acquire) == 0 {
            self.waiting = Waiting::InHead;
            let until = Instant::now() + self.timeouts.request_head;
            self.deadline.as_mut().reset(until);
        }
    }

    /// Passes a write's outcome through, failing it once it has been pending too long.
    fn bound_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.write_stall = None;
            return outcome;
        }
        let write = self.timeouts.write;
        let stall = self.write_stall.get_or_insert_with(|| Box::pin(sleep(write)));
        ready!(stall.as_mut().poll(cx));
        count_timeout("write");
        // The client reads nothing more: reset, so the kernel drops what it still holds for it
        // rather than keep it queued behind a FIN until the peer reads or times out.
        self.stream.reset_on_close();
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")))
    }
}

impl<S: Socket> AsyncRead for Conn<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(error) = self.killed() {
            return Poll::Ready(Err(error));
        }
        self.control.read_waker.register(cx.waker());
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.head_began();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => self.check_head_wait(cx),
        }
    }
}

impl<S: Socket> AsyncWrite for Conn<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = self.killed() {
            return Poll::Ready(Err(error));
        }
        self.control.write_waker.register(cx.waker());
        let outcome = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.bound_write(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(error) = self.killed() {
            return Poll::Ready(Err(error));
        }
        self.control.write_waker.register(cx.waker());
        let outcome = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.bound_write(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(error) = self.killed() {
            return Poll::Ready(Err(error));
        }
        let outcome = Pin::new(&mut self.stream).poll_flush(cx);
        self.bound_write(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// One admitted connection's place under the limit; freed when dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("sluice_connections_open").decrement(1.0);
    }
}

/// Admits at most `limit` connections at once.
#[derive(Debug)]
struct Admission {
    open: Arc<AtomicUsize>,
    limit: usize,
}

impl Admission {
    fn admit(&self) -> Option<Slot> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics::gauge!("sluice_connections_open").increment(1.0);
        Some(Slot(Arc::clone(&self.open)))
    }
}

/// Reads what the client sent (so closing does not reset the connection), answers 503.
async fn refuse(mut stream: TcpStream) {
    let error = ApiError::unavailable("the server is at its connection limit; retry shortly", 1);
    let body = error.body();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Retry-After: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut request = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut request)).await;
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// How a [`serve_router`] call is set up.
#[derive(Debug, Clone)]
pub(crate) struct ServeConfig {
    pub(crate) max_connections: usize,
    pub(crate) timeouts: Timeouts,
    /// TLS (and so HTTP/2 by ALPN); without it, HTTP/1.1 and HTTP/2 with prior knowledge.
    pub(crate) tls: Option<Arc<crate::tls::Tls>>,
    /// The requests served [directly](direct) on an HTTP/1.1 connection.
    pub(crate) direct: DirectPaths,
    /// The server's bound on a request body.
    pub(crate) max_body_bytes: usize,
}

/// An accepted connection, with what serving it needs.
struct Accepted {
    slot: Slot,
    builder: Arc<auto::Builder<StreamExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    served: direct::Served,
}

/// A connection's request being read and served [directly](direct), boxed: its state (the
/// router's, a head's) would otherwise size the task of every connection for as long as a
/// direct answer lasts.
type Opening<T> = Pin<Box<dyn Future<Output = direct::Opening<T>> + Send>>;

/// Serves a plain connection: its requests [directly](direct) while they are subscriptions
/// or answers, the rest with hyper. Not itself async: an async fn's arguments stay in its
/// future for as long as it runs, and this one's would in every connection's task.
fn serve_plain(stream: TcpStream, accepted: Accepted) -> impl Future<Output = ()> + Send {
    let Accepted { slot, builder, watcher, served } = accepted;
    let due = Instant::now() + served.timeouts.request_head;
    let opening = Box::pin(direct::open(Arc::new(stream), Vec::new(), slot, served.clone(), due));
    serve_opened(opening, builder, watcher, served)
}

/// Serves a connection as `opening` finds it: answers directly, one after the other while
/// the connection stays open, until a request is hyper's (which is given the connection, and
/// its slot, from there on). A task keeps a slot for every value it holds across an await, for
/// as long as it lives: so the opening's result holds its answer or its connection boxed, a
/// kept-alive connection waits for its next request with only the answer's remains, and
/// hyper's state is boxed too.
async fn serve_opened<T: direct::Transport>(
    mut opening: Opening<T>,
    builder: Arc<auto::Builder<StreamExecutor>>,
    watcher: hyper_util::server::graceful::Watcher,
    served: direct::Served,
) {
    loop {
        match opening.await {
            direct::Opening::Direct(mut answer) => {
                if !answer.write().await {
                    return;
                }
                let idle = served.timeouts.idle_connection;
                if !answer.wait_for_next(idle, &served.drain).await {
                    return;
                }
                match next_request(*answer, &served) {
                    Some(next) => opening = next,
                    None => return,
                }
            }
            direct::Opening::Hyper(stream, slot) => {
                let accepted = Accepted { slot, builder, watcher, served };
                return Box::pin(serve_connection(stream, accepted)).await;
            }
            direct::Opening::Done => return,
        }
    }
}

/// The reading of a kept-alive connection's next request, once `answer` is written. Not
/// async: what it unpacks is not kept in the connection's task.
fn next_request<T: direct::Transport>(
    answer: direct::Answer<T>,
    served: &direct::Served,
) -> Option<Opening<T>> {
    let (transport, read, slot) = answer.kept_alive()?;
    let due = Instant::now() + served.timeouts.request_head;
    Some(Box::pin(direct::open(transport, read, slot, served.clone(), due)))
}

/// Serves a TLS connection as a plain one, once its handshake is done ([`open_tls`]). Not
/// itself async, as [`serve_plain`] is not.
fn serve_tls(
    stream: TcpStream,
    tls: Arc<crate::tls::Tls>,
    accepted: Accepted,
) -> impl Future<Output = ()> + Send {
    let Accepted { slot, builder, watcher, served } = accepted;
    let opening = Box::pin(open_tls(stream, tls, slot, served.clone()));
    serve_opened(opening, builder, watcher, served)
}

/// The TLS handshake (part of the request head's wait), then HTTP/2 for hyper, and HTTP/1.1
/// read like a plain connection. Boxed by its caller: the handshake's state (6 KiB) and the
/// opening's would otherwise size the task of every connection for its life.
async fn open_tls(
    stream: TcpStream,
    tls: Arc<crate::tls::Tls>,
    slot: Slot,
    served: direct::Served,
) -> direct::Opening<direct::TlsTransport> {
    let head = served.timeouts.request_head;
    let stream = match tokio::time::timeout(head, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::debug!(%error, "a TLS handshake failed");
            return direct::Opening::Done;
        }
        Err(_) => {
            count_timeout("request_head");
            return direct::Opening::Done;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let transport = direct::TlsTransport::new(stream);
    if h2 {
        return direct::Opening::hyper(transport, Vec::new(), slot);
    }
    direct::open(transport, Vec::new(), slot, served, Instant::now() + head).await
}

/// Serves one connection: `app` behind the bounds of [`Conn`], HTTP/1.1 or HTTP/2.
async fn serve_connection<S: Socket>(stream: S, accepted: Accepted) {
    let Accepted { slot, builder, watcher, served } = accepted;
    let direct::Served { addr, app, timeouts, .. } = served;
    let control = Arc::new(Control::default());
    let io = TokioIo::new(Conn::new(stream, Arc::clone(&control), timeouts, slot));
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(ClientAddr(addr)));
        // Over HTTP/2 one connection carries many streams: never hang them all up for one.
        let watch = if request.version() < axum::http::Version::HTTP_2 {
            request.extensions_mut().insert(ConnHandle::connection(&control));
            None
        } else {
            let watch = Arc::new(StreamWatch::default());
            request.extensions_mut().insert(ConnHandle(Hangs::Stream(Arc::clone(&watch))));
            STARTING.with(|starting| *starting.borrow_mut() = Some(Arc::clone(&watch)));
            Some(watch)
        };
        let in_flight = InFlight::start(&control);
        let response = app.clone().oneshot(request);
        async move {
            let response: Response<Body> = response.await?;
            Ok::<_, std::convert::Infallible>(response.map(|body| Tracked {
                body,
                _in_flight: in_flight,
                watch,
            }))
        }
    });
    let connection =
        watcher.watch(builder.serve_connection_with_upgrades(io, service).into_owned());
    if let Err(error) = connection.await {
        tracing::debug!(%error, "connection ended with an error");
    }
}

/// Accepts connections on `listener` and spawns a task to serve each, until `shutdown`
/// resolves; returns what tracks the connections still open.
async fn accept_until(
    listener: TcpListener,
    app: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (GracefulShutdown, Arc<direct::Drain>) {
    let mut builder = auto::Builder::new(StreamExecutor { write_timeout: config.timeouts.write });
    // The head bounds live in `Conn`, which also knows about kept-alive connections.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let admission =
        Admission { open: Arc::new(AtomicUsize::new(0)), limit: config.max_connections };
    let graceful = GracefulShutdown::new();
    let drain = Arc::new(direct::Drain::default());
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return (graceful, drain),
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                metrics::counter!("sluice_accept_errors_total").increment(1);
                // Out of files, say: once a second in the log is enough to say so.
                if last_accept_error.is_none_or(|at| at.elapsed() > Duration::from_secs(1)) {
                    tracing::warn!(%error, "accept failed");
                    last_accept_error = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Some(slot) = admission.admit() else {
            metrics::counter!("sluice_connections_refused_total").increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let served = direct::Served {
            addr,
            app: app.clone(),
            timeouts: config.timeouts,
            paths: config.direct,
            max_body_bytes: config.max_body_bytes,
            drain: Arc::clone(&drain),
        };
        let accepted =
            Accepted { slot, builder: Arc::clone(&builder), watcher: graceful.watcher(), served };
        match &config.tls {
            None => tokio::spawn(serve_plain(stream, accepted)),
            Some(tls) => tokio::spawn(serve_tls(stream, Arc::clone(tls), accepted)),
        };
    }
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, runs
/// `on_shutdown` (which ends the subscriptions), gives open connections [`SHUTDOWN_GRACE`] to
/// finish, and runs `after` (which closes the store).
pub(crate) async fn serve_router(
    listener: TcpListener,
    app: Router,
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_shutdown: impl Future<Output = ()> + Send,
    after: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    // The accept loop runs as a task of the runtime, not on the thread that awaits `serve`:
    // a connection spawned from a worker starts on that worker's next turn, where one spawned
    // from outside costs a wake-up of a worker thread (an eventfd write, a futex and, on a
    // pinned server, a context switch) per connection.
    let (graceful, drain) = tokio::spawn(accept_until(listener, app, config, shutdown))
        .await
        .map_err(io::Error::other)?;
    on_shutdown.await;
    let finished = async { tokio::join!(graceful.shutdown(), drain.close()) };
    if tokio::time::timeout(SHUTDOWN_GRACE, finished).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open at shutdown: closing them");
    }
    after.await;
    Ok(())
}
