//! Tokenizers, chat templates and prefix block hashing, shared by the router and the engine (so the
//! router never links the engine).
//!
//! - [`Tokenizer`]: built from a GGUF file's `tokenizer.*` metadata ([`Tokenizer::from_gguf`]; byte-level
//!   BPE and SentencePiece BPE) or a Hugging Face directory ([`Tokenizer::from_hf_dir`]); encodes with
//!   special tokens recognised in text, decodes, renders the chat template ([`ChatMessage`]) and streams
//!   text out token by token ([`DecodeStream`]). It reproduces Hugging Face transformers' ids for the same
//!   files (checked against golden data in `tests/`).
//! - [`block_hashes`] / [`BlockHasher`]: chained hashes of full token blocks, the prefix cache's keys.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cleave_tokens::{ChatMessage, Tokenizer, block_hashes};
//! let file = cleave_gguf::GgufFile::open("model.gguf")?;
//! let tokenizer = Tokenizer::from_gguf(&file)?;
//! let prompt = tokenizer.apply_chat_template(&[ChatMessage::new("user", "Hi!")], true)?;
//! let ids = tokenizer.encode(&prompt, true)?;
//! let blocks = block_hashes(&ids, 16, 0);
//! # let _ = blocks;
//! # Ok(())
//! # }
//! ```

mod block_hash;
mod byte_level;
mod byte_level_encoder;
mod chat;
mod error;
mod gguf;
mod hf_dir;
mod pretokenizer;
mod regex_split;
mod sentencepiece;
mod spec;
mod stream;
mod tokenizer;

pub use block_hash::{BlockHash, BlockHasher, block_hashes};
pub use chat::ChatMessage;
pub use error::{TokenizerError, TokenizersError};
pub use spec::{GgufTokenizerSpec, TokenType};
pub use stream::DecodeStream;
pub use tokenizer::Tokenizer;
