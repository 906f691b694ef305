//! Integration tests of cleave-tokens: golden data from Hugging Face transformers on the same files
//! (`tests/fixtures/make_tokenizer_golden.py`), streaming, chat templates and error reporting.

// clippy's `allow-unwrap-in-tests` covers `#[test]` functions only, not their helpers; this whole crate is a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chat;
mod common;
mod errors;
mod hf_dir;
mod smollm2;
mod stream;
mod tiny_gguf;
