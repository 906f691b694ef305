//! Fused dequantize-and-dot for block-quantized weights against a few input rows (the decode regime).
//!
//! Each 32-weight block is dequantized in AVX2 registers with the same formulas and roundings as
//! `Matrix::dequantize_rows` (`d * q` then `+ m`: no fused multiply-add there, so the weights are bit-identical to a
//! full dequantization) and multiplied straight into per-row accumulators: weights are read once, at their stored
//! size, and never written back as f32. Up to four input rows keep two accumulators
//! each (hiding FMA latency); five to eight keep one, so the accumulators still fit the sixteen vector registers. CPUs without AVX2,
//! FMA and F16C, and other weight types, use the caller's dequantize-then-dot path.

use cleave_gguf::GgmlType;

/// Input rows this kernel handles at once.
pub const MAX_ROWS: usize = 8;

/// `out[i * n_out + j] = x[i] · row j` for the weight rows in `rows` (`row_bytes` each, `k` weights each) and
/// `m <= MAX_ROWS` input rows. Returns `false`, computing nothing, when no fused kernel applies.
pub fn quant_rows_dot(
    ty: GgmlType,
    rows: &[u8],
    row_bytes: usize,
    x: &[f32],
    m: usize,
    k: usize,
    out: &mut [f32],
) -> bool {
    let n_out = rows.len() / row_bytes.max(1);
    let fits = (1..=MAX_ROWS).contains(&m)
        && k.is_multiple_of(32)
        && x.len() >= m * k
        && out.len() >= m * n_out
        && row_bytes * 32 == k * block_bytes(ty).unwrap_or(0);
    if !fits {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU has AVX2, FMA and F16C (checked above), and `fits` established the slice extents the kernels
            // index: m input rows of k floats, n_out output entries per input row, whole blocks per weight row.
            #[allow(unsafe_code)]
            unsafe {
                avx2::run(ty, rows, row_bytes, x, m, k, out);
            }
            return true;
        }
    }
    false
}

fn block_bytes(ty: GgmlType) -> Option<usize> {
    match ty {
        GgmlType::Q4_0 => Some(18),
        GgmlType::Q4_1 => Some(20),
        GgmlType::Q8_0 => Some(34),
        _ => None,
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    //! Every function here is compiled for AVX2, FMA and F16C so the intrinsics inline; callers must have checked the CPU.

    use std::arch::x86_64::*;

    use cleave_gguf::GgmlType;

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; the extents must satisfy `quant_rows_dot`'s `fits` check.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn run(ty: GgmlType, rows: &[u8], row_bytes: usize, x: &[f32], m: usize, k: usize, out: &mut [f32]) {
        macro_rules! by_rows {
            ($kernel:ident) => {
                // SAFETY: forwarded from the caller's contract.
                unsafe {
                    match m {
                        1 => $kernel::<1, 2>(rows, row_bytes, x, k, out),
                        2 => $kernel::<2, 2>(rows, row_bytes, x, k, out),
                        3 => $kernel::<3, 2>(rows, row_bytes, x, k, out),
                        4 => $kernel::<4, 2>(rows, row_bytes, x, k, out),
                        5 => $kernel::<5, 1>(rows, row_bytes, x, k, out),
                        6 => $kernel::<6, 1>(rows, row_bytes, x, k, out),
                        7 => $kernel::<7, 1>(rows, row_bytes, x, k, out),
                        _ => $kernel::<8, 1>(rows, row_bytes, x, k, out),
                    }
                }
            };
        }
        match ty {
            GgmlType::Q4_0 => by_rows!(kernel_q4_0),
            GgmlType::Q4_1 => by_rows!(kernel_q4_1),
            _ => by_rows!(kernel_q8_0),
        }
    }

    /// One kernel per block format, so each block's dequantization inlines into the loop.
    macro_rules! kernel {
        ($name:ident, $deq:ident, $block_bytes:literal) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name<const M: usize, const C: usize>(
                rows: &[u8],
                row_bytes: usize,
                x: &[f32],
                k: usize,
                out: &mut [f32],
            ) {
                let n_out = rows.len() / row_bytes;
                let blocks = k / 32;
                // SAFETY: `fits` guarantees whole blocks per row, m = M input rows of k floats, and M * n_out
                // output entries, so every pointer below stays inside its slice.
                unsafe {
                    for j in 0..n_out {
                        let row = rows.as_ptr().add(j * row_bytes);
                        let mut acc = [[_mm256_setzero_ps(); C]; M];
                        for b in 0..blocks {
                            let w = $deq(row.add(b * $block_bytes));
                            for i in 0..M {
                                let xp = x.as_ptr().add(i * k + b * 32);
                                for c in 0..4 {
                                    acc[i][c % C] =
                                        _mm256_fmadd_ps(w[c], _mm256_loadu_ps(xp.add(c * 8)), acc[i][c % C]);
                                }
                            }
                        }
                        for i in 0..M {
                            *out.get_unchecked_mut(i * n_out + j) = hsum(&acc[i]);
                        }
                    }
                }
            }
        };
    }
    kernel!(kernel_q4_0, deq_q4_0, 18);
    kernel!(kernel_q4_1, deq_q4_1, 20);
    kernel!(kernel_q8_0, deq_q8_0, 34);

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(acc: &[__m256]) -> f32 {
        let s = acc.iter().skip(1).fold(acc[0], |a, &b| _mm256_add_ps(a, b));
        let half = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)))
    }

    /// # Safety
    /// `p` must point at two readable bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scale(p: *const u8) -> f32 {
        // SAFETY: per the contract. F16C converts exactly, like `half`'s software path.
        let bits = unsafe { u16::from_le_bytes([*p, *p.add(1)]) };
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
    }

    /// The 16 packed bytes of a 4-bit block as f32 vectors of 8: low nibbles (weights 0..16), then high nibbles.
    ///
    /// # Safety
    /// `qs` must point at 16 readable bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(qs: *const u8) -> [__m256; 4] {
        // SAFETY: per the contract; the load is unaligned.
        let q = unsafe { _mm_loadu_si128(qs as *const __m128i) };
        let mask = _mm_set1_epi8(0x0f);
        let lo = _mm_and_si128(q, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
        [
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))),
        ]
    }

    /// `d * q + m`, rounded after the multiply and after the add, like the reference dequantization.
    ///
    /// # Safety
    /// `p` must point at a whole 20-byte Q4_1 block.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn deq_q4_1(p: *const u8) -> [__m256; 4] {
        // SAFETY: per the contract.
        let (d, m, q) = unsafe { (scale(p), scale(p.add(2)), nibbles(p.add(4))) };
        let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
        [
            _mm256_add_ps(_mm256_mul_ps(d, q[0]), m),
            _mm256_add_ps(_mm256_mul_ps(d, q[1]), m),
            _mm256_add_ps(_mm256_mul_ps(d, q[2]), m),
            _mm256_add_ps(_mm256_mul_ps(d, q[3]), m),
        ]
    }

    /// `d * (q - 8)`.
    ///
    /// # Safety
    /// `p` must point at a whole 18-byte Q4_0 block.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn deq_q4_0(p: *const u8) -> [__m256; 4] {
        // SAFETY: per the contract.
        let (d, q) = unsafe { (scale(p), nibbles(p.add(2))) };
        let (d, eight) = (_mm256_set1_ps(d), _mm256_set1_ps(8.0));
        [
            _mm256_mul_ps(d, _mm256_sub_ps(q[0], eight)),
            _mm256_mul_ps(d, _mm256_sub_ps(q[1], eight)),
            _mm256_mul_ps(d, _mm256_sub_ps(q[2], eight)),
            _mm256_mul_ps(d, _mm256_sub_ps(q[3], eight)),
        ]
    }

    /// `d * q` for signed bytes.
    ///
    /// # Safety
    /// `p` must point at a whole 34-byte Q8_0 block.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn deq_q8_0(p: *const u8) -> [__m256; 4] {
        // SAFETY: per the contract: 32 bytes of quants follow the 2-byte scale.
        unsafe {
            let d = _mm256_set1_ps(scale(p));
            let lane = |c: usize| _mm_loadl_epi64(p.add(2 + c * 8) as *const __m128i);
            let (q0, q1, q2, q3) = (lane(0), lane(1), lane(2), lane(3));
            [
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0))),
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1))),
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q2))),
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q3))),
            ]
        }
    }
}

#[cfg(test)]
mod tests;
