//! The pre-tokenizer this crate runs: `tokenizers`' own pre-tokenizers, except that the GPT-2, Llama 3
//! and Qwen 2 split regexes run on the `regex` crate's automata instead of `fancy-regex`'s backtracker.
//!
//! Those regexes end in `\s+(?!\S)|\s+`: a whitespace run stops one character short of the next word so
//! the word keeps its leading space. The lookahead is what forces `fancy-regex`, which is ~15x slower
//! (a 600-token prompt: ~0.35 ms in the split alone). Here the pattern ends in plain `\s+`, and a
//! whitespace-only match of that alternative that is followed by more text and longer than one character
//! gives its last character back, which is exactly what the lookahead does.
//! Invariant: the pieces produced are identical to the lookahead regex's (checked against `fancy-regex`
//! in the tests beside this file, and against transformers' ids in tests/).
//! Cost: one DFA pass per split regex over the text.

use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::SplitPattern;
use tokenizers::tokenizer::pattern::Pattern;
use tokenizers::{Offsets, PreTokenizedString, SplitDelimiterBehavior};

use crate::error::TokenizerError;

/// Which whitespace-only matches stand for the `\s+(?!\S)|\s+` alternatives and give a character back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookahead {
    /// The pattern has no such alternative.
    None,
    /// GPT-2's pattern: any whitespace-only match.
    AnyWhitespace,
    /// Llama 3's / Qwen 2's: `\s*[\r\n]+` comes first and takes every run holding a line break, so only
    /// whitespace-only matches without `\r`/`\n` are the `\s+` alternative's.
    WithoutLineBreaks,
}

/// A split regex for `tokenizers`' `Pattern`: matches and the text between them become pieces.
#[derive(Debug, Clone)]
pub(crate) struct RegexSplit {
    regex: regex::Regex,
    lookahead: Lookahead,
}

impl RegexSplit {
    pub(crate) fn new(pattern: &str, lookahead: Lookahead) -> Result<Self, TokenizerError> {
        let regex = regex::Regex::new(pattern).map_err(|source| TokenizerError::Build {
            stage: "a pre-tokenizer split regex",
            source: Box::new(source),
        })?;
        Ok(Self { regex, lookahead })
    }

    /// The match found at or after `from`, shortened where the lookahead would have stopped earlier.
    fn next_match(&self, inside: &str, from: usize) -> Option<(usize, usize)> {
        let found = self.regex.find_at(inside, from)?;
        let (start, end) = (found.start(), found.end());
        let text = found.as_str();
        let gives_back = match self.lookahead {
            Lookahead::None => false,
            Lookahead::AnyWhitespace => text.chars().all(char::is_whitespace),
            Lookahead::WithoutLineBreaks => text.chars().all(|c| c.is_whitespace() && c != '\r' && c != '\n'),
        };
        let mut chars = text.chars();
        let last = chars.next_back();
        let several = chars.next().is_some();
        match last {
            Some(last) if gives_back && several && end < inside.len() => Some((start, end - last.len_utf8())),
            _ => Some((start, end)),
        }
    }
}

impl RegexSplit {
    /// Calls `piece` with the byte range of each piece of `text` (matches and the non-empty text between
    /// them), in order, and whether it is a match. The ranges cover `text` exactly.
    fn cut(&self, text: &str, mut piece: impl FnMut(usize, usize, bool)) {
        let mut position = 0;
        while position < text.len() {
            let Some((start, end)) = self.next_match(text, position) else {
                break;
            };
            if end == start {
                // None of this crate's patterns matches empty text; step over it rather than loop.
                let step = text[start..].chars().next().map_or(1, char::len_utf8);
                position = start + step;
                continue;
            }
            if start > position {
                piece(position, start, false);
            }
            piece(start, end, true);
            position = end;
        }
        if position < text.len() {
            piece(position, text.len(), false);
        }
    }

    /// Calls `piece` with each piece of `text`, as `cut` cuts it.
    pub(crate) fn for_each_piece<'t>(&self, text: &'t str, mut piece: impl FnMut(&'t str)) {
        self.cut(text, |start, end, _| piece(&text[start..end]));
    }
}

impl Pattern for &RegexSplit {
    fn find_matches(&self, inside: &str) -> tokenizers::Result<Vec<(Offsets, bool)>> {
        if inside.is_empty() {
            return Ok(vec![((0, 0), false)]);
        }
        let mut pieces = Vec::new();
        self.cut(inside, |start, end, is_match| pieces.push(((start, end), is_match)));
        Ok(pieces)
    }
}

/// One step of the pre-tokenizer.
#[derive(Debug, Clone)]
enum Step {
    Split(RegexSplit),
    Other(PreTokenizerWrapper),
}

/// A sequence of pre-tokenizer steps, each applied to the pieces the previous one left.
#[derive(Debug, Clone)]
pub(crate) struct PreTokenizer {
    steps: Vec<Step>,
}

impl PreTokenizer {
    /// Byte-level pre-tokenization: the `splits` regexes in order, then bytes spelled as characters.
    pub(crate) fn byte_level(splits: Vec<RegexSplit>) -> Self {
        let mut steps: Vec<Step> = splits.into_iter().map(Step::Split).collect();
        steps.push(Step::Other(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, true, false,
        ))));
        Self { steps }
    }

    /// The split regexes of a plain byte-level pre-tokenizer (regex splits, then the byte mapping without
    /// prefix space or regex of its own), or `None` for any other shape.
    pub(crate) fn byte_level_splits(&self) -> Option<Vec<RegexSplit>> {
        let (last, splits) = self.steps.split_last()?;
        let maps_bytes = matches!(
            last,
            Step::Other(PreTokenizerWrapper::ByteLevel(byte_level))
                if !byte_level.add_prefix_space && !byte_level.use_regex
        );
        if !maps_bytes {
            return None;
        }
        splits
            .iter()
            .map(|step| match step {
                Step::Split(split) => Some(split.clone()),
                Step::Other(_) => None,
            })
            .collect()
    }

    /// `wrapper` with its slow split regexes replaced by equivalent fast ones where one is known.
    pub(crate) fn from_wrapper(wrapper: PreTokenizerWrapper) -> Result<Self, TokenizerError> {
        let mut steps = Vec::new();
        push_steps(wrapper, &mut steps)?;
        Ok(Self { steps })
    }
}

fn push_steps(wrapper: PreTokenizerWrapper, steps: &mut Vec<Step>) -> Result<(), TokenizerError> {
    match wrapper {
        PreTokenizerWrapper::Sequence(sequence) => {
            for inner in sequence {
                push_steps(inner, steps)?;
            }
        }
        // The built-in GPT-2 regex; only without the prefix space, which ByteLevel adds before splitting.
        PreTokenizerWrapper::ByteLevel(byte_level) if byte_level.use_regex && !byte_level.add_prefix_space => {
            steps.push(Step::Split(RegexSplit::new(
                crate::pretokenizer::GPT2_FAST,
                Lookahead::AnyWhitespace,
            )?));
            steps.push(Step::Other(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
                false,
                byte_level.trim_offsets,
                false,
            ))));
        }
        PreTokenizerWrapper::Split(split) => {
            let fast = match (&split.pattern, split.behavior, split.invert) {
                (SplitPattern::Regex(pattern), SplitDelimiterBehavior::Isolated, false) => {
                    crate::pretokenizer::fast_equivalent(pattern)
                }
                _ => None,
            };
            match fast {
                Some((pattern, lookahead)) => {
                    steps.push(Step::Split(RegexSplit::new(&pattern, lookahead)?));
                }
                None => steps.push(Step::Other(PreTokenizerWrapper::Split(split))),
            }
        }
        other => steps.push(Step::Other(other)),
    }
    Ok(())
}

impl tokenizers::PreTokenizer for PreTokenizer {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        for step in &self.steps {
            match step {
                Step::Split(split) => {
                    pretokenized.split(|_, normalized| normalized.split(split, SplitDelimiterBehavior::Isolated))?
                }
                Step::Other(other) => other.pre_tokenize(pretokenized)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
