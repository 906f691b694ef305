//! GGUF model files: header, metadata, tensor infos, and dequantization of tensor data to f32.
//!
//! `GgufFile::open` maps a file and validates all of its structure up front (versions 2 and 3, little-endian):
//! every count and length is checked against the bytes left before anything is allocated, and every tensor's data
//! is checked to lie, aligned, inside the file. Afterwards nothing a file contains can make this crate panic;
//! errors name the file and the key, tensor or offset at fault. `dequantize` converts ggml's block formats
//! bit-exactly to f32, in parallel for large tensors.
//!
//! ```no_run
//! # fn main() -> Result<(), cleave_gguf::GgufError> {
//! let file = cleave_gguf::GgufFile::open("model.gguf")?;
//! let layers = file.get_u64(&format!("{}.block_count", file.architecture()?))?;
//! let embedding = file.tensor_f32("token_embd.weight")?; // row-major, shape `tensor(..).shape()`
//! # let _ = (layers, embedding);
//! # Ok(())
//! # }
//! ```

mod dequant;
mod error;
mod file;
mod parse;
mod reader;
mod tensor;
mod types;
mod value;

pub use dequant::{can_dequantize, dequantize};
pub use error::{DequantError, FormatError, GgufError};
pub use file::GgufFile;
pub use parse::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use tensor::TensorInfo;
pub use types::{GgmlType, QK_K};
pub use value::Value;
