//! An incremental decoder of HTTP/1.1 `Transfer-Encoding: chunked` bodies.
//!
//! ```
//! use sluice_loadgen::chunked::{Dechunker, Progress};
//!
//! let mut dechunker = Dechunker::new();
//! let mut body = Vec::new();
//! // Input may be split anywhere, even inside a chunk-size line.
//! for piece in [&b"5\r\nhel"[..], b"lo\r\n1", b"\r\n!\r\n0\r\n\r\n"] {
//!     let progress = dechunker.feed(piece, |data| body.extend_from_slice(data))?;
//!     if piece.ends_with(b"0\r\n\r\n") {
//!         assert_eq!(progress, Progress::Done);
//!     }
//! }
//! assert_eq!(body, b"hello!");
//! # Ok::<(), sluice_loadgen::chunked::ChunkError>(())
//! ```
//!
//! A subscriber of an event stream reads a body that never ends, a few bytes at a time, so the
//! decoder keeps only its state between reads (no buffering): data is handed out as slices
//! of the input. Chunk extensions and trailers are skipped.

/// Why a chunked body cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChunkError {
    /// A chunk-size line held something other than hex digits (and an extension).
    #[error("invalid chunk size line")]
    InvalidSize,
    /// A chunk size does not fit in 64 bits.
    #[error("chunk size too large")]
    SizeOverflow,
    /// The CRLF after a chunk's data is missing.
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
}

/// Whether the body is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More chunks may follow.
    More,
    /// The last chunk and the trailers were read; bytes after them are not part of the body.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `seen` says whether there was at least one.
    Size { value: u64, seen: bool },
    /// After the size: an extension or whitespace up to the line end.
    Extension { value: u64 },
    /// Expecting the LF that ends the size line.
    SizeLf { value: u64 },
    /// Inside a chunk's data, with this many bytes left.
    Data { left: u64 },
    /// Expecting the CR after a chunk's data.
    DataCr,
    /// Expecting the LF after a chunk's data.
    DataLf,
    /// After the last chunk: at the start of a trailer line (an empty one ends the body).
    TrailerStart,
    /// Inside a trailer line.
    TrailerLine,
    /// Expecting the LF of the final empty line.
    FinalLf,
    /// The body is over.
    Done,
}

/// The decoder's state between reads.
#[derive(Debug, Clone)]
pub struct Dechunker {
    state: State,
}

impl Default for Dechunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Dechunker {
    /// A decoder at the start of a body.
    pub fn new() -> Self {
        Dechunker { state: State::Size { value: 0, seen: false } }
    }

    /// Decodes `input`, handing each piece of chunk data to `on_data` in order.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            self.state = match self.state {
                State::Size { value, seen } => match hex_value(byte) {
                    Some(digit) => {
                        let value = value
                            .checked_mul(16)
                            .and_then(|v| v.checked_add(u64::from(digit)))
                            .ok_or(ChunkError::SizeOverflow)?;
                        State::Size { value, seen: true }
                    }
                    None if !seen => return Err(ChunkError::InvalidSize),
                    None => match byte {
                        b'\r' => State::SizeLf { value },
                        b'\n' => self.size_done(value),
                        b';' | b' ' | b'\t' => State::Extension { value },
                        _ => return Err(ChunkError::InvalidSize),
                    },
                },
                State::Extension { value } => match byte {
                    b'\r' => State::SizeLf { value },
                    b'\n' => self.size_done(value),
                    _ => State::Extension { value },
                },
                State::SizeLf { value } => {
                    if byte != b'\n' {
                        return Err(ChunkError::InvalidSize);
                    }
                    self.size_done(value)
                }
                State::Data { left } => {
                    let available = (input.len() - i) as u64;
                    let take = left.min(available) as usize;
                    on_data(&input[i..i + take]);
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 { State::DataCr } else { State::Data { left } };
                    continue;
                }
                State::DataCr => match byte {
                    b'\r' => State::DataLf,
                    b'\n' => State::Size { value: 0, seen: false },
                    _ => return Err(ChunkError::MissingCrlf),
                },
                State::DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkError::MissingCrlf);
                    }
                    State::Size { value: 0, seen: false }
                }
                State::TrailerStart => match byte {
                    b'\r' => State::FinalLf,
                    b'\n' => State::Done,
                    _ => State::TrailerLine,
                },
                State::TrailerLine => match byte {
                    b'\n' => State::TrailerStart,
                    _ => State::TrailerLine,
                },
                State::FinalLf => match byte {
                    b'\n' => State::Done,
                    _ => State::TrailerLine,
                },
                State::Done => return Ok(Progress::Done),
            };
            i += 1;
        }
        Ok(if self.state == State::Done { Progress::Done } else { Progress::More })
    }

    fn size_done(&self, value: u64) -> State {
        if value == 0 { State::TrailerStart } else { State::Data { left: value } }
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(wire: &[u8], piece: usize) -> (Vec<u8>, Progress) {
        let mut dechunker = Dechunker::new();
        let mut out = Vec::new();
        let mut progress = Progress::More;
        for chunk in wire.chunks(piece) {
            progress = dechunker.feed(chunk, |d| out.extend_from_slice(d)).unwrap();
        }
        (out, progress)
    }

    #[test]
    fn any_split_gives_the_same_body() {
        let wire = b"1a;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n3\r\n:\n\n\r\n\
                     10\r\n0123456789ABCDEF\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for piece in 1..=wire.len() {
            let (body, progress) = decode_in_pieces(wire, piece);
            assert_eq!(body, b"abcdefghijklmnopqrstuvwxyz:\n\n0123456789ABCDEF", "piece {piece}");
            assert_eq!(progress, Progress::Done, "piece {piece}");
        }
    }

    #[test]
    fn an_endless_stream_stays_open() {
        let (body, progress) = decode_in_pieces(b"2\r\n:\n\r\n2\r\n:\n\r\n", 3);
        assert_eq!(body, b":\n:\n");
        assert_eq!(progress, Progress::More);
    }

    #[test]
    fn bad_input_is_refused() {
        let mut d = Dechunker::new();
        assert_eq!(d.feed(b"zz\r\n", |_| {}), Err(ChunkError::InvalidSize));
        let mut d = Dechunker::new();
        assert_eq!(d.feed(b"1\r\nab", |_| {}), Err(ChunkError::MissingCrlf));
        let mut d = Dechunker::new();
        assert_eq!(d.feed(b"1ffffffffffffffff\r\n", |_| {}), Err(ChunkError::SizeOverflow));
    }
}
