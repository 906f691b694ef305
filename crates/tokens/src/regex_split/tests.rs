use tokenizers::tokenizer::pattern::Pattern;

use super::RegexSplit;
use crate::pretokenizer::{LOOKAHEAD_EQUIVALENTS, fast_equivalent, split_regexes};

/// The pieces (matches and gaps) `fancy-regex` cuts `text` into with `pattern`.
fn reference_pieces<'a>(pattern: &fancy_regex::Regex, text: &'a str) -> Vec<&'a str> {
    let mut pieces = Vec::new();
    let mut position = 0;
    for found in pattern.find_iter(text) {
        let found = found.unwrap();
        if found.start() > position {
            pieces.push(&text[position..found.start()]);
        }
        pieces.push(found.as_str());
        position = found.end();
    }
    if position < text.len() {
        pieces.push(&text[position..]);
    }
    pieces
}

fn fast_pieces<'a>(split: &RegexSplit, text: &'a str) -> Vec<&'a str> {
    (&split)
        .find_matches(text)
        .unwrap()
        .into_iter()
        .map(|((start, end), _)| &text[start..end])
        .filter(|piece| !piece.is_empty())
        .collect()
}

/// Deterministic pseudo-random texts over characters that exercise every alternative.
fn texts() -> Vec<String> {
    const ALPHABET: &[char] = &[
        ' ', ' ', ' ', '\n', '\r', '\t', '\u{a0}', '\u{3000}', 'a', 'B', 'é', '中', '1', '2', '½', '!', '.', '\'', 's',
        'T', 'l', 'v', 'e', '😀', '-',
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut texts: Vec<String> = (0..3000)
        .map(|_| {
            let len = (next() % 24) as usize;
            (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect()
        })
        .collect();
    texts.extend(
        [
            "",
            " ",
            "   ",
            "a  b",
            "a \n b",
            "  \n\n  x",
            "x   ",
            "\t\tx",
            " \u{a0} y",
            "I'm here, they'LL've gone.\r\n\r\n  done  ",
            "fn main() {\n    println!(\"hi\");\n}\n",
        ]
        .map(String::from),
    );
    texts
}

#[test]
fn fast_forms_cut_like_the_lookahead_regexes() {
    let texts = texts();
    for (original, _, _) in LOOKAHEAD_EQUIVALENTS {
        let reference = fancy_regex::Regex::new(original).unwrap();
        let (fast, lookahead) = fast_equivalent(original).unwrap();
        let split = RegexSplit::new(&fast, lookahead).unwrap();
        for text in &texts {
            assert_eq!(
                fast_pieces(&split, text),
                reference_pieces(&reference, text),
                "{original:?} on {text:?}"
            );
        }
    }
}

#[test]
fn every_llama_cpp_regex_has_a_fast_form_with_the_same_cuts() {
    let texts = texts();
    for pre in ["default", "gpt2", "smollm", "llama-bpe", "qwen2"] {
        for original in split_regexes(Some(pre)).unwrap() {
            let reference = fancy_regex::Regex::new(original).unwrap();
            let (fast, lookahead) = fast_equivalent(original).unwrap();
            let split = RegexSplit::new(&fast, lookahead).unwrap();
            for text in &texts {
                assert_eq!(
                    fast_pieces(&split, text),
                    reference_pieces(&reference, text),
                    "{pre}: {original:?}"
                );
            }
        }
    }
}

#[test]
fn patterns_with_other_lookarounds_stay_on_fancy_regex() {
    assert!(fast_equivalent(r"\w+(?=!)").is_none());
    assert!(fast_equivalent(r"(a)\1").is_none());
    assert_eq!(fast_equivalent(r"\p{N}").unwrap().0, r"\p{N}");
}
