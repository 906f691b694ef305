//! The default model (SmolLM2-135M-Instruct Q4_1 GGUF) against transformers' golden data.

use std::time::{Duration, Instant};

use cleave_tokens::{ChatMessage, Tokenizer, TokenizerError};

use crate::common::{Golden, check_chat_cases, check_encode_cases, default_gguf_path, golden, smollm2};

/// The golden ids use the "smollm" pre-tokenizer (numeric characters isolated, as llama.cpp and SmolLM2's
/// own tokenizer.json do); transformers' GGUF loader ignores it, which changes " ½" (see the script).
#[test]
fn encodes_and_decodes_like_transformers() {
    let golden: Golden = golden("smollm2_golden.json");
    let tokenizer = smollm2();
    assert_eq!(tokenizer.vocab_size(), golden.vocab_size);
    check_encode_cases("smollm2", &tokenizer, &golden.encode);
}

#[test]
fn renders_the_chat_template_like_transformers() {
    let golden: Golden = golden("smollm2_golden.json");
    check_chat_cases("smollm2", &smollm2(), &golden.chat);
}

#[test]
fn special_tokens() {
    let golden: Golden = golden("smollm2_golden.json");
    let tokenizer = smollm2();
    assert_eq!(tokenizer.bos_token_id(), golden.bos_token_id);
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert!(!tokenizer.adds_bos_token(), "SmolLM2 sets add_bos_token = false");
    // EOS is <|im_end|>, which is also the template's end-of-turn marker: listed once.
    assert_eq!(tokenizer.eos_token_ids(), &[2]);
    assert_eq!(golden.eos_token_id, Some(2));
    assert_eq!(tokenizer.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tokenizer.id_to_token(2).as_deref(), Some("<|im_end|>"));
    assert_eq!(tokenizer.token_to_id("Ġthe"), Some(260));
    assert!(tokenizer.is_special_token(0));
    assert!(!tokenizer.is_special_token(260));
    assert!(tokenizer.has_chat_template());
}

#[test]
fn decode_rejects_ids_outside_the_vocabulary() {
    let tokenizer = smollm2();
    let error = tokenizer.decode(&[19556, 49152], false).unwrap_err();
    assert!(
        matches!(
            error,
            TokenizerError::TokenIdOutOfRange {
                id: 49152,
                vocab_size: 49152
            }
        ),
        "{error}"
    );
    assert!(tokenizer.decode(&[u32::MAX], true).is_err());
}

#[test]
fn chat_prompt_round_trips_through_ids() {
    let tokenizer = smollm2();
    let messages = [ChatMessage::new("user", "What is the capital of France?")];
    let prompt = tokenizer.apply_chat_template(&messages, true).unwrap();
    let ids = tokenizer.encode(&prompt, true).unwrap();
    assert_eq!(ids.first(), Some(&1), "the prompt starts with <|im_start|>");
    assert_eq!(tokenizer.decode(&ids, false).unwrap(), prompt);
}

/// Opening the GGUF and building under ~300 ms, a 600-token encode well under 1-2 ms (release). Measured
/// here on a shared 2-core machine: ~70 ms to build, ~0.2 ms to encode. The asserts leave room for a
/// loaded CI machine; the numbers are printed (`--nocapture`).
#[test]
fn build_and_encode_are_fast() {
    let start = Instant::now();
    let file = cleave_gguf::GgufFile::open(default_gguf_path()).unwrap();
    let opened = start.elapsed();
    let tokenizer = Tokenizer::from_gguf(&file).unwrap();
    let build = start.elapsed() - opened;

    let paragraph = "The quick brown fox jumps over the lazy dog; it's 2024, and naïve café owners \
                     don't mind. 数据 🎉 fn main() { println!(\"{}\", 42); }\n";
    let text = paragraph.repeat(12);
    let count = tokenizer.encode(&text, false).unwrap().len();
    assert!((550..=800).contains(&count), "{count} tokens");
    let rounds = 50u32;
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(tokenizer.encode(std::hint::black_box(&text), true).unwrap());
    }
    let encode = start.elapsed() / rounds;
    println!("GgufFile::open: {opened:?}; from_gguf: {build:?}; encode of {count} tokens: {encode:?}");
    assert!(
        opened + build < Duration::from_secs(1),
        "open {opened:?} + build {build:?}"
    );
    assert!(encode < Duration::from_millis(2), "encode took {encode:?}");
}

#[test]
fn a_tokenizer_is_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    let tokenizer = smollm2();
    let expected = tokenizer.encode("shared across threads", false).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let tokenizer = tokenizer.clone();
            std::thread::spawn(move || tokenizer.encode("shared across threads", false).unwrap())
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), expected);
    }
}
