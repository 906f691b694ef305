//! `Tokenizer::from_hf_dir` on a small trained tokenizer.json, against transformers' ids and renderings.

use std::fs;
use std::path::Path;

use cleave_tokens::{Tokenizer, TokenizerError};

use crate::common::{Golden, check_chat_cases, check_encode_cases, fixture, golden};

fn tiny() -> Tokenizer {
    Tokenizer::from_hf_dir(fixture("tiny-bpe-hf")).unwrap()
}

#[test]
fn encodes_decodes_and_renders_like_transformers() {
    let golden: Golden = golden("tiny_bpe_hf_golden.json");
    let tokenizer = tiny();
    assert_eq!(tokenizer.vocab_size(), golden.vocab_size);
    assert_eq!(tokenizer.bos_token_id(), golden.bos_token_id);
    check_encode_cases("tiny-bpe-hf", &tokenizer, &golden.encode);
    check_chat_cases("tiny-bpe-hf", &tokenizer, &golden.chat);
    // tokenizer.json's ByteLevel(use_regex) pre-tokenizer qualifies for the direct byte-level encoder, so
    // the golden ids above checked that path.
    assert!(
        format!("{tokenizer:?}").contains("direct_byte_level_encoding: true"),
        "{tokenizer:?}"
    );
}

#[test]
fn bos_comes_from_the_post_processor_and_eos_from_generation_config() {
    let tokenizer = tiny();
    assert!(tokenizer.adds_bos_token());
    // generation_config.json lists [0, 2]; tokenizer_config's eos_token is <|endoftext|> = 0; the
    // template writes <|im_end|> (2) and <|endoftext|> is not in it.
    assert_eq!(tokenizer.eos_token_ids(), &[0, 2]);
}

/// A scratch copy of the fixture directory with some files replaced.
fn variant(name: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cleave-tokens-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(fixture("tiny-bpe-hf/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    for (file, text) in files {
        fs::write(dir.join(file), text).unwrap();
    }
    dir
}

#[test]
fn explicit_add_bos_token_overrides_the_post_processor() {
    let dir = variant(
        "no-bos",
        &[(
            "tokenizer_config.json",
            r#"{"bos_token": "<|im_start|>", "add_bos_token": false}"#,
        )],
    );
    let tokenizer = Tokenizer::from_hf_dir(&dir).unwrap();
    assert!(!tokenizer.adds_bos_token());
    assert_eq!(
        tokenizer.encode("hi", true).unwrap(),
        tokenizer.encode("hi", false).unwrap()
    );
    assert!(!tokenizer.has_chat_template());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn chat_template_jinja_file_and_named_templates() {
    let dir = variant(
        "jinja",
        &[
            (
                "tokenizer_config.json",
                r#"{"chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "config"}]}"#,
            ),
            ("config.json", r#"{"eos_token_id": 2, "vocab_size": 320}"#),
        ],
    );
    let tokenizer = Tokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(tokenizer.apply_chat_template(&[], false).unwrap(), "config");
    assert_eq!(tokenizer.eos_token_ids(), &[2]);
    assert_eq!(tokenizer.vocab_size(), 320, "config.json's padded vocabulary counts");
    fs::write(dir.join("chat_template.jinja"), "from the jinja file\n").unwrap();
    let tokenizer = Tokenizer::from_hf_dir(&dir).unwrap();
    assert_eq!(
        tokenizer.apply_chat_template(&[], false).unwrap(),
        "from the jinja file"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_files_are_named() {
    let missing = Tokenizer::from_hf_dir(Path::new("/nonexistent/model")).unwrap_err();
    assert!(matches!(missing, TokenizerError::TokenizerJson { .. }), "{missing}");
    assert!(
        missing.to_string().contains("/nonexistent/model/tokenizer.json"),
        "{missing}"
    );

    let dir = variant("bad-json", &[("tokenizer_config.json", "{not json")]);
    let error = Tokenizer::from_hf_dir(&dir).unwrap_err();
    assert!(matches!(error, TokenizerError::Json { .. }), "{error}");
    assert!(error.to_string().contains("tokenizer_config.json"), "{error}");

    fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": 5}"#).unwrap();
    let error = Tokenizer::from_hf_dir(&dir).unwrap_err();
    assert!(
        matches!(error, TokenizerError::InvalidConfig { field: "eos_token", .. }),
        "{error}"
    );

    fs::write(dir.join("tokenizer_config.json"), "{}").unwrap();
    fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [1, "x"]}"#).unwrap();
    let error = Tokenizer::from_hf_dir(&dir).unwrap_err();
    assert!(
        matches!(
            error,
            TokenizerError::InvalidConfig {
                field: "eos_token_id",
                ..
            }
        ),
        "{error}"
    );
    fs::remove_dir_all(dir).unwrap();
}
