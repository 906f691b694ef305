//! Integration tests of cleave-gguf, in one test binary: parsing of synthetic files (`parsing`), rejection of every
//! kind of corruption (`corruption`, `mutations`), dequantization against gguf-py's values (`dequant_fixtures`), and
//! the real default model (`real_model`). `writer` builds the synthetic files.

// clippy's `allow-unwrap-in-tests` covers `#[test]` functions only, not their helpers; this whole crate is a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod corruption;
mod dequant_fixtures;
mod mutations;
mod parsing;
mod real_model;
mod writer;
