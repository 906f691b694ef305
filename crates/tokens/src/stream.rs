//! Streaming detokenization: token ids in one at a time, text out as soon as it is complete.
//!
//! Byte-level and byte-fallback tokens can split a UTF-8 character across tokens, and some decoders
//! depend on context (SentencePiece strips the space of the first token only), so a token's text is not
//! `decode([id])`. `DecodeStream` keeps a short window of ids: `prefix` ids whose text was already emitted
//! and the ids after them. Each step decodes the window with and without the new ids and emits the
//! difference, unless it ends in U+FFFD (an incomplete character: wait for more bytes).
//! Invariant: the concatenated deltas plus `flush()` equal `decode(all ids)` for the decoders this crate
//! builds (byte-level; SentencePiece Metaspace/byte-fallback/strip), because their output for a window
//! that starts at a character boundary is the matching suffix of the whole text.
//! Cost: two decodes of the window per step; the window shrinks back to the last emitted token(s) after
//! each emission, so a step is O(tokens since the last complete character).

use std::ops::Deref;

use crate::error::TokenizerError;
use crate::tokenizer::Tokenizer;

/// An incremental decoder; `T` is `&Tokenizer`, `Arc<Tokenizer>` or anything that derefs to one.
#[derive(Debug)]
pub struct DecodeStream<T> {
    tokenizer: T,
    skip_special_tokens: bool,
    /// The window: ids from the start of the last emitted token(s) on.
    ids: Vec<u32>,
    /// `ids[..prefix_len]` were already emitted; they give the context the next text is decoded in.
    prefix_len: usize,
}

impl<T: Deref<Target = Tokenizer>> DecodeStream<T> {
    pub fn new(tokenizer: T, skip_special_tokens: bool) -> Self {
        Self {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix_len: 0,
        }
    }

    /// Adds `id`; returns the new text if it completes any, else `None`. An id outside the vocabulary is
    /// an error and leaves the stream as it was.
    pub fn step(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        match self.pending_text(false) {
            Ok(text) => Ok(text),
            Err(error) => {
                self.ids.pop();
                Err(error)
            }
        }
    }

    /// Emits whatever is pending, incomplete characters included (as U+FFFD, as `decode` writes them).
    /// Call once generation ends.
    pub fn flush(&mut self) -> Result<Option<String>, TokenizerError> {
        self.pending_text(true)
    }

    /// The text of the ids after the prefix, if there is any and it is complete (or `force`).
    fn pending_text(&mut self, force: bool) -> Result<Option<String>, TokenizerError> {
        if self.ids.len() == self.prefix_len {
            return Ok(None);
        }
        let prefix = self
            .tokenizer
            .decode(&self.ids[..self.prefix_len], self.skip_special_tokens)?;
        let full = self.tokenizer.decode(&self.ids, self.skip_special_tokens)?;
        if full.len() <= prefix.len() && !force {
            // Nothing visible yet (a special token skipped, or bytes still gathering).
            return Ok(None);
        }
        if full.ends_with(char::REPLACEMENT_CHARACTER) && !force {
            return Ok(None);
        }
        let delta = match full.strip_prefix(prefix.as_str()) {
            Some(delta) => delta.to_owned(),
            // Not reached with this crate's decoders; emit what differs rather than lose text.
            None => full[common_prefix_len(&prefix, &full)..].to_owned(),
        };
        // The emitted ids become the context of the next step; older ones are no longer needed.
        self.ids.drain(..self.prefix_len);
        self.prefix_len = self.ids.len();
        Ok(Some(delta).filter(|delta| !delta.is_empty()))
    }
}

/// Length in bytes of the longest common prefix of `a` and `b` that ends on a character boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((at, _), _)| at)
}
