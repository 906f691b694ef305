//! Bad metadata and bad input give errors that name what is wrong, never panics.

use cleave_gguf::GgufFile;
use cleave_tokens::{GgufTokenizerSpec, TokenType, Tokenizer, TokenizerError};

/// GPT-2's byte alphabet, in byte order.
fn byte_alphabet() -> Vec<String> {
    let mut shifted = 0;
    (0u32..256)
        .map(|byte| {
            let printable = matches!(byte, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let code = if printable {
                byte
            } else {
                shifted += 1;
                0xFF + shifted
            };
            char::from_u32(code).unwrap().to_string()
        })
        .collect()
}

/// A valid byte-level spec: the 256 bytes, "he", "hel", and a control token.
fn byte_level_spec() -> GgufTokenizerSpec {
    let mut tokens = byte_alphabet();
    tokens.extend(["he".to_owned(), "hel".to_owned(), "<|end|>".to_owned()]);
    let mut types = vec![TokenType::Normal; tokens.len()];
    types[258] = TokenType::Control;
    GgufTokenizerSpec {
        model: "gpt2".to_owned(),
        pre: Some("gpt2".to_owned()),
        tokens,
        token_types: Some(types),
        merges: Some(vec!["h e".to_owned(), "he l".to_owned()]),
        eos_token_id: Some(258),
        ..GgufTokenizerSpec::default()
    }
}

fn build_error(spec: GgufTokenizerSpec) -> TokenizerError {
    Tokenizer::from_gguf_spec(&spec).unwrap_err()
}

#[test]
fn the_valid_spec_builds() {
    let tokenizer = Tokenizer::from_gguf_spec(&byte_level_spec()).unwrap();
    assert_eq!(
        tokenizer.encode("hello<|end|>", false).unwrap(),
        vec![257, 108, 111, 258]
    );
    assert_eq!(tokenizer.eos_token_ids(), &[258]);
    assert!(!tokenizer.has_chat_template());
}

#[test]
fn a_missing_pre_tokenizer_is_llama_cpp_default() {
    let spec = GgufTokenizerSpec {
        pre: None,
        ..byte_level_spec()
    };
    let tokenizer = Tokenizer::from_gguf_spec(&spec).unwrap();
    // The default split cuts punctuation runs and numbers into groups of three first.
    assert_eq!(
        tokenizer
            .decode(&tokenizer.encode("hello, 12345!", false).unwrap(), false)
            .unwrap(),
        "hello, 12345!"
    );
}

#[test]
fn unknown_pre_tokenizer() {
    let error = build_error(GgufTokenizerSpec {
        pre: Some("mystery".to_owned()),
        ..byte_level_spec()
    });
    assert!(
        matches!(&error, TokenizerError::UnknownPreTokenizer { pre } if pre == "mystery"),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains("tokenizer.ggml.pre") && message.contains("smollm") && message.contains("qwen2"),
        "{message}"
    );
}

#[test]
fn unsupported_models() {
    let error = build_error(GgufTokenizerSpec {
        model: "bert".to_owned(),
        ..byte_level_spec()
    });
    assert!(
        matches!(&error, TokenizerError::UnsupportedModel { model, .. } if model == "bert"),
        "{error}"
    );
    assert!(
        error.to_string().contains("unsupported tokenizer model `bert`"),
        "{error}"
    );

    let gemma = GgufTokenizerSpec {
        model: "llama".to_owned(),
        architecture: Some("gemma2".to_owned()),
        scores: Some(vec![0.0; 259]),
        ..byte_level_spec()
    };
    let error = build_error(gemma);
    assert!(error.to_string().contains("gemma2"), "{error}");
}

#[test]
fn malformed_and_dangling_merges() {
    let mut spec = byte_level_spec();
    spec.merges = Some(vec!["h e".to_owned(), "hel".to_owned()]);
    let error = build_error(spec);
    assert!(
        matches!(error, TokenizerError::MalformedMerge { index: 1, .. }),
        "{error}"
    );

    let mut spec = byte_level_spec();
    spec.merges = Some(vec!["h e".to_owned(), "he zz".to_owned()]);
    let error = build_error(spec);
    assert!(matches!(error, TokenizerError::Build { .. }), "{error}");

    let spec = GgufTokenizerSpec {
        merges: None,
        ..byte_level_spec()
    };
    let error = build_error(spec);
    assert!(
        matches!(
            error,
            TokenizerError::MissingMetadata {
                key: "tokenizer.ggml.merges"
            }
        ),
        "{error}"
    );

    let spec = GgufTokenizerSpec {
        model: "llama".to_owned(),
        merges: None,
        scores: None,
        ..byte_level_spec()
    };
    let error = build_error(spec);
    assert!(
        matches!(
            error,
            TokenizerError::MissingMetadata {
                key: "tokenizer.ggml.scores"
            }
        ),
        "{error}"
    );
}

#[test]
fn inconsistent_arrays_and_ids() {
    let mut spec = byte_level_spec();
    spec.token_types = Some(vec![TokenType::Normal; 3]);
    let error = build_error(spec);
    assert!(
        matches!(
            error,
            TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.token_type",
                expected: 259,
                found: 3
            }
        ),
        "{error}"
    );

    let spec = GgufTokenizerSpec {
        bos_token_id: Some(259),
        ..byte_level_spec()
    };
    let error = build_error(spec);
    assert!(
        matches!(
            error,
            TokenizerError::SpecialTokenOutOfRange {
                key: "tokenizer.ggml.bos_token_id",
                id: 259,
                ..
            }
        ),
        "{error}"
    );

    let error = build_error(GgufTokenizerSpec {
        tokens: Vec::new(),
        token_types: None,
        ..byte_level_spec()
    });
    assert!(
        matches!(
            error,
            TokenizerError::InvalidMetadata {
                key: "tokenizer.ggml.tokens",
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_bad_template_in_gguf_is_reported() {
    let spec = GgufTokenizerSpec {
        chat_template: Some("{{ unclosed".to_owned()),
        ..byte_level_spec()
    };
    assert!(matches!(build_error(spec), TokenizerError::ChatTemplateSyntax(_)));
}

/// A GGUF v3 file with one metadata entry and no tensors.
fn gguf_with_only_architecture() -> Vec<u8> {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    let (key, value) = ("general.architecture", "llama");
    bytes.extend((key.len() as u64).to_le_bytes());
    bytes.extend(key.as_bytes());
    bytes.extend(8u32.to_le_bytes()); // string
    bytes.extend((value.len() as u64).to_le_bytes());
    bytes.extend(value.as_bytes());
    bytes
}

#[test]
fn a_gguf_without_tokenizer_metadata_names_the_missing_key() {
    let file = GgufFile::from_bytes(gguf_with_only_architecture(), "no-tokenizer.gguf").unwrap();
    let error = Tokenizer::from_gguf(&file).unwrap_err();
    assert!(matches!(error, TokenizerError::Metadata(_)), "{error}");
    assert!(error.to_string().contains("tokenizer.ggml.model"), "{error}");
}
