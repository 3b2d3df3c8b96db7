//! A connection served directly over TLS: through rustls while its request is read, and for
//! every answer that keeps its connection; a subscription's event stream in records sealed
//! here ([`Sealer`]) once its request is read, so that an idle subscriber holds a key, not a
//! rustls connection with its buffers (BENCHMARKS.md, "memory per idle subscriber, by
//! transport").

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::super::Control;
use super::answer::read_some;
use super::{Rewound, SubscriberSocket, Transport};
use crate::tls::Sealer;
use sluice_hub::SocketWriter;

/// A TLS connection's transport.
pub(in crate::conn) enum TlsTransport {
    /// Through rustls (boxed: a subscription drops it for [`Sealed`], which is smaller).
    Rustls(Box<TlsStream<TcpStream>>),
    /// A subscription's event stream, sealed here, which the hub's fan-out may write to too.
    Sealed(Arc<Sealed>),
}

impl TlsTransport {
    /// A connection whose handshake is done.
    pub(in crate::conn) fn new(stream: TlsStream<TcpStream>) -> Self {
        TlsTransport::Rustls(Box::new(stream))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            TlsTransport::Rustls(stream) => stream.get_ref().0,
            TlsTransport::Sealed(sealed) => &sealed.stream,
        }
    }
}

/// A connection whose records are sealed here, shared by its task and the hub's fan-out (as a
/// plain subscriber's socket is): whichever writes seals its frames and writes the records
/// under one lock, so records leave in the order they were sealed. What the client sends is
/// read but not decrypted (a subscription drops it anyway; its close still ends the
/// subscription).
pub(in crate::conn) struct Sealed {
    stream: TcpStream,
    records: Mutex<Records>,
}

/// The sealing state of a [`Sealed`] connection.
struct Records {
    sealer: Sealer,
    /// Records sealed and not yet written in full, from `written` on; no allocation while
    /// every record is out.
    unsent: Vec<u8>,
    written: usize,
    /// A `close_notify` is sealed: nothing more will be.
    closed: bool,
}

impl Records {
    /// Writes what `stream` takes now of the unsent records: true once none is left.
    fn write_out(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while self.written < self.unsent.len() {
            match stream.try_write(&self.unsent[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.written += written,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(error) => return Err(error),
            }
        }
        self.unsent = Vec::new();
        self.written = 0;
        Ok(true)
    }

    /// Seals what it can of `slices` after the unsent records and writes what the socket
    /// takes: how many bytes of plaintext were taken.
    fn seal(&mut self, slices: &[IoSlice<'_>], stream: &TcpStream) -> io::Result<(usize, bool)> {
        let taken = self.sealer.seal(slices, &mut self.unsent)?;
        Ok((taken, self.write_out(stream)?))
    }
}

impl Sealed {
    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The task's side: writes out the unsent records, waiting for the socket to take them.
    fn poll_write_out(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if self.lock().write_out(&self.stream)? {
                return Poll::Ready(Ok(()));
            }
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }
}

/// A sealed subscriber's connection as the hub's fan-out writes to it.
#[derive(Debug)]
struct SealedWriter {
    sealed: Arc<Sealed>,
    control: Arc<Control>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed").field("stream", &self.stream).finish_non_exhaustive()
    }
}

impl SocketWriter for SealedWriter {
    /// Takes none of `frame` while records sealed before are unsent (the writer then sends
    /// them first, then the frame). Once sealed, the frame counts as taken even if part of
    /// its records waits for the socket: the writer is woken to send the rest.
    fn try_write(&self, frame: &[u8]) -> io::Result<usize> {
        let mut records = self.sealed.lock();
        if !records.write_out(&self.sealed.stream)? {
            return Ok(0);
        }
        let (taken, out) = records.seal(&[IoSlice::new(frame)], &self.sealed.stream)?;
        if !out {
            self.control.write_waker.wake();
        }
        Ok(taken)
    }

    fn wake(&self) {
        self.control.write_waker.wake();
    }
}

impl Transport for TlsTransport {
    type Socket = TlsStream<TcpStream>;

    fn poll_read_some(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self {
            TlsTransport::Rustls(stream) => Pin::new(&mut **stream).poll_read(cx, buf),
            TlsTransport::Sealed(sealed) => read_some(&sealed.stream, cx, buf),
        }
    }

    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            TlsTransport::Rustls(stream) => {
                // What was handed over before goes out first, so rustls holds one write's
                // records.
                ready!(Pin::new(&mut **stream).poll_flush(cx))?;
                Pin::new(&mut **stream).poll_write_vectored(cx, slices)
            }
            TlsTransport::Sealed(sealed) => {
                ready!(sealed.poll_write_out(cx))?;
                // Out at once if the socket takes them; otherwise the next flush waits.
                let (taken, _) = sealed.lock().seal(slices, &sealed.stream)?;
                Poll::Ready(Ok(taken))
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            TlsTransport::Rustls(stream) => Pin::new(&mut **stream).poll_flush(cx),
            TlsTransport::Sealed(sealed) => sealed.poll_write_out(cx),
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            TlsTransport::Rustls(stream) => Pin::new(&mut **stream).poll_shutdown(cx),
            TlsTransport::Sealed(sealed) => {
                {
                    let mut records = sealed.lock();
                    if !records.closed {
                        records.closed = true;
                        let records = &mut *records;
                        records.sealer.seal_close_notify(&mut records.unsent)?;
                    }
                }
                sealed.poll_write_out(cx)
            }
        }
    }

    /// The socket under TLS: rustls holds no plaintext unread here, since the answer's
    /// writer read all the client sent into its own buffer.
    fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
    }

    fn reset_on_close(&self) {
        let _ = self.tcp().set_zero_linger();
    }

    /// Seals the records here from now on, when rustls has written all its own (the
    /// caller flushed) and the connection's suite allows; otherwise stays with rustls.
    fn for_subscription(self) -> Option<Self> {
        let TlsTransport::Rustls(stream) = self else { return Some(self) };
        if !Sealer::can_take(stream.get_ref().1) {
            return Some(TlsTransport::Rustls(stream));
        }
        let (stream, connection) = stream.into_inner();
        match Sealer::take(connection) {
            Ok(sealer) => {
                let records =
                    Mutex::new(Records { sealer, unsent: Vec::new(), written: 0, closed: false });
                Some(TlsTransport::Sealed(Arc::new(Sealed { stream, records })))
            }
            Err(error) => {
                tracing::warn!(%error, "a TLS connection's keys could not be taken for sealing");
                None
            }
        }
    }

    /// A sealed connection, which the fan-out seals its frames for as this task does.
    fn subscriber_socket(&self, control: &Arc<Control>) -> Option<SubscriberSocket> {
        let TlsTransport::Sealed(sealed) = self else { return None };
        let writer = SealedWriter { sealed: Arc::clone(sealed), control: Arc::clone(control) };
        Some(SubscriberSocket(Arc::new(writer)))
    }

    fn rewound(self, first: Bytes) -> Option<Rewound<Self::Socket>> {
        match self {
            TlsTransport::Rustls(stream) => Some(Rewound { first, stream: *stream }),
            TlsTransport::Sealed(_) => None,
        }
    }
}
