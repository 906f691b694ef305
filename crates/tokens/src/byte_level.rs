//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`: GPT-2, Llama 3, Qwen 2, SmolLM) built from GGUF metadata.
//!
//! Text is cut by the `pre` regexes, each piece's UTF-8 bytes are spelled with GPT-2's byte alphabet, and
//! the stored merges are applied in rank order. Decoding maps the alphabet back to bytes.
//! Invariant: the vocabulary is the file's, id for id (tokens spelled outside the byte alphabet are
//! re-spelled into it, as transformers does, so they stay reachable by their bytes).
//! Cost: building is dominated by hashing the vocabulary and merges (~50k each: tens of ms).

use ahash::AHashMap;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{DecoderWrapper, ModelWrapper};

use crate::error::TokenizerError;
use crate::pretokenizer::{byte_level_pre_tokenizer, byte_to_char_table, ignores_merges};
use crate::spec::GgufTokenizerSpec;
use crate::tokenizer::Inner;

/// Where the merges come from, for error messages.
const MERGES: &str = "tokenizer.ggml.merges";

/// GPT-2's byte alphabet: the 256 characters bytes are spelled with.
pub(crate) struct ByteAlphabet {
    table: [char; 256],
    members: ahash::AHashSet<char>,
}

impl ByteAlphabet {
    pub(crate) fn new() -> Self {
        let table = byte_to_char_table();
        Self {
            table,
            members: table.iter().copied().collect(),
        }
    }

    /// Whether every character of `token` is a byte spelling (so the token is a byte string).
    pub(crate) fn spells(&self, token: &str) -> bool {
        token.chars().all(|c| self.members.contains(&c))
    }

    /// `token` as the byte-alphabet spelling of its UTF-8 bytes, unless it already is one.
    fn respell(&self, token: &str) -> String {
        if self.spells(token) {
            token.to_owned()
        } else {
            token.bytes().map(|byte| self.table[byte as usize]).collect()
        }
    }
}

/// The byte-level BPE tokenizer the spec describes, without added tokens (see `crate::gguf`).
pub(crate) fn build(spec: &GgufTokenizerSpec) -> Result<Inner, TokenizerError> {
    let alphabet = ByteAlphabet::new();
    let mut vocab = AHashMap::with_capacity(spec.tokens.len());
    for (id, token) in spec.tokens.iter().enumerate() {
        // A later duplicate wins, as in transformers' `{token: index}` dict.
        vocab.insert(alphabet.respell(token), id as u32);
    }
    let stored = spec
        .merges
        .as_ref()
        .ok_or(TokenizerError::MissingMetadata { key: MERGES })?;
    let merges = parse_merges(stored)?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignores_merges(spec.pre.as_deref()))
        .build()
        .map_err(|source| TokenizerError::Build {
            stage: "the BPE model (a merge names a token missing from tokenizer.ggml.tokens?)",
            source,
        })?;
    let mut tokenizer = Inner::new(ModelWrapper::BPE(bpe));
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(spec.pre.as_deref())?));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok(tokenizer)
}

/// Splits each stored merge "left right" into its pair.
pub(crate) fn parse_merges(stored: &[String]) -> Result<Vec<(String, String)>, TokenizerError> {
    stored
        .iter()
        .enumerate()
        .map(|(index, merge)| match merge.split_once(' ') {
            Some((left, right)) if !left.is_empty() && !right.is_empty() && !right.contains(' ') => {
                Ok((left.to_owned(), right.to_owned()))
            }
            _ => Err(TokenizerError::MalformedMerge {
                index,
                merge: merge.clone(),
            }),
        })
        .collect()
}
