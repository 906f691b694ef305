//! Shared helpers of the integration tests: fixture paths, golden data, the default model's tokenizer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cleave_tokens::{ChatMessage, Tokenizer};
use serde::Deserialize;

/// Golden data written by `tests/fixtures/make_tokenizer_golden.py` (transformers on the same files).
#[derive(Debug, Deserialize)]
pub struct Golden {
    pub vocab_size: usize,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    pub encode: Vec<EncodeCase>,
    #[serde(default)]
    pub chat: Vec<ChatCase>,
}

#[derive(Debug, Deserialize)]
pub struct EncodeCase {
    pub text: String,
    pub ids: Vec<u32>,
    pub ids_with_special: Vec<u32>,
    pub decoded: String,
    pub decoded_skip_special: String,
}

#[derive(Debug, Deserialize)]
pub struct ChatCase {
    pub messages: Vec<ChatMessage>,
    pub add_generation_prompt: bool,
    pub rendered: String,
    pub ids: Vec<u32>,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

pub fn golden<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The default model's GGUF: `CLEAVE_TEST_GGUF`, else the model cache. Missing → the test fails.
pub fn default_gguf_path() -> PathBuf {
    let path = match std::env::var_os("CLEAVE_TEST_GGUF") {
        Some(path) => PathBuf::from(path),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is not set");
            PathBuf::from(home).join(".cache/cleave/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
        }
    };
    assert!(
        path.exists(),
        "{} is missing: run `cleave model pull` (or set CLEAVE_TEST_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf)",
        path.display()
    );
    path
}

/// The default model's tokenizer, built once per test binary.
pub fn smollm2() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let file = cleave_gguf::GgufFile::open(default_gguf_path()).expect("open the default GGUF");
            Arc::new(Tokenizer::from_gguf(&file).expect("build the tokenizer from GGUF"))
        })
        .clone()
}

pub fn tiny_gguf(name: &str) -> Tokenizer {
    let file = cleave_gguf::GgufFile::open(fixture(name)).expect("open fixture GGUF");
    Tokenizer::from_gguf(&file).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Checks every encode case of `golden` against `tokenizer`; reports all mismatches at once.
pub fn check_encode_cases(label: &str, tokenizer: &Tokenizer, cases: &[EncodeCase]) {
    let mut failures = Vec::new();
    for case in cases {
        let ids = tokenizer.encode(&case.text, false).expect("encode");
        if ids != case.ids {
            failures.push(format!("{:?}: ids {ids:?}, expected {:?}", case.text, case.ids));
        }
        let with = tokenizer.encode(&case.text, true).expect("encode");
        if with != case.ids_with_special {
            failures.push(format!(
                "{:?}: ids with special {with:?}, expected {:?}",
                case.text, case.ids_with_special
            ));
        }
        let decoded = tokenizer.decode(&case.ids_with_special, false).expect("decode");
        if decoded != case.decoded {
            failures.push(format!(
                "{:?}: decoded {decoded:?}, expected {:?}",
                case.text, case.decoded
            ));
        }
        let skipped = tokenizer.decode(&case.ids_with_special, true).expect("decode");
        if skipped != case.decoded_skip_special {
            failures.push(format!(
                "{:?}: decoded (skip special) {skipped:?}, expected {:?}",
                case.text, case.decoded_skip_special
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: {} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

pub fn check_chat_cases(label: &str, tokenizer: &Tokenizer, cases: &[ChatCase]) {
    assert!(!cases.is_empty());
    for case in cases {
        let rendered = tokenizer
            .apply_chat_template(&case.messages, case.add_generation_prompt)
            .expect("render");
        assert_eq!(rendered, case.rendered, "{label}: {:?}", case.messages);
        let ids = tokenizer.encode(&rendered, false).expect("encode");
        assert_eq!(ids, case.ids, "{label}: ids of {rendered:?}");
    }
}
