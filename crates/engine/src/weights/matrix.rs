//! A weight matrix kept in its stored precision and dequantized to f32 on the fly, row by row.
//!
//! Rows are output features, columns input features (the GGUF and PyTorch `[out, in]` layout). Dequantizing a row
//! yields exactly the f32 values a full up-front dequantization would (same formulas, same rounding), so the math
//! matches an f32 reference while memory traffic stays at the stored size — the point on a bandwidth-bound CPU.

use cleave_gguf::GgmlType;
use half::{bf16, f16};

#[derive(Debug)]
pub enum WeightData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    /// A ggml block-quantized type; each row is `row_bytes` long and holds whole blocks.
    Quantized {
        ty: GgmlType,
        bytes: Vec<u8>,
        row_bytes: usize,
    },
}

#[derive(Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: WeightData,
}

impl Matrix {
    pub fn f32(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        debug_assert_eq!(values.len(), rows * cols);
        Matrix {
            rows,
            cols,
            data: WeightData::F32(values),
        }
    }

    /// Bytes held, for memory reports.
    pub fn byte_len(&self) -> usize {
        match &self.data {
            WeightData::F32(v) => v.len() * 4,
            WeightData::Bf16(v) => v.len() * 2,
            WeightData::F16(v) => v.len() * 2,
            WeightData::Quantized { bytes, .. } => bytes.len(),
        }
    }

    pub fn dtype_name(&self) -> String {
        match &self.data {
            WeightData::F32(_) => "f32".into(),
            WeightData::Bf16(_) => "bf16".into(),
            WeightData::F16(_) => "f16".into(),
            WeightData::Quantized { ty, .. } => format!("{ty:?}"),
        }
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            WeightData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// Writes rows `r0..r0 + out.len() / cols` as f32 into `out`.
    pub fn dequantize_rows(&self, r0: usize, out: &mut [f32]) {
        let cols = self.cols;
        let n_rows = out.len() / cols;
        match &self.data {
            WeightData::F32(v) => out.copy_from_slice(&v[r0 * cols..(r0 + n_rows) * cols]),
            WeightData::Bf16(v) => {
                for (o, x) in out.iter_mut().zip(&v[r0 * cols..(r0 + n_rows) * cols]) {
                    *o = x.to_f32();
                }
            }
            WeightData::F16(v) => {
                for (o, x) in out.iter_mut().zip(&v[r0 * cols..(r0 + n_rows) * cols]) {
                    *o = x.to_f32();
                }
            }
            WeightData::Quantized { ty, bytes, row_bytes } => {
                let src = &bytes[r0 * row_bytes..(r0 + n_rows) * row_bytes];
                dequantize_blocks(*ty, src, out);
            }
        }
    }

    /// Concatenates matrices with equal column counts along rows (fusing q/k/v or gate/up into one GEMM).
    /// Matrices of one storage kind stay in it; mixed kinds fall back to f32.
    pub fn concat_rows(parts: Vec<Matrix>) -> Matrix {
        let cols = parts.first().map_or(0, |m| m.cols);
        let rows = parts.iter().map(|m| m.rows).sum();
        let same_kind = parts.windows(2).all(|w| same_storage(&w[0].data, &w[1].data));
        if !same_kind {
            let mut values = vec![0.0; rows * cols];
            let mut r = 0;
            for m in &parts {
                m.dequantize_rows(0, &mut values[r * cols..(r + m.rows) * cols]);
                r += m.rows;
            }
            return Matrix::f32(rows, cols, values);
        }
        let mut iter = parts.into_iter();
        let Some(first) = iter.next() else {
            return Matrix::f32(0, 0, Vec::new());
        };
        let data = iter.fold(first.data, |acc, m| match (acc, m.data) {
            (WeightData::F32(mut a), WeightData::F32(b)) => {
                a.extend(b);
                WeightData::F32(a)
            }
            (WeightData::Bf16(mut a), WeightData::Bf16(b)) => {
                a.extend(b);
                WeightData::Bf16(a)
            }
            (WeightData::F16(mut a), WeightData::F16(b)) => {
                a.extend(b);
                WeightData::F16(a)
            }
            (
                WeightData::Quantized {
                    ty,
                    mut bytes,
                    row_bytes,
                },
                WeightData::Quantized { bytes: b, .. },
            ) => {
                bytes.extend(b);
                WeightData::Quantized { ty, bytes, row_bytes }
            }
            (acc, _) => acc,
        });
        Matrix { rows, cols, data }
    }

    /// Gathers rows: row `i` of the result is row `order[i]` of `self`. Used to undo GGUF's Q/K head permutation
    /// and to take a tensor-parallel shard of a column-parallel layer.
    pub fn permute_rows(self, order: &[usize]) -> Matrix {
        self.gather_rows(order)
    }

    /// `parts` matrices of `rows / parts` rows each, in order (the experts of a stacked expert tensor).
    pub fn split_rows(self, parts: usize) -> Vec<Matrix> {
        let each = self.rows / parts.max(1);
        (0..parts)
            .map(|p| self.gather_rows(&(p * each..(p + 1) * each).collect::<Vec<_>>()))
            .collect()
    }

    fn gather_rows(&self, order: &[usize]) -> Matrix {
        let (rows, cols) = (order.len(), self.cols);
        fn gather<T: Copy>(v: &[T], order: &[usize], width: usize) -> Vec<T> {
            order
                .iter()
                .flat_map(|&r| v[r * width..(r + 1) * width].iter().copied())
                .collect()
        }
        let data = match &self.data {
            WeightData::F32(v) => WeightData::F32(gather(v, order, cols)),
            WeightData::Bf16(v) => WeightData::Bf16(gather(v, order, cols)),
            WeightData::F16(v) => WeightData::F16(gather(v, order, cols)),
            WeightData::Quantized { ty, bytes, row_bytes } => WeightData::Quantized {
                ty: *ty,
                bytes: gather(bytes, order, *row_bytes),
                row_bytes: *row_bytes,
            },
        };
        Matrix { rows, cols, data }
    }

    /// Columns `c0..c0 + n` of every row (a tensor-parallel shard of a row-parallel layer). Block-quantized rows
    /// are cut at block boundaries and stay quantized; a cut inside a block dequantizes the shard to f32.
    pub fn slice_cols(&self, c0: usize, n: usize) -> Matrix {
        fn cut<T: Copy>(v: &[T], cols: usize, c0: usize, n: usize) -> Vec<T> {
            v.chunks_exact(cols)
                .flat_map(|row| row[c0..c0 + n].iter().copied())
                .collect()
        }
        let (rows, cols) = (self.rows, self.cols);
        let data = match &self.data {
            WeightData::F32(v) => WeightData::F32(cut(v, cols, c0, n)),
            WeightData::Bf16(v) => WeightData::Bf16(cut(v, cols, c0, n)),
            WeightData::F16(v) => WeightData::F16(cut(v, cols, c0, n)),
            WeightData::Quantized { ty, bytes, row_bytes } => {
                let per_block = ty.block_size();
                if c0.is_multiple_of(per_block) && n.is_multiple_of(per_block) {
                    let block_bytes = row_bytes / (cols / per_block);
                    let (b0, nb) = (c0 / per_block * block_bytes, n / per_block * block_bytes);
                    WeightData::Quantized {
                        ty: *ty,
                        bytes: cut(bytes, *row_bytes, b0, nb),
                        row_bytes: nb,
                    }
                } else {
                    let mut row = vec![0.0f32; cols];
                    let mut values = Vec::with_capacity(rows * n);
                    for r in 0..rows {
                        self.dequantize_rows(r, &mut row);
                        values.extend_from_slice(&row[c0..c0 + n]);
                    }
                    WeightData::F32(values)
                }
            }
        };
        Matrix { rows, cols: n, data }
    }
}

fn same_storage(a: &WeightData, b: &WeightData) -> bool {
    match (a, b) {
        (WeightData::F32(_), WeightData::F32(_))
        | (WeightData::Bf16(_), WeightData::Bf16(_))
        | (WeightData::F16(_), WeightData::F16(_)) => true,
        (WeightData::Quantized { ty: x, .. }, WeightData::Quantized { ty: y, .. }) => x == y,
        _ => false,
    }
}

/// Dequantizes whole blocks, with the AVX2 build of the loops where the CPU has it.
fn dequantize_blocks(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, the only feature the function is compiled for.
            #[allow(unsafe_code)]
            unsafe {
                return dequantize_blocks_avx2(ty, src, out);
            }
        }
    }
    dequantize_blocks_portable(ty, src, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn dequantize_blocks_avx2(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    dequantize_blocks_portable(ty, src, out);
}

/// The 32-element block types have fixed-size loops the compiler vectorizes; they compute `d * q` then `+ m` with
/// two roundings, exactly as ggml and gguf-py do (no fused multiply-add). Other types go through `cleave_gguf`.
#[inline(always)]
fn dequantize_blocks_portable(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::Q8_0 => {
            for (block, o) in src.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
                let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                let (Ok(q), Ok(o)) = (<&[u8; 32]>::try_from(&block[2..]), <&mut [f32; 32]>::try_from(o)) else {
                    continue;
                };
                for j in 0..32 {
                    o[j] = d * f32::from(q[j] as i8);
                }
            }
        }
        GgmlType::Q4_0 => {
            for (block, o) in src.chunks_exact(18).zip(out.chunks_exact_mut(32)) {
                let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                let (Ok(q), Ok(o)) = (<&[u8; 16]>::try_from(&block[2..]), <&mut [f32; 32]>::try_from(o)) else {
                    continue;
                };
                for j in 0..16 {
                    o[j] = d * (f32::from(q[j] & 0x0f) - 8.0);
                    o[j + 16] = d * (f32::from(q[j] >> 4) - 8.0);
                }
            }
        }
        GgmlType::Q4_1 => {
            for (block, o) in src.chunks_exact(20).zip(out.chunks_exact_mut(32)) {
                let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
                let (Ok(q), Ok(o)) = (<&[u8; 16]>::try_from(&block[4..]), <&mut [f32; 32]>::try_from(o)) else {
                    continue;
                };
                for j in 0..16 {
                    o[j] = d * f32::from(q[j] & 0x0f) + m;
                    o[j + 16] = d * f32::from(q[j] >> 4) + m;
                }
            }
        }
        other => {
            // Lengths were checked when the tensor was loaded, so this cannot fail; stay total anyway.
            if cleave_gguf::dequantize(other, src, out).is_err() {
                out.fill(f32::NAN);
            }
        }
    }
}

#[cfg(test)]
mod tests;
