//! Streaming text for one sequence: incremental detokenization plus stop-string matching.
//!
//! Text that could still turn out to be the start of a stop string is held back, so a client never receives part
//! of a stop string that is later cut. Cost per token: one incremental decode and a scan of the held-back tail.

use std::sync::Arc;

use cleave_tokens::{DecodeStream, Tokenizer};

#[derive(Debug)]
pub struct TextStream {
    decoder: DecodeStream<Arc<Tokenizer>>,
    stop_strings: Vec<String>,
    held: String,
}

/// The text a token releases, and whether a stop string ended the sequence.
#[derive(Debug, PartialEq, Eq)]
pub struct TextDelta {
    pub text: String,
    pub stopped: bool,
}

impl TextStream {
    pub fn new(tokenizer: Arc<Tokenizer>, stop_strings: Vec<String>) -> Self {
        TextStream {
            decoder: DecodeStream::new(tokenizer, true),
            stop_strings,
            held: String::new(),
        }
    }

    /// Adds a generated token. An id the tokenizer does not know (a model vocabulary padded past the tokenizer's)
    /// contributes no text.
    pub fn push(&mut self, token: u32) -> TextDelta {
        if let Ok(Some(delta)) = self.decoder.step(token) {
            self.held.push_str(&delta);
        }
        self.release()
    }

    /// Ends the stream: everything still held, including incomplete characters.
    pub fn finish(&mut self) -> String {
        if let Ok(Some(rest)) = self.decoder.flush() {
            self.held.push_str(&rest);
        }
        let mut delta = self.release();
        if !delta.stopped {
            delta.text.push_str(&std::mem::take(&mut self.held));
        }
        delta.text
    }

    fn release(&mut self) -> TextDelta {
        let first_stop = self
            .stop_strings
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let text = self.held[..at].to_string();
            self.held.clear();
            return TextDelta { text, stopped: true };
        }
        let keep = self.held_back_len();
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_string();
        self.held.drain(..cut);
        TextDelta { text, stopped: false }
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn held_back_len(&self) -> usize {
        let mut keep = 0;
        for stop in &self.stop_strings {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if suffix.len() > keep && suffix.len() < stop.len() && stop.starts_with(suffix) {
                    keep = suffix.len();
                    break;
                }
            }
        }
        keep
    }
}
