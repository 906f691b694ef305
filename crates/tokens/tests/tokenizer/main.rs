//! Integration tests of cleave-tokens: golden data from Hugging Face transformers on the same files
//! (`tests/fixtures/make_tokenizer_golden.py`), streaming, chat templates and error reporting.

mod chat;
mod common;
mod errors;
mod hf_dir;
mod smollm2;
mod stream;
mod tiny_gguf;
