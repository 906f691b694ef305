//! Pre-tokenizers of byte-level BPE vocabularies, chosen by `tokenizer.ggml.pre` as llama.cpp chooses them.
//!
//! A byte-level vocabulary's merges were learned on text cut by a particular regex; encoding with another
//! cut gives other ids. llama.cpp (`llama-vocab.cpp`) maps each `pre` name to a list of regexes applied in
//! turn, each one cutting the pieces the previous left (matches and the text between them both become
//! pieces). This module reproduces that list as a `tokenizers` `Sequence` of `Split(.., Isolated)` followed
//! by the byte-to-unicode mapping (`ByteLevel` without its own regex).
//!
//! Invariant: an unknown name is an error, never a silent fallback to another split.
//! Cost: compiling the regexes once per tokenizer (well under a millisecond).

use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::SplitDelimiterBehavior;

use crate::error::TokenizerError;

/// GPT-2's split: contractions, letter runs, digit runs, other-symbol runs, whitespace.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's split: case-insensitive contractions, numbers in groups of up to three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2's split: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` names accepted, for error messages.
pub(crate) const KNOWN_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt2",
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "jais",
    "starcoder",
    "refact",
    "command-r",
    "smollm",
    "codeshell",
    "exaone",
    "minerva-7b",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "qwen2",
    "deepseek-r1-qwen",
    "megrez",
];

/// The regexes llama.cpp applies, in order, for the pre-tokenizer `pre` (`None`: the key is absent,
/// which llama.cpp treats as "default").
pub(crate) fn split_regexes(pre: Option<&str>) -> Result<&'static [&'static str], TokenizerError> {
    const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
    const STARCODER: &[&str] = &[r"\p{N}", GPT2];
    let regexes: &'static [&'static str] = match pre.unwrap_or("default") {
        "default" => DEFAULT,
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => &[GPT2],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => {
            STARCODER
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" => &[LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "megrez" => &[QWEN2],
        other => {
            return Err(TokenizerError::UnknownPreTokenizer {
                pre: other.to_owned(),
            });
        }
    };
    Ok(regexes)
}

/// Whether llama.cpp looks a whole pre-token up in the vocabulary before merging (`ignore_merges`), as
/// Llama 3's own tokenizer.json does.
pub(crate) fn ignores_merges(pre: Option<&str>) -> bool {
    matches!(
        pre,
        Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral")
    )
}

/// The full byte-level pre-tokenizer for `pre`: the regex cuts, then the byte-to-unicode mapping.
pub(crate) fn byte_level_pre_tokenizer(
    pre: Option<&str>,
) -> Result<PreTokenizerWrapper, TokenizerError> {
    let mut steps = Vec::new();
    for regex in split_regexes(pre)? {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|source| TokenizerError::Build {
            stage: "the pre-tokenizer split regex",
            source,
        })?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, true, false,
    )));
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(steps)))
}

/// GPT-2's reversible byte → printable character table: printable Latin-1 bytes stand for themselves,
/// the others are moved to U+0100 and up, in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            byte as u32
        } else {
            shifted += 1;
            0xFF + shifted
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    table
}
