//! Requests served straight on their socket, past hyper: subscriptions, and the answers of the
//! AI protocols.
//!
//! An idle subscriber is the hub's commonest client, and under hyper each one kept a 16 KiB
//! read buffer, an 8 KiB write buffer and a connection task of several KiB for a request that
//! will never send another byte (BENCHMARKS.md, "where an idle subscriber's memory goes"). An
//! answer streamed through the gateway held the same 24 KiB of hyper's buffers for as long as
//! it streamed. So an HTTP/1.1 connection (plain, or over TLS once the handshake is done) whose
//! request is one of these is read here, run through the same router (limits, CORS, auth,
//! access log, the handler) and answered on the socket directly:
//!
//! - **A subscription** (`GET` of the hub's path): its event stream goes out as it is,
//!   delimited by the connection's close, and the connection closes after it. What the client
//!   sends after its head is read and dropped.
//! - **An answer** (`POST` of one of the [`DirectPaths::answers`]) with a plain body (one
//!   `Content-Length` within the server's body limit, no `Transfer-Encoding`, no `Expect`,
//!   HTTP/1.1): the body is read under the body's wait bound, and the event stream goes out in
//!   chunks. The connection stays open (unless either side says `Connection: close`), and its
//!   next request is read here again; the client leaving while the answer is being made or
//!   streamed ends it at once, which cancels the upstream.
//! - Any other answer (an error, a whole answer) goes out with its length.
//! - **Anything else** goes to hyper, with the bytes read so far put back in front
//!   ([`Rewound`]): every other request, a body in any other framing, HTTP/1.0 and HTTP/2.
//!
//! Frames ready at a wake-up leave in one vectored write ([`answer`]). The hub's fan-out may
//! write a subscription's live updates itself: to a plain socket, and over TLS once the
//! subscription's records are sealed here ([`tls`]), which they are once its request is read.
//! Every other answer over TLS goes through rustls, its frames written by the connection's
//! task.
//!
//! The bounds of the [parent module](super) hold here too: a request head is due within
//! [`Timeouts::request_head`] of accept (or of its first byte on a kept-alive connection), a
//! kept-alive connection with no request closes after [`Timeouts::idle_connection`], a body
//! that stalls for [`Timeouts::request_body`] is refused (408), a write that makes no progress
//! fails after [`Timeouts::write`], and [`ConnHandle::hang_up`] resets the connection at once.
//! Shutdown waits for the answers in flight as it does for hyper's ([`Drain`]).

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri, header};
use axum::http::{StatusCode, Version};
use axum::response::IntoResponse;
use bytes::Bytes;
use tokio::io::ReadBuf;
use tokio::sync::Notify;
use tokio::time::{Instant, timeout, timeout_at};
use tower::ServiceExt;

use super::{ClientAddr, ConnHandle, Control, Slot, Timeouts};

use crate::error::ApiError;
use crate::telemetry::count_timeout;

mod answer;
mod tls;

use answer::After;
pub(super) use answer::{Answer, Rewound, Transport};
pub(super) use tls::TlsTransport;

/// The most bytes of request head read here; past them, 431. Above the router's own limits
/// (60 KiB of target, 64 KiB of headers), so those answer first with their own words.
const MAX_HEAD_BYTES: usize = 128 * 1024;
/// The most header fields parsed; past them, 431 (the router answers above 100).
const MAX_HEAD_FIELDS: usize = 128;
/// What one read of a request asks the socket for.
const READ_STEP: usize = 2048;

/// The requests served here rather than by hyper: the router knows its routes, this layer only
/// the paths it is told.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DirectPaths {
    /// Subscribed to with `GET` (the hub's path).
    pub(crate) subscription: &'static str,
    /// Asked with `POST` for an answer that streams (the AI protocols' paths).
    pub(crate) answers: &'static [&'static str],
}

/// What a request's first bytes ask for.
#[derive(Debug, PartialEq, Eq)]
enum Asks {
    Subscription,
    Answer,
    /// Something hyper serves.
    Other,
    /// Too few bytes yet to tell.
    Unsure,
}

/// What the request line beginning with `first` asks for: a method and one of the paths
/// exactly, followed by a query or the line's next space.
fn asks(first: &[u8], paths: &DirectPaths) -> Asks {
    let subscription = [("GET", paths.subscription, Asks::Subscription)].into_iter();
    let answers = paths.answers.iter().map(|path| ("POST", *path, Asks::Answer));
    let mut unsure = false;
    for (method, path, what) in subscription.chain(answers) {
        let line = method.as_bytes().iter().chain(b" ").chain(path.as_bytes());
        if !first.iter().zip(line).all(|(got, wanted)| got == wanted) {
            continue;
        }
        match first.get(method.len() + 1 + path.len()) {
            None => unsure = true,
            Some(b'?' | b' ') => return what,
            Some(_) => {}
        }
    }
    if unsure { Asks::Unsure } else { Asks::Other }
}

/// What serving a connection's requests here needs.
#[derive(Clone)]
pub(super) struct Served {
    pub(super) addr: SocketAddr,
    pub(super) app: Router,
    pub(super) timeouts: Timeouts,
    pub(super) paths: DirectPaths,
    /// The server's bound on a request body: a longer one is hyper's to refuse.
    pub(super) max_body_bytes: usize,
    pub(super) drain: Arc<Drain>,
}

/// How a connection's request was served.
pub(super) enum Opening<T: Transport> {
    /// Not here: the connection as hyper should read it (boxed, like the answer), and its
    /// slot.
    Hyper(Box<Rewound<T::Socket>>, Slot),
    /// Answered here: what is left to write (boxed: all a streaming connection's task then
    /// holds of it is a pointer, however large its transport).
    Direct(Box<Answer<T>>),
    /// Closed, timed out or failed before there was anything to answer.
    Done,
}

/// Reads a request from `transport` (with `read` read already), its head due by `head_due`,
/// and serves it if it is one of the [`DirectPaths`]; hands the connection to hyper otherwise.
/// A kept-alive connection comes here once its next request's first bytes have arrived
/// ([`Answer::wait_for_next`]). Only the returned [`Answer`] lives on for as long as the
/// answer streams: the caller boxes this future, so that the router's state and the head's
/// buffer are freed once it is done.
pub(super) async fn open<T: Transport>(
    mut transport: T,
    mut read: Vec<u8>,
    slot: Slot,
    served: Served,
    head_due: Instant,
) -> Opening<T> {
    loop {
        let asked = asks(&read, &served.paths);
        if asked != Asks::Unsure {
            return match asked {
                Asks::Subscription => subscribe(transport, read, slot, served, head_due).await,
                Asks::Answer => answer(transport, read, slot, served, head_due).await,
                Asks::Other | Asks::Unsure => Opening::hyper(transport, read, slot),
            };
        }
        match timeout_at(head_due, read_more(&mut transport, &mut read)).await {
            Ok(Ok(1..)) => {}
            Ok(_) => return Opening::Done,
            Err(_) => {
                count_timeout("request_head");
                return Opening::Done;
            }
        }
    }
}

impl<T: Transport> Opening<T> {
    /// The connection for hyper, with what was read of it put back in front.
    pub(super) fn hyper(transport: T, read: Vec<u8>, slot: Slot) -> Self {
        match transport.rewound(Bytes::from(read)) {
            Some(rewound) => Opening::Hyper(Box::new(rewound), slot),
            None => Opening::Done,
        }
    }
}

/// Serves a subscription: the hub's fan-out is given the socket when it can write to it.
async fn subscribe<T: Transport>(
    mut transport: T,
    mut read: Vec<u8>,
    slot: Slot,
    served: Served,
    head_due: Instant,
) -> Opening<T> {
    let Some(head) = head_in_time(&mut transport, &mut read, head_due).await else {
        return Opening::Done;
    };
    let request = head.and_then(|(request, _)| bodiless(request));
    drop(read);
    match timeout_at(head_due, poll_fn(|cx| transport.poll_flush(cx))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Opening::Done,
        Err(_) => {
            count_timeout("request_head");
            return Opening::Done;
        }
    }
    let Some(transport) = transport.for_subscription() else { return Opening::Done };
    let control = Arc::new(Control::default());
    let socket = transport.subscriber_socket(&control);
    let response = respond(request, &served, &control, socket).await;
    let written = Written { after: After::Close, control, timeouts: served.timeouts, slot };
    written.open(transport, response, None).await
}

/// What an answer is written with, besides its transport and response.
struct Written {
    after: After,
    control: Arc<Control>,
    timeouts: Timeouts,
    slot: Slot,
}

impl Written {
    /// `response` to be written on `transport` (counted in `draining` until it is).
    async fn open<T: Transport>(
        self,
        transport: T,
        response: Response<Body>,
        draining: Option<Draining>,
    ) -> Opening<T> {
        let Written { after, control, timeouts, slot } = self;
        let answer = Answer::open(transport, response, after, control, timeouts, slot, draining);
        answer.await.map_or(Opening::Done, |answer| Opening::Direct(Box::new(answer)))
    }
}

/// Serves a request for an answer, when its body is plain enough to be read here; the
/// connection stays open after it when both sides allow.
async fn answer<T: Transport>(
    mut transport: T,
    mut read: Vec<u8>,
    slot: Slot,
    served: Served,
    head_due: Instant,
) -> Opening<T> {
    let timeouts = served.timeouts;
    let refuse = |transport, error: ApiError, slot| {
        let control = Arc::new(Control::default());
        let written = Written { after: After::Close, control, timeouts, slot };
        written.open(transport, error.into_response(), None)
    };
    let (request, head_length) = match head_in_time(&mut transport, &mut read, head_due).await {
        None => return Opening::Done,
        Some(Err(error)) => return refuse(transport, error, slot).await,
        Some(Ok(head)) => head,
    };
    let Some(length) = plain_body_length(&request, served.max_body_bytes) else {
        return Opening::hyper(transport, read, slot);
    };
    let Some(draining) = served.drain.enter() else {
        return Opening::Done;
    };
    let body = read.split_off(head_length);
    drop(read);
    let idle = served.timeouts.request_body;
    let (body, mut rest) = match read_body(&mut transport, body, length, idle).await {
        Ok(read) => read,
        Err(Refusal::Closed) => return Opening::Done,
        Err(Refusal::Answer(error)) => return refuse(transport, error, slot).await,
    };
    let keep_alive = !closes(request.headers());
    let request = request.map(|()| Body::from(body));
    let control = Arc::new(Control::default());
    let response = respond(Ok(request), &served, &control, None);
    let Some(response) = while_client_stays(&mut transport, &mut rest, response).await else {
        return Opening::Done;
    };
    let after = if keep_alive { After::KeepAlive { read: rest } } else { After::Close };
    let written = Written { after, control, timeouts, slot };
    written.open(transport, response, Some(draining)).await
}

/// Runs `work` while the client stays: `None` once it closes (which drops `work`, and so
/// cancels what it asked for). What the client sends meanwhile is kept in `keep`.
async fn while_client_stays<T: Transport, F: Future>(
    transport: &mut T,
    keep: &mut Vec<u8>,
    work: F,
) -> Option<F::Output> {
    let mut work = pin!(work);
    poll_fn(|cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        answer::poll_client_gone(transport, Some(keep), cx).map(|()| None)
    })
    .await
}

/// The answer to `request` (or to the failure to read it) through the router, with `socket`
/// given to the handler for the hub's fan-out to write to.
async fn respond(
    request: Result<Request<Body>, ApiError>,
    served: &Served,
    control: &Arc<Control>,
    socket: Option<SubscriberSocket>,
) -> Response<Body> {
    let mut request = match request {
        Ok(request) => request,
        Err(error) => return error.into_response(),
    };
    request.extensions_mut().insert(ConnectInfo(ClientAddr(served.addr)));
    request.extensions_mut().insert(ConnHandle::connection(control));
    if let Some(socket) = socket {
        request.extensions_mut().insert(socket);
    }
    match served.app.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Why no request came out of a head.
enum Refusal {
    /// The client closed, or the socket failed: nothing to answer.
    Closed,
    /// A request this server refuses, with the answer that says why.
    Answer(ApiError),
}

/// Reads into `buf` after what it holds; the bytes read (0: the client closed).
async fn read_more<T: Transport>(transport: &mut T, buf: &mut Vec<u8>) -> io::Result<usize> {
    let start = buf.len();
    // Into the room there is (a body's is reserved whole), but at most 64 KiB of it zeroed
    // per read, and at least a step's.
    let room = (buf.capacity() - start).clamp(READ_STEP, 64 * 1024);
    buf.resize(start + room, 0);
    let outcome = poll_fn(|cx| {
        let mut read = ReadBuf::new(&mut buf[start..]);
        std::task::ready!(transport.poll_read_some(cx, &mut read))?;
        Poll::Ready(Ok(read.filled().len()))
    })
    .await;
    buf.truncate(start + outcome.as_ref().map_or(0, |read| *read));
    outcome
}

/// [`read_head`] by `due`: `None` when there is nothing to answer (the client closed, or its
/// head was not in time), else the head or what refuses it.
async fn head_in_time<T: Transport>(
    transport: &mut T,
    buf: &mut Vec<u8>,
    due: Instant,
) -> Option<Result<(Request<()>, usize), ApiError>> {
    match timeout_at(due, read_head(transport, buf)).await {
        Err(_) => {
            count_timeout("request_head");
            None
        }
        Ok(Err(Refusal::Closed)) => None,
        Ok(Err(Refusal::Answer(error))) => Some(Err(error)),
        Ok(Ok(head)) => Some(Ok(head)),
    }
}

/// Reads on into `buf` until it holds a whole request head: the request (with no body yet)
/// and the head's length in `buf`.
async fn read_head<T: Transport>(
    transport: &mut T,
    buf: &mut Vec<u8>,
) -> Result<(Request<()>, usize), Refusal> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(head);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(Refusal::Answer(head_too_large()));
        }
        match read_more(transport, buf).await {
            Ok(1..) => {}
            Ok(0) | Err(_) => return Err(Refusal::Closed),
        }
    }
}

/// Reads a body of `length` bytes, of which `body` holds the first: the body, and what came
/// after it (the start of the next request). At most `idle` may pass between two reads.
async fn read_body<T: Transport>(
    transport: &mut T,
    mut body: Vec<u8>,
    length: usize,
    idle: std::time::Duration,
) -> Result<(Bytes, Vec<u8>), Refusal> {
    body.reserve_exact(length.saturating_sub(body.len()));
    while body.len() < length {
        match timeout(idle, read_more(transport, &mut body)).await {
            Ok(Ok(1..)) => {}
            Ok(_) => return Err(Refusal::Closed),
            Err(_) => return Err(Refusal::Answer(crate::body::stalled(idle))),
        }
    }
    let rest = if body.len() > length { body.split_off(length) } else { Vec::new() };
    Ok((Bytes::from(body), rest))
}

fn head_too_large() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
        format!("at most {MAX_HEAD_BYTES} bytes of request head are accepted"),
    )
}

/// The request in `head` (with no body) and the head's length, or `None` while the head is
/// incomplete.
fn parse_head(head: &[u8]) -> Result<Option<(Request<()>, usize)>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEAD_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    let malformed =
        |what: String| Refusal::Answer(ApiError::bad_request("malformed_request", what));
    let length = match parsed.parse(head) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(length)) => length,
        Err(httparse::Error::TooManyHeaders) => return Err(Refusal::Answer(head_too_large())),
        Err(error) => return Err(malformed(format!("the request head is malformed: {error}"))),
    };
    let target = parsed.path.unwrap_or_default();
    let uri: Uri = target.parse().map_err(|_| {
        Refusal::Answer(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target ({} bytes) cannot be read", target.len()),
        ))
    })?;
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| malformed("the request method is not valid".to_owned()))?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let mut request = Request::builder().method(method).uri(uri).version(version);
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| malformed(format!("{:?} is not a header name", field.name)))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| malformed(format!("the {name} header's value is not valid")))?;
        request = request.header(name, value);
    }
    let request = request.body(()).map_err(|e| malformed(e.to_string()))?;
    Ok(Some((request, length)))
}

/// A subscription's request, which carries no body.
fn bodiless(request: Request<()>) -> Result<Request<Body>, ApiError> {
    let headers = request.headers();
    let has_body = headers.get(header::CONTENT_LENGTH).is_some_and(|length| length != "0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return Err(ApiError::bad_request(
            "malformed_request",
            "a subscription request carries no body",
        ));
    }
    Ok(request.map(|()| Body::empty()))
}

/// The length of `request`'s body when it is plain enough to read here: HTTP/1.1, one
/// `Content-Length` of digits within `limit`, and no `Transfer-Encoding`, `Expect` or
/// `Upgrade`. Anything else is hyper's (which also refuses what should be refused).
fn plain_body_length(request: &Request<()>, limit: usize) -> Option<usize> {
    let headers = request.headers();
    let framed_otherwise = [header::TRANSFER_ENCODING, header::EXPECT, header::UPGRADE]
        .iter()
        .any(|name| headers.contains_key(name));
    if request.version() != Version::HTTP_11 || framed_otherwise {
        return None;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(length), None) = (lengths.next(), lengths.next()) else { return None };
    let digits = length.as_bytes();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let length: usize = length.to_str().ok()?.parse().ok()?;
    (length <= limit).then_some(length)
}

/// Whether the client asks to close the connection after this request.
fn closes(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// The answers served here that are in flight, which shutdown waits for as it does for
/// hyper's connections. Once shutdown begins, no new one starts, and a kept-alive connection
/// closes instead of waiting for its next request.
#[derive(Debug, Default)]
pub(super) struct Drain {
    open: AtomicUsize,
    closing: AtomicBool,
    changed: Notify,
}

/// One answer in flight; its end is counted when dropped.
pub(super) struct Draining(Arc<Drain>);

impl Drop for Draining {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

impl Drain {
    /// An answer begins, unless shutdown has.
    fn enter(self: &Arc<Self>) -> Option<Draining> {
        self.open.fetch_add(1, Ordering::AcqRel);
        let draining = Draining(Arc::clone(self));
        (!self.closing.load(Ordering::Acquire)).then_some(draining)
    }

    /// Resolves once `until` holds, checked each time the drain changes.
    async fn wait_for(&self, until: impl Fn(&Self) -> bool) {
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if until(self) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once shutdown has begun.
    pub(super) async fn closing(&self) {
        self.wait_for(|drain| drain.closing.load(Ordering::Acquire)).await;
    }

    /// Begins shutdown, and resolves once no answer is in flight.
    pub(super) async fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.changed.notify_waiters();
        self.wait_for(|drain| drain.open.load(Ordering::Acquire) == 0).await;
    }
}

/// A request extension: the socket the subscribe handler may give the hub's fan-out.
#[derive(Debug, Clone)]
pub(crate) struct SubscriberSocket(pub(crate) Arc<dyn sluice_hub::SocketWriter>);

/// A response extension: the hub's hand-over for a subscription given a [`SubscriberSocket`],
/// which the writer of its stream follows.
#[derive(Debug, Clone)]
pub(crate) struct DirectHandle(pub(crate) Arc<sluice_hub::DirectWrite>);

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: DirectPaths = DirectPaths {
        subscription: "/.well-known/mercure",
        answers: &["/v1/chat/completions", "/v1/messages"],
    };

    #[test]
    fn only_the_paths_themselves_with_their_methods_are_served_here() {
        let asks = |first: &[u8]| asks(first, &PATHS);
        assert_eq!(asks(b"GET /.well-known/mercure?topic=a HTTP/1.1"), Asks::Subscription);
        assert_eq!(asks(b"GET /.well-known/mercure HTTP/1.1"), Asks::Subscription);
        assert_eq!(asks(b"POST /v1/chat/completions HTTP/1.1"), Asks::Answer);
        assert_eq!(asks(b"POST /v1/messages?beta=true HTTP/1.1"), Asks::Answer);
        assert_eq!(asks(b"GET /.well-known/mercure/subscriptions HTTP/1.1"), Asks::Other);
        assert_eq!(asks(b"POST /.well-known/mercure HTTP/1.1"), Asks::Other);
        assert_eq!(asks(b"GET /v1/chat/completions HTTP/1.1"), Asks::Other);
        assert_eq!(asks(b"POST /v1/messages/count_tokens HTTP/1.1"), Asks::Other);
        assert_eq!(asks(b"GET /.well-known/mercurex HTTP/1.1"), Asks::Other);
        assert_eq!(asks(b"PRI * HTTP/2.0\r\n"), Asks::Other);
        assert_eq!(asks(b"POST /x"), Asks::Other);
        for unsure in [&b""[..], b"G", b"PO", b"GET /.well-known/merc", b"POST /v1/messages"] {
            assert_eq!(asks(unsure), Asks::Unsure, "{:?}", String::from_utf8_lossy(unsure));
        }
    }

    #[test]
    fn a_head_is_parsed_once_complete_and_a_subscription_with_a_body_is_refused() {
        assert!(matches!(
            parse_head(b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nHost: x"),
            Ok(None)
        ));
        let head = b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nLast-Event-ID: 7\r\n\r\nrest";
        let Ok(Some((request, length))) = parse_head(head) else { panic!("not parsed") };
        assert_eq!(length, head.len() - 4);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().query(), Some("topic=a"));
        assert_eq!(request.headers()["last-event-id"], "7");
        assert!(bodiless(request).is_ok());
        let with_body =
            b"GET /.well-known/mercure?topic=a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let Ok(Some((request, _))) = parse_head(with_body) else { panic!("not parsed") };
        assert!(matches!(bodiless(request), Err(e) if e.status() == 400));
        assert!(matches!(
            parse_head(b"GET /x HTTP/1.1\r\nbad header\r\n\r\n"),
            Err(Refusal::Answer(_))
        ));
    }

    #[test]
    fn only_a_body_of_one_plain_length_within_the_limit_is_read_here() {
        let length = |head: &str| {
            let Ok(Some((request, _))) = parse_head(head.as_bytes()) else { panic!("{head}") };
            plain_body_length(&request, 1000)
        };
        let post = "POST /v1/messages HTTP/1.1\r\n";
        assert_eq!(length(&format!("{post}Content-Length: 12\r\n\r\n")), Some(12));
        assert_eq!(length(&format!("{post}content-length: 0\r\n\r\n")), Some(0));
        assert_eq!(length(&format!("{post}Content-Length: 1000\r\n\r\n")), Some(1000));
        for for_hyper in [
            format!("{post}Content-Length: 1001\r\n\r\n"),
            format!("{post}\r\n"),
            format!("{post}Content-Length: +12\r\n\r\n"),
            format!("{post}Content-Length: 12\r\nContent-Length: 12\r\n\r\n"),
            format!("{post}Transfer-Encoding: chunked\r\n\r\n"),
            format!("{post}Content-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("{post}Content-Length: 12\r\nExpect: 100-continue\r\n\r\n"),
            format!("{post}Content-Length: 12\r\nUpgrade: websocket\r\n\r\n"),
            "POST /v1/messages HTTP/1.0\r\nContent-Length: 12\r\n\r\n".to_owned(),
        ] {
            assert_eq!(length(&for_hyper), None, "{for_hyper}");
        }
    }

    #[test]
    fn a_connection_header_with_close_among_its_tokens_closes() {
        let headers = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONNECTION, HeaderValue::from_static(value));
            headers
        };
        assert!(closes(&headers("close")));
        assert!(closes(&headers("keep-alive, Close")));
        assert!(!closes(&headers("keep-alive")));
        assert!(!closes(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn shutdown_waits_for_the_answers_in_flight_and_refuses_new_ones() {
        let drain = Arc::new(Drain::default());
        let answer = drain.enter().expect("open before shutdown");
        let closed = tokio::spawn({
            let drain = Arc::clone(&drain);
            async move { drain.close().await }
        });
        drain.closing().await;
        assert!(drain.enter().is_none(), "no answer starts once shutdown has");
        tokio::task::yield_now().await;
        assert!(!closed.is_finished(), "an answer is still in flight");
        drop(answer);
        closed.await.unwrap();
    }
}
