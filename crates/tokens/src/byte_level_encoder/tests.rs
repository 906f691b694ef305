use std::path::PathBuf;

use cleave_gguf::GgufFile;

use super::ByteLevelEncoder;
use crate::byte_level;
use crate::gguf::added_tokens;
use crate::spec::GgufTokenizerSpec;
use crate::tokenizer::{Inner, add_tokens};

/// The `tokenizers` pipeline and the direct encoder of a GGUF's byte-level vocabulary.
fn pipeline(path: PathBuf) -> (Inner, ByteLevelEncoder) {
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e} (run `cleave model pull` for the default model)"));
    let spec = GgufTokenizerSpec::from_gguf(&file).unwrap();
    let mut inner = byte_level::build(&spec).unwrap();
    let (special, plain) = added_tokens(&spec, true);
    add_tokens(&mut inner, &special, &plain);
    let encoder = ByteLevelEncoder::for_pipeline(&inner).expect("a plain byte-level pipeline");
    (inner, encoder)
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn default_model() -> PathBuf {
    match std::env::var_os("CLEAVE_TEST_GGUF") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("HOME").unwrap())
            .join(".cache/cleave/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

/// Generated texts mixing words, numbers, whitespace runs, symbols, non-ASCII and added tokens.
fn texts() -> Vec<String> {
    const PARTS: &[&str] = &[
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "\u{a0}",
        "the",
        " quick",
        "Brown",
        "'s",
        "'LL",
        "don't",
        "12",
        "3456",
        "½",
        "!",
        "...",
        "(",
        "{}",
        "é",
        "naïve",
        "中文",
        "😀",
        "👨‍👩‍👧",
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<think>",
        "<|eot_id|>",
        "<|",
        "|>",
        "<",
        "x",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut texts: Vec<String> = (0..1500)
        .map(|_| {
            let len = (next() % 16) as usize;
            (0..len)
                .map(|_| PARTS[(next() % PARTS.len() as u64) as usize])
                .collect()
        })
        .collect();
    texts.push(String::new());
    texts
}

fn assert_same_ids(label: &str, inner: &Inner, encoder: &ByteLevelEncoder) {
    for text in texts() {
        let expected = inner.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        let mut ids = Vec::new();
        encoder.encode_into(inner, &text, &mut ids).unwrap();
        assert_eq!(ids, expected, "{label}: {text:?}");
    }
}

#[test]
fn direct_encoding_equals_the_pipeline_on_the_default_model() {
    let (inner, encoder) = pipeline(default_model());
    assert_same_ids("smollm2", &inner, &encoder);
}

#[test]
fn direct_encoding_equals_the_pipeline_on_llama3_and_qwen2_splits() {
    for name in ["tiny-llama3.gguf", "tiny-qwen2.gguf"] {
        let (inner, encoder) = pipeline(fixture(name));
        assert_same_ids(name, &inner, &encoder);
    }
}

#[test]
fn other_pipelines_are_not_taken_over() {
    let file = GgufFile::open(fixture("tiny-spm.gguf")).unwrap();
    let spec = GgufTokenizerSpec::from_gguf(&file).unwrap();
    let inner = crate::sentencepiece::build(&spec).unwrap();
    assert!(
        ByteLevelEncoder::for_pipeline(&inner).is_none(),
        "SentencePiece has no byte-level splits"
    );

    let (mut inner, _) = pipeline(fixture("tiny-qwen2.gguf"));
    inner.add_tokens(&[tokenizers::AddedToken::from("<stripped>", true).lstrip(true)]);
    assert!(
        ByteLevelEncoder::for_pipeline(&inner).is_none(),
        "strip rules need the pipeline"
    );
}
