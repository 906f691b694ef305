//! Tensor descriptions as a GGUF file lists them: name, ggml-order dimensions, element type, data offset.
//!
//! Dimensions are in ggml order, `ne0` (the contiguous, innermost one) first; `shape()` gives the usual
//! outermost-first order. A `TensorInfo` that came from `GgufFile` has been checked: its element count and byte
//! length fit in `u64` (and `i64`), its rows are whole blocks and its data lies inside the file.

use crate::GgmlType;

/// One tensor of a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is `ne0`, the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Byte offset of the data, relative to the start of the file's data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements (1 for a tensor with no dimensions). Saturates at `u64::MAX` for dimensions no file could
    /// hold, which a parsed `TensorInfo` never has.
    pub fn n_elements(&self) -> u64 {
        self.checked_n_elements().unwrap_or(u64::MAX)
    }

    /// Dimensions outermost first (ggml's `dims` reversed), the row-major shape of `GgufFile::tensor_f32`'s output.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// Bytes of data in the file. Saturates at `u64::MAX` where `checked_byte_len` is `None`, which never happens
    /// for a parsed `TensorInfo`.
    pub fn byte_len(&self) -> u64 {
        self.checked_byte_len().unwrap_or(u64::MAX)
    }

    /// The element count, or `None` if it overflows.
    pub fn checked_n_elements(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Bytes of data, or `None` if the count overflows or a row is not a whole number of blocks.
    pub fn checked_byte_len(&self) -> Option<u64> {
        let ne0 = self.dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(self.ty.block_size() as u64) {
            return None;
        }
        self.ty.bytes_for(self.checked_n_elements()?)
    }
}
