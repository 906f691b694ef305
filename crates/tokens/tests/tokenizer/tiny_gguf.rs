//! Small trained vocabularies in metadata-only GGUFs: the SentencePiece ("llama") model and the
//! "llama-bpe" and "qwen2" byte-level pre-tokenizers, against transformers' ids for the same files.

use std::collections::BTreeMap;

use crate::common::{Golden, check_encode_cases, golden, tiny_gguf};

fn check(name: &str) {
    let goldens: BTreeMap<String, Golden> = golden("tiny_gguf_golden.json");
    let golden = &goldens[name];
    let tokenizer = tiny_gguf(name);
    assert_eq!(tokenizer.vocab_size(), golden.vocab_size);
    check_encode_cases(name, &tokenizer, &golden.encode);
}

#[test]
fn sentencepiece_matches_transformers() {
    check("tiny-spm.gguf");
}

#[test]
fn sentencepiece_special_tokens() {
    let tokenizer = tiny_gguf("tiny-spm.gguf");
    assert_eq!(tokenizer.bos_token_id(), Some(1));
    assert!(
        tokenizer.adds_bos_token(),
        "a llama vocabulary without add_bos_token gets BOS"
    );
    assert_eq!(tokenizer.eos_token_ids(), &[2]);
    assert_eq!(tokenizer.encode("", true).unwrap(), vec![1]);
    // <unk> is typed "unknown", not "control", but is still special (skipped on decode).
    assert!(tokenizer.is_special_token(0));
    let think = tokenizer.token_to_id("<think>").unwrap();
    assert!(
        !tokenizer.is_special_token(think),
        "user-defined tokens are kept on decode"
    );
}

#[test]
fn llama3_pre_tokenizer_matches_transformers() {
    check("tiny-llama3.gguf");
}

#[test]
fn qwen2_pre_tokenizer_matches_transformers() {
    check("tiny-qwen2.gguf");
}

#[test]
fn byte_level_bos_follows_add_bos_token() {
    let llama3 = tiny_gguf("tiny-llama3.gguf");
    let bos = llama3.token_to_id("<|begin_of_text|>");
    assert_eq!(llama3.bos_token_id(), bos);
    assert!(llama3.adds_bos_token());
    assert_eq!(llama3.encode("hi", true).unwrap()[0], bos.unwrap());
    let qwen2 = tiny_gguf("tiny-qwen2.gguf");
    assert!(!qwen2.adds_bos_token());
    assert_eq!(qwen2.encode("hi", true).unwrap(), qwen2.encode("hi", false).unwrap());
}
