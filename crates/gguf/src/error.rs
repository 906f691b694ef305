//! Errors of this crate: every one names the file, and the key, tensor or file region that is wrong.
//!
//! `GgufError` is what the public API returns; `FormatError` says what is malformed in a file (with `context`
//! beside it naming where); `DequantError` is what the file-independent `dequantize` can refuse.

use std::path::PathBuf;

use crate::GgmlType;

/// Any failure to open, parse or read a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a well-formed GGUF file. `context` names the part being read ("header",
    /// "metadata 'general.alignment'", "tensor 'blk.3.attn_q.weight'").
    #[error("{}: {context}: {kind}", path.display())]
    Format {
        path: PathBuf,
        context: String,
        kind: FormatError,
    },
    #[error("{}: metadata key '{key}' is missing", path.display())]
    MissingKey { path: PathBuf, key: String },
    #[error("{}: metadata key '{key}' is {found}, expected {expected}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{}: no tensor named '{name}'", path.display())]
    NoSuchTensor { path: PathBuf, name: String },
    #[error("{}: tensor '{name}': {source}", path.display())]
    Tensor {
        path: PathBuf,
        name: String,
        #[source]
        source: DequantError,
    },
}

/// What is malformed in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is {size} bytes, shorter than the {min}-byte GGUF header")]
    TooShort { size: u64, min: u64 },
    #[error("bad magic {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    #[error("version {version:#x} looks byte-swapped: big-endian GGUF files are not supported")]
    BigEndian { version: u32 },
    #[error("version {version} is not supported (only 2 and 3)")]
    UnsupportedVersion { version: u32 },
    #[error("{need} bytes needed at offset {offset}, but the file ends at {size}")]
    Truncated { offset: u64, need: u64, size: u64 },
    #[error("{what} count {count} cannot fit in the {remaining} bytes left after offset {offset}")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        offset: u64,
        remaining: u64,
    },
    #[error("string at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { offset: u64 },
    #[error("unknown value type id {id} at offset {offset}")]
    UnknownValueType { id: u32, offset: u64 },
    #[error("bool at offset {offset} holds {byte}, not 0 or 1")]
    InvalidBool { byte: u8, offset: u64 },
    #[error("arrays nested deeper than {max} levels at offset {offset}")]
    NestingTooDeep { max: usize, offset: u64 },
    #[error("key appears more than once")]
    DuplicateKey,
    #[error("tensor name appears more than once")]
    DuplicateTensor,
    #[error("{n_dims} dimensions, more than ggml's {max}")]
    TooManyDims { n_dims: u32, max: u32 },
    #[error("dimensions {dims:?} hold more elements than fit in an i64")]
    ElementCountOverflow { dims: Vec<u64> },
    #[error("unknown or removed ggml type id {id}")]
    UnknownTensorType { id: u32 },
    #[error("row of {ne0} elements is not a whole number of {ty} blocks ({block} elements each)")]
    RowNotWholeBlocks { ty: GgmlType, ne0: u64, block: u64 },
    #[error("alignment {value} is not a power of two that fits in a u32")]
    BadAlignment { value: String },
    #[error("data offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { offset: u64, alignment: u64 },
    #[error("data [{start}..{end}) extends past end of file (size {size})")]
    TensorOutOfBounds { start: u64, end: u64, size: u64 },
}

/// Why `dequantize` refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    #[error("unsupported tensor type {ty}: cannot dequantize it to f32")]
    Unsupported { ty: GgmlType },
    #[error("{bytes} bytes of {ty} do not hold exactly {elements} values")]
    LengthMismatch {
        ty: GgmlType,
        bytes: usize,
        elements: usize,
    },
}

impl GgufError {
    /// The malformation, when this is a format error (tests and callers that branch on the kind use this).
    pub fn format_kind(&self) -> Option<&FormatError> {
        match self {
            Self::Format { kind, .. } => Some(kind),
            _ => None,
        }
    }
}
