//! Split regexes of byte-level BPE vocabularies, chosen by `tokenizer.ggml.pre` as llama.cpp chooses them.
//!
//! A byte-level vocabulary's merges were learned on text cut by a particular regex; encoding with another
//! cut gives other ids. llama.cpp (`llama-vocab.cpp`) maps each `pre` name to a list of regexes applied in
//! turn, each one cutting the pieces the previous left (matches and the text between them both become
//! pieces). This module holds those lists, each regex in its lookahead-free form for `crate::regex_split`
//! (the original spellings are kept beside them; the tests check both give the same pieces).
//! Invariant: an unknown name is an error, never a silent fallback to another split.
//! Cost: compiling the regexes once per tokenizer (a few milliseconds).

use crate::error::TokenizerError;
use crate::regex_split::{Lookahead, PreTokenizer, RegexSplit};

/// GPT-2's split (llama.cpp's spelling): contractions, letter runs, digit runs, symbol runs, whitespace.
pub(crate) const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// GPT-2's split as the `tokenizers` crate's ByteLevel spells it.
pub(crate) const GPT2_BYTE_LEVEL: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
pub(crate) const GPT2_FAST: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// Llama 3's split: case-insensitive contractions, numbers in groups of up to three.
pub(crate) const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_FAST: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";
/// Llama 3's split as its tokenizer.json spells it.
pub(crate) const LLAMA3_HF: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_HF_FAST: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// Qwen 2's split: Llama 3's with single digits.
pub(crate) const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_FAST: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";
/// Qwen 2's split as its tokenizer.json spells it.
pub(crate) const QWEN2_HF: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_HF_FAST: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+";

/// Each lookahead regex with its fast form: (original, lookahead-free, which matches give a character back).
pub(crate) const LOOKAHEAD_EQUIVALENTS: &[(&str, &str, Lookahead)] = &[
    (GPT2, GPT2_FAST, Lookahead::AnyWhitespace),
    (GPT2_BYTE_LEVEL, GPT2_FAST, Lookahead::AnyWhitespace),
    (LLAMA3, LLAMA3_FAST, Lookahead::WithoutLineBreaks),
    (LLAMA3_HF, LLAMA3_HF_FAST, Lookahead::WithoutLineBreaks),
    (QWEN2, QWEN2_FAST, Lookahead::WithoutLineBreaks),
    (QWEN2_HF, QWEN2_HF_FAST, Lookahead::WithoutLineBreaks),
];

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
/// which llama.cpp treats as "default"), in their original spelling.
pub(crate) fn split_regexes(pre: Option<&str>) -> Result<&'static [&'static str], TokenizerError> {
    const DEFAULT: &[&str] = &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"];
    const STARCODER: &[&str] = &[r"\p{N}", GPT2];
    let regexes: &'static [&'static str] = match pre.unwrap_or("default") {
        "default" => DEFAULT,
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" => &[GPT2],
        "starcoder" | "refact" | "command-r" | "smollm" | "codeshell" | "exaone" | "minerva-7b" => STARCODER,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" => &[LLAMA3],
        "qwen2" | "deepseek-r1-qwen" | "megrez" => &[QWEN2],
        other => {
            return Err(TokenizerError::UnknownPreTokenizer { pre: other.to_owned() });
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

/// A regex the `regex` crate runs with the same matches as `pattern` under `fancy-regex`: the known
/// lookahead regexes' fast forms, or the pattern itself when it needs no lookaround or backreference
/// (`fancy-regex` hands such patterns to the `regex` crate unchanged). `None`: keep `fancy-regex`.
pub(crate) fn fast_equivalent(pattern: &str) -> Option<(String, Lookahead)> {
    if let Some((_, fast, lookahead)) = LOOKAHEAD_EQUIVALENTS
        .iter()
        .find(|(original, _, _)| *original == pattern)
    {
        return Some(((*fast).to_owned(), *lookahead));
    }
    regex::Regex::new(pattern)
        .ok()
        .map(|_| (pattern.to_owned(), Lookahead::None))
}

/// The full byte-level pre-tokenizer for `pre`: the regex cuts, then the byte-to-unicode mapping.
pub(crate) fn byte_level_pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizer, TokenizerError> {
    let mut splits = Vec::new();
    for pattern in split_regexes(pre)? {
        let (fast, lookahead) = fast_equivalent(pattern).ok_or_else(|| TokenizerError::Build {
            stage: "a pre-tokenizer split regex",
            source: format!("no automaton form of {pattern:?}").into(),
        })?;
        splits.push(RegexSplit::new(&fast, lookahead)?);
    }
    Ok(PreTokenizer::byte_level(splits))
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
