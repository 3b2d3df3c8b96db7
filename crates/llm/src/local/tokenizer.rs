//! The tokenizer stored in a GGUF file's metadata.
//!
//! llama.cpp's converter writes the Hugging Face tokenizer into `tokenizer.ggml.*` keys: the
//! kind (`model`, "gpt2" for byte-level BPE), the pre-tokenizer's name (`pre`), the vocabulary
//! (`tokens`, in id order), the `merges` ("a b" strings, by rank), each token's type
//! (`token_type`: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte) and the
//! special ids. Encoding is done by the `tokenizers` crate, configured from those keys;
//! decoding is done here, token by token, to raw bytes (see [`GgufTokenizer::token_bytes`]),
//! so that the caller can stream them through an incremental UTF-8 decoder.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// Llama 3's pre-tokenizer regex (also used by several models converted with `llama-bpe`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token types, as `tokenizer.ggml.token_type` numbers them.
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_BYTE: i32 = 6;

/// Tokens that end a turn in the common chat formats, when the file marks them as control
/// tokens (any control token ends generation; these names only help find the end-of-turn
/// token when the metadata does not name one).
const END_OF_TURN_NAMES: &[&str] =
    &["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>"];

/// A tokenizer built from GGUF metadata.
#[derive(Debug)]
pub(crate) struct GgufTokenizer {
    encoder: Tokenizer,
    /// Each token's bytes, as it appears in text (empty for control tokens).
    bytes: Vec<Vec<u8>>,
    /// Whether each token is a control token (`<|im_start|>`, `<|im_end|>`, …).
    control: Vec<bool>,
    tokens: Vec<String>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
}

impl GgufTokenizer {
    /// Builds the tokenizer from a GGUF file's metadata.
    pub(crate) fn from_metadata(metadata: &HashMap<String, Value>) -> Result<Self, String> {
        let get = |key: &str| metadata.get(key);
        let kind = get("tokenizer.ggml.model")
            .ok_or("no tokenizer.ggml.model in the metadata")?
            .to_string()
            .map_err(|e| e.to_string())?;
        if kind != "gpt2" {
            return Err(format!(
                "tokenizer.ggml.model is {kind:?}; only byte-level BPE (\"gpt2\") is supported"
            ));
        }
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")
            .ok_or("no tokenizer.ggml.tokens in the metadata")?
            .to_vec()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("tokenizer.ggml.tokens: {e}"))?;
        let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")
            .ok_or("no tokenizer.ggml.merges in the metadata")?
            .to_vec()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|v| {
                let merge = v.to_string().map_err(|e| e.to_string())?;
                let (a, b) = merge.split_once(' ').ok_or_else(|| format!("bad merge {merge:?}"))?;
                Ok((a.to_owned(), b.to_owned()))
            })
            .collect::<Result<_, String>>()?;
        let types: Vec<i32> = match get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| e.to_string())?
                .iter()
                .map(Value::to_i32)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("tokenizer.ggml.token_type: {e}"))?,
            None => vec![1; tokens.len()],
        };
        if types.len() != tokens.len() {
            return Err(format!("{} token types for {} tokens", types.len(), tokens.len()));
        }
        let id = |key: &str| get(key).and_then(|v| v.to_u32().ok());
        let flag = |key: &str| get(key).and_then(|v| v.to_bool().ok());
        let pre = get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned();

        let vocab: Vocab =
            tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| format!("cannot build the BPE model: {e}"))?;
        let mut encoder = Tokenizer::new(bpe);
        encoder.with_pre_tokenizer(Some(pre_tokenizer(pre.as_deref())?));

        // Control and user-defined tokens are matched in the text as whole tokens before
        // the BPE sees it; control ones are "special" (`<|im_start|>` in the chat template
        // must become id 1, not twelve tokens of punctuation).
        let mut special = Vec::new();
        let mut user = Vec::new();
        for (token, &ty) in tokens.iter().zip(&types) {
            match ty {
                TYPE_CONTROL => {
                    special.push(AddedToken::from(token.clone(), true).normalized(false));
                }
                TYPE_USER_DEFINED => {
                    user.push(AddedToken::from(token.clone(), false).normalized(false));
                }
                _ => {}
            }
        }
        encoder
            .add_special_tokens(special)
            .map_err(|e| format!("cannot add the special tokens: {e}"))?;
        encoder.add_tokens(user).map_err(|e| format!("cannot add the added tokens: {e}"))?;

        let unicode_to_byte = unicode_to_byte();
        let bytes = tokens
            .iter()
            .zip(&types)
            .map(|(token, &ty)| match ty {
                TYPE_CONTROL => Vec::new(),
                TYPE_USER_DEFINED => token.as_bytes().to_vec(),
                TYPE_BYTE => {
                    byte_token(token).map_or_else(|| token.as_bytes().to_vec(), |b| vec![b])
                }
                _ => token
                    .chars()
                    .flat_map(|c| match unicode_to_byte.get(&c) {
                        Some(&b) => vec![b],
                        None => c.to_string().into_bytes(),
                    })
                    .collect(),
            })
            .collect();
        let control = types.iter().map(|&ty| ty == TYPE_CONTROL).collect();

        let eos = id("tokenizer.ggml.eos_token_id").or_else(|| {
            END_OF_TURN_NAMES
                .iter()
                .find_map(|name| tokens.iter().position(|t| t == name).map(|i| i as u32))
        });
        Ok(GgufTokenizer {
            encoder,
            bytes,
            control,
            tokens,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos,
            add_bos: flag("tokenizer.ggml.add_bos_token").unwrap_or(false),
        })
    }

    /// The tokens of `text`, special tokens included (the text is a rendered chat prompt),
    /// with the beginning-of-sequence token in front when the model wants one and the
    /// text does not already start with it.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        let encoding = self.encoder.encode(text, false).map_err(|e| e.to_string())?;
        let mut ids = encoding.get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos)
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// The bytes `id` stands for in text: empty for control tokens and unknown ids.
    pub(crate) fn token_bytes(&self, id: u32) -> &[u8] {
        self.bytes.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Whether generating `id` ends the answer: the end-of-sequence token, or any control
    /// token (a chat model that starts a new turn, `<|im_start|>`, is done with its own).
    pub(crate) fn ends_generation(&self, id: u32) -> bool {
        Some(id) == self.eos || self.control.get(id as usize).copied().unwrap_or(true)
    }

    /// The token's text as the vocabulary spells it (for templates and diagnostics).
    pub(crate) fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The beginning-of-sequence token id, if the model has one.
    pub(crate) fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token id, if the model has one.
    pub(crate) fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The number of tokens in the vocabulary.
    pub(crate) fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}

/// The pre-tokenizer llama.cpp would use for this `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, String> {
    let byte_level = |use_regex| ByteLevel::new(false, false, use_regex);
    Ok(match pre {
        // GPT-2's regex, after splitting every digit on its own (SmolLM, StarCoder, …).
        Some(
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva",
        ) => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        Some("llama3" | "llama-bpe" | "falcon3" | "pixtral") => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3_REGEX.to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| format!("cannot build the pre-tokenizer regex: {e}"))?;
            Sequence::new(vec![split.into(), byte_level(false).into()]).into()
        }
        Some("gpt2" | "default") | None => byte_level(true).into(),
        Some(other) => {
            tracing::warn!(pre = other, "unknown GGUF pre-tokenizer; using GPT-2's regex");
            byte_level(true).into()
        }
    })
}

/// The inverse of GPT-2's byte-to-character table: byte-level BPE spells each byte as a
/// printable character (printable ASCII and most of Latin-1 as themselves, the other 68
/// bytes as U+0100 onwards, in byte order).
fn unicode_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut next = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            next += 1;
            char::from_u32(255 + next).unwrap_or(char::REPLACEMENT_CHARACTER)
        };
        map.insert(c, b);
    }
    map
}

/// The byte of a `<0xAB>` byte token.
fn byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'ĉ'], b'\t');
        assert_eq!(map[&'A'], b'A');
        assert_eq!(map[&'Ā'], 0);
        assert_eq!(map[&'ł'], 0xA0);
        assert_eq!(map[&'Ń'], 0xAD);
        assert_eq!(map[&'é'], 0xE9);
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(byte_token("<0x0A>"), Some(b'\n'));
        assert_eq!(byte_token("<0xff>"), Some(0xFF));
        assert_eq!(byte_token("0x0A"), None);
    }
}
