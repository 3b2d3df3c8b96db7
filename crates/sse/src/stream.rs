//! [`EventStream`]: a `Stream` of byte chunks in, a `Stream` of events out.
//!
//! ```
//! use futures_util::{FutureExt, StreamExt, stream};
//! use sluice_sse::EventStream;
//!
//! let body = stream::iter([Ok::<_, std::io::Error>(&b"data: he"[..]), Ok(b"llo\n\n")]);
//! let mut events = EventStream::new(body);
//! let first = events.next().now_or_never().flatten().unwrap()?;
//! assert_eq!(first.data, "hello");
//! # Ok::<(), sluice_sse::StreamError<std::io::Error>>(())
//! ```

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_core::Stream;

use crate::{DecodeError, Decoder, MessageEvent};

/// What ended an [`EventStream`], or interrupted it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError<E> {
    /// The byte stream failed; the event stream passes the error on and keeps reading.
    #[error("reading the event stream failed: {0}")]
    Transport(#[source] E),
    /// The bytes could not be decoded; the event stream ends after this error.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

pin_project_lite::pin_project! {
    /// Decodes a stream of byte chunks (`Bytes`, `Vec<u8>`, `&[u8]`, …) into events.
    ///
    /// When the byte stream ends, an unterminated event is discarded and the stream ends.
    #[derive(Debug)]
    pub struct EventStream<S> {
        #[pin]
        bytes: S,
        decoder: Decoder,
        ready: VecDeque<MessageEvent>,
        failed: Option<DecodeError>,
        done: bool,
    }
}

impl<S> EventStream<S> {
    /// Decodes `bytes` with a default [`Decoder`].
    pub fn new(bytes: S) -> Self {
        Self::with_decoder(bytes, Decoder::new())
    }

    /// Decodes `bytes` with `decoder` (to set a size limit or a starting last event id).
    pub fn with_decoder(bytes: S, decoder: Decoder) -> Self {
        EventStream { bytes, decoder, ready: VecDeque::new(), failed: None, done: false }
    }

    /// The decoder, for the last event id and reconnection time seen so far.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }
}

impl<S, B, E> Stream for EventStream<S>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    type Item = Result<MessageEvent, StreamError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(event) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            if let Some(error) = this.failed.take() {
                return Poll::Ready(Some(Err(StreamError::Decode(error))));
            }
            if *this.done {
                return Poll::Ready(None);
            }
            match ready!(this.bytes.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => {
                    let ready = &mut *this.ready;
                    if let Err(error) = this.decoder.feed(chunk.as_ref(), |e| ready.push_back(e)) {
                        *this.failed = Some(error);
                        *this.done = true;
                    }
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(StreamError::Transport(error)))),
                None => {
                    this.decoder.reset();
                    *this.done = true;
                }
            }
        }
    }
}
