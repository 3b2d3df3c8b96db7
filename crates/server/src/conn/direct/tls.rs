//! A connection served directly over TLS: through rustls while its request is read, and for
//! every answer that keeps its connection; a subscription's event stream in records sealed
//! here ([`Sealer`]) once its request is read, so that an idle subscriber holds a key, not a
//! rustls connection with its buffers (BENCHMARKS.md, "memory per idle subscriber, by
//! transport").

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::super::Control;
use super::{Rewound, SubscriberSocket, Transport};
use crate::tls::Sealer;

/// A TLS connection's transport.
pub(in crate::conn) enum TlsTransport {
    /// Through rustls (boxed: a subscription drops it for [`Sealed`], which is smaller).
    Rustls(Box<TlsStream<TcpStream>>),
    /// A subscription's event stream, sealed here (boxed: its key is larger than what an
    /// answer on a kept-alive connection should carry).
    Sealed(Box<Sealed>),
}

impl TlsTransport {
    /// A connection whose handshake is done.
    pub(in crate::conn) fn new(stream: TlsStream<TcpStream>) -> Self {
        TlsTransport::Rustls(Box::new(stream))
    }
}

/// A connection whose records are sealed here: what the client sends is read but not
/// decrypted (a subscription drops it anyway; its close still ends the subscription).
pub(in crate::conn) struct Sealed {
    stream: TcpStream,
    sealer: Sealer,
    /// Records sealed and not yet written in full, from `written` on; no allocation while
    /// every record is out.
    records: Vec<u8>,
    written: usize,
}

impl Sealed {
    /// Writes out the records sealed so far.
    fn poll_records(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.records.len() {
            let unsent = &self.records[self.written..];
            match ready!(Pin::new(&mut self.stream).poll_write(cx, unsent))? {
                0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                written => self.written += written,
            }
        }
        self.records = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
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
            TlsTransport::Sealed(sealed) => Pin::new(&mut sealed.stream).poll_read(cx, buf),
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
                ready!(sealed.poll_records(cx))?;
                let taken = sealed.sealer.seal(slices, &mut sealed.records)?;
                // Out at once if the socket takes them; otherwise the next flush waits.
                if let Poll::Ready(Err(error)) = sealed.poll_records(cx) {
                    return Poll::Ready(Err(error));
                }
                Poll::Ready(Ok(taken))
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            TlsTransport::Rustls(stream) => Pin::new(&mut **stream).poll_flush(cx),
            TlsTransport::Sealed(sealed) => sealed.poll_records(cx),
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
        let (tcp, connection) = stream.into_inner();
        match Sealer::take(connection) {
            Ok(sealer) => Some(TlsTransport::Sealed(Box::new(Sealed {
                stream: tcp,
                sealer,
                records: Vec::new(),
                written: 0,
            }))),
            Err(error) => {
                tracing::warn!(%error, "a TLS connection's keys could not be taken for sealing");
                None
            }
        }
    }

    fn subscriber_socket(&self, _: &Arc<Control>) -> Option<SubscriberSocket> {
        None
    }

    fn rewound(self, first: Bytes) -> Option<Rewound<Self::Socket>> {
        match self {
            TlsTransport::Rustls(stream) => Some(Rewound { first, stream: *stream }),
            TlsTransport::Sealed(_) => None,
        }
    }
}

impl TlsTransport {
    fn tcp(&self) -> &TcpStream {
        match self {
            TlsTransport::Rustls(stream) => stream.get_ref().0,
            TlsTransport::Sealed(sealed) => &sealed.stream,
        }
    }
}
