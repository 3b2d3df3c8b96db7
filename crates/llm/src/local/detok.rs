//! Turning generated tokens into text a piece at a time.
//!
//! Two filters sit between the sampler and the stream, in this order:
//!
//! - [`Utf8Stream`] takes each token's raw bytes and gives back only whole UTF-8
//!   characters. A byte-level BPE token can end in the middle of a character (an emoji is
//!   often two or three tokens), so the unfinished bytes wait for the next token.
//! - [`StopFilter`] watches the text for the request's stop strings. Text that could be the
//!   beginning of a stop string is held back until the next token tells whether it was one,
//!   so a stop string that spans tokens is never emitted, not even in part.

/// Whole UTF-8 characters out of a stream of byte chunks.
///
/// Invalid sequences become U+FFFD (as [`String::from_utf8_lossy`] would make them), so the
/// concatenation of everything [`push`](Self::push) and [`finish`](Self::finish) return is
/// the lossy decoding of all the bytes pushed.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    /// Bytes of a character that is not finished yet (at most 3).
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds bytes; returns the characters they complete.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                    break;
                }
                Err(error) => {
                    let valid = start + error.valid_up_to();
                    // The prefix was just checked to be valid UTF-8.
                    out.push_str(&String::from_utf8_lossy(&self.pending[start..valid]));
                    match error.error_len() {
                        // An unfinished character at the end: keep it for the next push.
                        None => {
                            start = valid;
                            break;
                        }
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = valid + len;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Ends the stream: an unfinished character left over becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// What [`StopFilter::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Filtered {
    /// No stop string yet: emit this text (possibly empty) and go on.
    Go(String),
    /// A stop string was produced: emit this text (what came before it) and stop.
    Stop(String),
}

/// Cuts the answer at the first stop string, holding back text that may begin one.
#[derive(Debug, Default)]
pub(crate) struct StopFilter {
    stops: Vec<String>,
    /// Text not emitted yet: a suffix that is a proper prefix of some stop string.
    pending: String,
}

impl StopFilter {
    /// A filter for these stop strings (empty ones are ignored).
    pub(crate) fn new(stops: &[String]) -> Self {
        let stops = stops.iter().filter(|stop| !stop.is_empty()).cloned().collect();
        StopFilter { stops, pending: String::new() }
    }

    /// Adds text; returns what may be emitted now.
    pub(crate) fn push(&mut self, text: &str) -> Filtered {
        if self.stops.is_empty() {
            return Filtered::Go(text.to_owned());
        }
        self.pending.push_str(text);
        // The earliest stop string wins: the answer is everything before it.
        let found = self.stops.iter().filter_map(|stop| self.pending.find(stop.as_str())).min();
        if let Some(at) = found {
            let mut out = std::mem::take(&mut self.pending);
            out.truncate(at);
            return Filtered::Stop(out);
        }
        let hold = self.longest_partial_match();
        let out = self.pending[..self.pending.len() - hold].to_owned();
        self.pending.drain(..self.pending.len() - hold);
        Filtered::Go(out)
    }

    /// Ends the answer without a stop string: the held-back text was not one after all.
    pub(crate) fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The length of the longest suffix of `pending` that is a proper prefix of a stop
    /// string. Such a suffix always starts on a character boundary: it is valid UTF-8 on
    /// its own, so its first byte is not a continuation byte.
    fn longest_partial_match(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            let most = (stop.len() - 1).min(self.pending.len());
            for len in (longest + 1..=most).rev() {
                if stop.is_char_boundary(len) && self.pending.ends_with(&stop[..len]) {
                    longest = len;
                    break;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pushes each chunk and collects what comes out, chunk by chunk.
    fn pieces(chunks: &[&[u8]]) -> Vec<String> {
        let mut stream = Utf8Stream::default();
        let mut out: Vec<String> = chunks.iter().map(|chunk| stream.push(chunk)).collect();
        out.push(stream.finish());
        out
    }

    #[test]
    fn ascii_passes_straight_through() {
        assert_eq!(pieces(&[b"Hello", b", world"]), ["Hello", ", world", ""]);
    }

    #[test]
    fn chinese_split_inside_a_character_waits_for_the_rest() {
        // "你好" is E4 BD A0 E5 A5 BD.
        let text = "你好".as_bytes();
        assert_eq!(pieces(&[&text[..1], &text[1..4], &text[4..]]), ["", "你", "好", ""]);
        assert_eq!(pieces(&[&text[..2], &text[2..5], &text[5..]]), ["", "你", "好", ""]);
    }

    #[test]
    fn emoji_split_byte_by_byte_comes_out_whole() {
        // U+1F600 is four bytes; U+1F44D U+1F3FD is a thumbs up with a skin tone (eight).
        for text in ["😀", "👍🏽", "a😀b"] {
            let bytes = text.as_bytes();
            let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
            let out = pieces(&chunks);
            assert_eq!(out.concat(), text);
            for piece in &out {
                // Every piece is whole characters: re-encoding gives back a prefix's worth.
                assert!(!piece.contains(char::REPLACEMENT_CHARACTER), "{out:?}");
            }
        }
        let bytes = "😀".as_bytes();
        assert_eq!(pieces(&[&bytes[..3], &bytes[3..]]), ["", "😀", ""]);
    }

    #[test]
    fn every_split_of_mixed_text_reassembles_exactly() {
        let text = "Zürich: 你好 👋🏻 ok";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            for cut2 in cut..=bytes.len() {
                let out = pieces(&[&bytes[..cut], &bytes[cut..cut2], &bytes[cut2..]]);
                assert_eq!(out.concat(), text, "cuts at {cut} and {cut2}");
            }
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        assert_eq!(pieces(&[b"a\xffb"]), ["a\u{FFFD}b", ""]);
        // A lone continuation byte between characters.
        assert_eq!(pieces(&[b"x\x80", b"y"]), ["x\u{FFFD}", "y", ""]);
        // A character that never finishes: flushed as U+FFFD at the end.
        assert_eq!(pieces(&[b"ok\xe4\xbd"]), ["ok", "\u{FFFD}"]);
        // An unfinished character interrupted by a new one.
        assert_eq!(pieces(&[b"\xe4\xbd", b"z"]), ["", "\u{FFFD}z", ""]);
    }

    fn run_stops(stops: &[&str], chunks: &[&str]) -> (Vec<String>, bool) {
        let stops: Vec<String> = stops.iter().map(|s| (*s).to_owned()).collect();
        let mut filter = StopFilter::new(&stops);
        let mut out = Vec::new();
        for chunk in chunks {
            match filter.push(chunk) {
                Filtered::Go(text) => out.push(text),
                Filtered::Stop(text) => {
                    out.push(text);
                    return (out, true);
                }
            }
        }
        out.push(filter.finish());
        (out, false)
    }

    #[test]
    fn no_stop_strings_means_no_hold_back() {
        assert_eq!(
            run_stops(&[], &["a", "b"]),
            (vec!["a".into(), "b".into(), String::new()], false)
        );
        assert_eq!(run_stops(&[""], &["a"]), (vec!["a".into(), String::new()], false));
    }

    #[test]
    fn stop_string_inside_one_chunk_truncates() {
        let (out, stopped) = run_stops(&["END"], &["one two END three"]);
        assert!(stopped);
        assert_eq!(out, ["one two "]);
    }

    #[test]
    fn stop_string_spanning_chunks_is_never_emitted() {
        let (out, stopped) = run_stops(&["\n\nUser:"], &["Sure.", "\n", "\nUs", "er", ":", " hi"]);
        assert!(stopped);
        assert_eq!(out, ["Sure.", "", "", "", ""]);
        assert_eq!(out.concat(), "Sure.");
    }

    #[test]
    fn held_back_text_is_released_when_it_turns_out_not_to_be_a_stop() {
        let (out, stopped) = run_stops(&["STOP"], &["a ST", "OP", "PING"]);
        assert!(stopped);
        assert_eq!(out, ["a ", ""]);
        let (out, stopped) = run_stops(&["STOP"], &["a ST", "ART", " x S"]);
        assert!(!stopped);
        assert_eq!(out, ["a ", "START", " x ", "S"]);
    }

    #[test]
    fn earliest_of_several_stop_strings_wins() {
        let (out, stopped) = run_stops(&["world", "lo w"], &["hello world"]);
        assert!(stopped);
        assert_eq!(out, ["hel"]);
    }

    #[test]
    fn partial_match_of_multibyte_stop_string_holds_whole_characters() {
        let (out, stopped) = run_stops(&["你好吗"], &["说你", "好", "呀"]);
        assert!(!stopped);
        assert_eq!(out, ["说", "", "你好呀", ""]);
        let (out, stopped) = run_stops(&["😀!"], &["x😀", "!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "x");
    }
}
