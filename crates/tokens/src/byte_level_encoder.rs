//! Encoding of byte-level BPE text without `tokenizers`' offset bookkeeping.
//!
//! `tokenizers` tracks, for every piece of text, an alignment from each normalized byte back to the input
//! (so it can report offsets). Prompts need ids only, and that bookkeeping is most of the cost: ~0.8 ms
//! for a 600-token prompt, against ~0.3 ms here. This runs the same steps on plain string slices: cut at
//! added tokens (leftmost-longest, as `AddedVocabulary` does), cut each remaining segment with the split
//! regexes in turn, spell each piece's bytes with the byte alphabet and hand it to the same BPE model.
//! It is used only when the pipeline has exactly that shape (no normalizer; split regexes then the
//! byte mapping; added tokens matched as written, without strip/single-word rules); otherwise the
//! `tokenizers` pipeline runs.
//! Invariant: ids equal the `tokenizers` pipeline's ids for every text (checked in the tests beside this
//! file on the golden texts and on generated ones).
//! Cost: one automaton pass per split regex, one table lookup per byte, the model's (cached) BPE.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use tokenizers::Model;

use crate::error::TokenizerError;
use crate::pretokenizer::byte_to_char_table;
use crate::regex_split::RegexSplit;
use crate::tokenizer::Inner;

/// The added-token matcher and the pre-tokenizer's split regexes of an eligible pipeline.
#[derive(Debug, Clone)]
pub(crate) struct ByteLevelEncoder {
    /// Added tokens and their ids; `None` when there are none.
    added: Option<(AhoCorasick, Vec<u32>)>,
    splits: Vec<RegexSplit>,
    alphabet: [char; 256],
}

impl ByteLevelEncoder {
    /// The encoder for `inner`, or `None` when its pipeline is not plain byte-level BPE.
    pub(crate) fn for_pipeline(inner: &Inner) -> Option<Self> {
        if inner.get_normalizer().is_some() {
            return None;
        }
        let splits = inner.get_pre_tokenizer()?.byte_level_splits()?;
        let vocabulary = inner.get_added_vocabulary();
        if vocabulary.get_encode_special_tokens() {
            return None;
        }
        let mut patterns = Vec::new();
        let mut ids = Vec::new();
        for (id, token) in vocabulary.get_added_tokens_decoder() {
            let plain = !token.normalized && !token.lstrip && !token.rstrip && !token.single_word;
            if !plain || token.content.is_empty() {
                return None;
            }
            patterns.push(token.content.clone());
            ids.push(*id);
        }
        let added = if patterns.is_empty() {
            None
        } else {
            let matcher = AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()?;
            Some((matcher, ids))
        };
        Some(Self {
            added,
            splits,
            alphabet: byte_to_char_table(),
        })
    }

    /// Appends the token ids of `text` to `ids`.
    pub(crate) fn encode_into(&self, inner: &Inner, text: &str, ids: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let mut pieces = Vec::new();
        let mut spelled = String::new();
        let mut position = 0;
        if let Some((matcher, added_ids)) = &self.added {
            for found in matcher.find_iter(text) {
                let before = &text[position..found.start()];
                self.encode_segment(inner, before, &mut pieces, &mut spelled, ids)?;
                ids.push(added_ids[found.pattern().as_usize()]);
                position = found.end();
            }
        }
        self.encode_segment(inner, &text[position..], &mut pieces, &mut spelled, ids)
    }

    /// Cuts `segment` (text between added tokens) with every split regex in turn, then BPE-encodes each
    /// piece. `pieces` and `spelled` are scratch buffers reused across segments.
    fn encode_segment<'t>(
        &self,
        inner: &Inner,
        segment: &'t str,
        pieces: &mut Vec<&'t str>,
        spelled: &mut String,
        ids: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        if segment.is_empty() {
            return Ok(());
        }
        pieces.clear();
        pieces.push(segment);
        let mut cut = Vec::new();
        for split in &self.splits {
            cut.clear();
            for piece in pieces.iter() {
                split.for_each_piece(piece, |sub| cut.push(sub));
            }
            std::mem::swap(pieces, &mut cut);
        }
        for piece in pieces.iter() {
            spelled.clear();
            spelled.extend(piece.bytes().map(|byte| self.alphabet[byte as usize]));
            let tokens = inner.get_model().tokenize(spelled).map_err(TokenizerError::Encode)?;
            ids.extend(tokens.iter().map(|token| token.id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
