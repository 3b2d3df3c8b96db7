//! Invariants of the GGUF header reader on arbitrary input ([`check_gguf_header`]), shared by
//! the fuzz target (`make fuzz`) and the test that replays its corpus. A model file is given
//! by the operator, but a corrupt or hostile one must be refused with an error, never crash
//! the server or make it allocate without bound.

/// Reads `input` as a GGUF file's header (metadata, tensor index, tokenizer, chat template);
/// when that succeeds, tokenizes and renders a prompt with what it built. Panics only if the
/// reader does.
pub fn check_gguf_header(input: &[u8]) {
    let Ok(header) = crate::local::Header::read(&mut std::io::Cursor::new(input)) else { return };
    let _ = header.tokenizer.encode("Hello, 世界 <|im_end|>");
    let messages = [crate::Message::new(crate::Role::User, "hi")];
    let _ = header.template.render(&messages);
}

#[cfg(test)]
mod tests {
    /// Replays the fuzz corpus (`fuzz/corpus/gguf_header`) through the target's checks.
    #[test]
    fn every_gguf_header_corpus_input_passes_the_checks() {
        assert!(sluice_sse::testing::replay_corpus("gguf_header", super::check_gguf_header) > 0);
    }
}
