//! Dequantization of ggml tensor data to f32, bit-exact with ggml's reference `dequantize_row_*` (and gguf-py).
//!
//! Supported: F32, F16, BF16, F64 and the quantized Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
//! Q8_K; any other type is refused with `DequantError::Unsupported`. Invariant: the input holds exactly
//! `out.len() / block_size` whole blocks, checked up front, so the kernels index fixed-size arrays and cannot go out
//! of bounds. Cost: one pass over the data; tensors past `PARALLEL_MIN_ELEMENTS` are split into chunks of whole
//! blocks and converted on the rayon pool. No fused multiply-add is used, so products round exactly as in ggml.

mod kquants;
mod legacy;

use half::{bf16, f16};
use rayon::prelude::*;

use crate::GgmlType;
use crate::error::DequantError;

/// Below this many elements the rayon hand-off costs more than it saves.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 16;
/// Elements converted per rayon task: big enough to amortise scheduling, small enough to balance two cores.
const CHUNK_ELEMENTS: usize = 1 << 15;

/// Converts one run of whole blocks; `data` and `out` have been checked to match.
type Kernel = fn(&[u8], &mut [f32]);

/// Whether `dequantize` can convert `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    kernel(ty).is_some()
}

/// Dequantizes `data` (whole blocks of `ty`, as stored in the file) into `out`, one f32 per element in storage order.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let kernel = kernel(ty).ok_or(DequantError::Unsupported { ty })?;
    let block_size = ty.block_size();
    let type_size = ty.type_size();
    let n_blocks = out.len() / block_size;
    let whole = out.len().is_multiple_of(block_size) && n_blocks.checked_mul(type_size) == Some(data.len());
    if !whole {
        return Err(DequantError::LengthMismatch {
            ty,
            bytes: data.len(),
            elements: out.len(),
        });
    }
    if out.len() < PARALLEL_MIN_ELEMENTS {
        kernel(data, out);
        return Ok(());
    }
    let blocks_per_chunk = (CHUNK_ELEMENTS / block_size).max(1);
    out.par_chunks_mut(blocks_per_chunk * block_size)
        .zip(data.par_chunks(blocks_per_chunk * type_size))
        .for_each(|(out, data)| kernel(data, out));
    Ok(())
}

fn kernel(ty: GgmlType) -> Option<Kernel> {
    use GgmlType as T;
    Some(match ty {
        T::F32 => |d, o| blocks(d, o, |b: &[u8; 4], y: &mut [f32; 1]| y[0] = f32::from_le_bytes(*b)),
        T::F16 => |d, o| blocks(d, o, |b: &[u8; 2], y: &mut [f32; 1]| y[0] = f16_le(*b)),
        T::BF16 => |d, o| {
            blocks(d, o, |b: &[u8; 2], y: &mut [f32; 1]| {
                y[0] = bf16::from_bits(u16::from_le_bytes(*b)).to_f32();
            })
        },
        // Rounds to nearest, as ggml's (float) cast does.
        T::F64 => |d, o| {
            blocks(d, o, |b: &[u8; 8], y: &mut [f32; 1]| {
                y[0] = f64::from_le_bytes(*b) as f32
            })
        },
        T::Q4_0 => |d, o| blocks(d, o, legacy::q4_0),
        T::Q4_1 => |d, o| blocks(d, o, legacy::q4_1),
        T::Q5_0 => |d, o| blocks(d, o, legacy::q5_0),
        T::Q5_1 => |d, o| blocks(d, o, legacy::q5_1),
        T::Q8_0 => |d, o| blocks(d, o, legacy::q8_0),
        T::Q2_K => |d, o| blocks(d, o, kquants::q2_k),
        T::Q3_K => |d, o| blocks(d, o, kquants::q3_k),
        T::Q4_K => |d, o| blocks(d, o, kquants::q4_k),
        T::Q5_K => |d, o| blocks(d, o, kquants::q5_k),
        T::Q6_K => |d, o| blocks(d, o, kquants::q6_k),
        T::Q8_K => |d, o| blocks(d, o, kquants::q8_k),
        _ => return None,
    })
}

/// Applies a per-block kernel to whole blocks; the fixed-size arrays let the compiler drop every bounds check.
/// `TYPE_SIZE`/`BLOCK_SIZE` must equal the type's `type_size()`/`block_size()` (a unit test checks each kernel).
fn blocks<const TYPE_SIZE: usize, const BLOCK_SIZE: usize>(
    data: &[u8],
    out: &mut [f32],
    kernel: impl Fn(&[u8; TYPE_SIZE], &mut [f32; BLOCK_SIZE]),
) {
    let (data, _) = data.as_chunks::<TYPE_SIZE>();
    let (out, _) = out.as_chunks_mut::<BLOCK_SIZE>();
    for (block, y) in data.iter().zip(out) {
        kernel(block, y);
    }
}

/// An IEEE half stored little-endian, widened exactly.
fn f16_le(bytes: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(bytes)).to_f32()
}

#[cfg(test)]
mod tests;
