//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`: Llama 2, Mistral, TinyLlama) built from GGUF metadata.
//!
//! Built as transformers builds it from the same file: spaces become "▁" with one "▁" prepended at the
//! start of the text (Metaspace, prepend "first"); the whole text is one word for BPE; characters
//! without a piece fall back to `<0xNN>` byte pieces. The file stores pieces with scores, not merges,
//! so merges are recovered from the vocabulary: every split of a piece into two pieces is a merge, ranked
//! by the piece's score (best first), then by the lengths of its halves, as `generate_merges` does.
//! Invariant: ids are the file's; decoding removes the prepended space only at the very start.
//! Cost: recovering merges tries each split point of each piece: O(total characters) hash lookups,
//! a few ms for a 32k vocabulary.

use ahash::AHashMap;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{DecoderWrapper, ModelWrapper, PreTokenizerWrapper};

use crate::byte_level::parse_merges;
use crate::error::TokenizerError;
use crate::regex_split::PreTokenizer;
use crate::spec::GgufTokenizerSpec;
use crate::tokenizer::Inner;

const SPACE: char = '\u{2581}';

/// Architectures whose "llama" vocabularies need a different recipe (Gemma's merge order, Phi-3's
/// prefix space); refusing them is better than tokenizing them slightly wrong.
const UNSUPPORTED_ARCHITECTURES: &[&str] = &["gemma", "gemma2", "gemma3", "phi3"];

/// The SentencePiece tokenizer the spec describes, without added tokens (see `crate::gguf`).
pub(crate) fn build(spec: &GgufTokenizerSpec) -> Result<Inner, TokenizerError> {
    if let Some(arch) = spec
        .architecture
        .as_deref()
        .filter(|arch| UNSUPPORTED_ARCHITECTURES.contains(arch))
    {
        return Err(TokenizerError::UnsupportedModel {
            model: spec.model.clone(),
            reason: format!("the SentencePiece variant of architecture `{arch}` is not implemented"),
        });
    }
    let mut vocab = AHashMap::with_capacity(spec.tokens.len());
    for (id, token) in spec.tokens.iter().enumerate() {
        vocab.insert(token.clone(), id as u32);
    }
    let merges = match (&spec.merges, &spec.scores) {
        (Some(stored), _) => parse_merges(stored)?,
        (None, Some(scores)) => recover_merges(&spec.tokens, scores),
        (None, None) => {
            return Err(TokenizerError::MissingMetadata {
                key: "tokenizer.ggml.scores",
            });
        }
    };

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    // Only reached when a byte piece is missing too; llama.cpp maps such text to the unknown token.
    if let Some(unk) = spec.token(spec.unknown_token_id) {
        builder = builder.unk_token(unk.to_owned());
    }
    let bpe = builder.build().map_err(|source| TokenizerError::Build {
        stage: "the SentencePiece BPE model",
        source,
    })?;

    let prefix_space = spec.add_space_prefix.unwrap_or(true);
    let scheme = if prefix_space {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    let mut decoders = vec![
        DecoderWrapper::Replace(replace(SPACE, ' ')?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if prefix_space {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }

    let metaspace = PreTokenizerWrapper::Metaspace(Metaspace::new(SPACE, scheme, false));
    let mut tokenizer = Inner::new(ModelWrapper::BPE(bpe));
    tokenizer.with_pre_tokenizer(Some(PreTokenizer::from_wrapper(metaspace)?));
    tokenizer.with_decoder(Some(DecoderWrapper::Sequence(Sequence::new(decoders))));
    Ok(tokenizer)
}

fn replace(from: char, to: char) -> Result<Replace, TokenizerError> {
    Replace::new(from.to_string(), to.to_string()).map_err(|source| TokenizerError::Build {
        stage: "the SentencePiece decoder",
        source,
    })
}

/// One candidate merge: `left + right` is the piece with score `score`.
struct Candidate<'a> {
    left: &'a str,
    right: &'a str,
    score: f32,
}

/// Merges implied by a scored vocabulary, ordered exactly like transformers' `generate_merges`: pieces in
/// first-occurrence order, each piece's splits by (left id, right id), then a stable sort by
/// (score, left length, right length) descending. A duplicated token keeps its last id and score, as the
/// Python dicts do.
pub(crate) fn recover_merges(tokens: &[String], scores: &[f32]) -> Vec<(String, String)> {
    let mut ids: AHashMap<&str, u32> = AHashMap::with_capacity(tokens.len());
    let mut score_of: AHashMap<&str, f32> = AHashMap::with_capacity(tokens.len());
    let mut order = Vec::with_capacity(tokens.len());
    for (id, (token, &score)) in tokens.iter().zip(scores).enumerate() {
        if ids.insert(token.as_str(), id as u32).is_none() {
            order.push(token.as_str());
        }
        score_of.insert(token.as_str(), score);
    }

    let mut candidates = Vec::new();
    let mut local: Vec<(u32, u32, Candidate<'_>)> = Vec::new();
    for piece in order {
        let score = score_of.get(piece).copied().map_or(f32::NEG_INFINITY, comparable);
        local.clear();
        for (at, _) in piece.char_indices().skip(1) {
            let (left, right) = piece.split_at(at);
            if let (Some(&left_id), Some(&right_id)) = (ids.get(left), ids.get(right)) {
                local.push((left_id, right_id, Candidate { left, right, score }));
            }
        }
        local.sort_by_key(|&(left_id, right_id, _)| (left_id, right_id));
        candidates.extend(local.drain(..).map(|(_, _, candidate)| candidate));
    }

    // Stable, and descending like Python's `sorted(..., reverse=True)`: ties keep their order.
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| char_len(b.left).cmp(&char_len(a.left)))
            .then_with(|| char_len(b.right).cmp(&char_len(a.right)))
    });
    candidates
        .into_iter()
        .map(|c| (c.left.to_owned(), c.right.to_owned()))
        .collect()
}

/// A score with Python's float ordering made total: -0.0 equals 0.0, NaN sorts last.
fn comparable(score: f32) -> f32 {
    if score.is_nan() {
        f32::NEG_INFINITY
    } else if score == 0.0 {
        0.0
    } else {
        score
    }
}

fn char_len(text: &str) -> usize {
    text.chars().count()
}

#[cfg(test)]
mod tests;
