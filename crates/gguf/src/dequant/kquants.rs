//! The k-quant super-block formats of ggml (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K): 256 elements per block, split into
//! sub-blocks with their own 4-, 6- or 8-bit scales.
//!
//! Each mirrors `dequantize_row_*` in ggml-quants.c, including the order of operations (`d * scale` first, then
//! `* q - min`), so results are bit-identical. The field layouts are given at each function.

use super::f16_le;
use crate::types::QK_K;

/// `{ scales: [u8; 16], qs: [u8; 64], d: f16, dmin: f16 }`. Sixteen sub-blocks of 16; sub-block `g`'s scale is
/// `scales[g] & 0xf`, its min `scales[g] >> 4`; 2-bit values, four per byte.
pub(super) fn q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16_le([b[80], b[81]]);
    let dmin = f16_le([b[82], b[83]]);
    for g in 0..16 {
        let (half, shift, part) = (g / 8, 2 * ((g % 8) / 2), g % 2);
        let dl = d * f32::from(scales[g] & 0x0f);
        let ml = dmin * f32::from(scales[g] >> 4);
        let q = &qs[half * 32 + part * 16..][..16];
        for (l, &q) in q.iter().enumerate() {
            y[g * 16 + l] = dl * f32::from((q >> shift) & 3) - ml;
        }
    }
}

/// The signed 6-bit scale of Q3_K sub-block `g`: low 4 bits packed two per byte in `scales[0..8]`, high 2 bits four
/// per byte in `scales[8..12]`, stored offset by 32.
fn q3_k_scale(scales: &[u8], g: usize) -> i32 {
    let low = (scales[g % 8] >> (4 * (g / 8))) & 0x0f;
    let high = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
    i32::from(low | (high << 4)) - 32
}

/// `{ hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }`. Sixteen sub-blocks of 16; 2-bit values as Q2_K,
/// with a third bit in `hmask` (bit `g / 2` of byte `l`): a clear bit subtracts 4.
pub(super) fn q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let scales = &b[96..108];
    let d = f16_le([b[108], b[109]]);
    for g in 0..16 {
        let (half, shift, part) = (g / 8, 2 * ((g % 8) / 2), g % 2);
        let dl = d * q3_k_scale(scales, g) as f32;
        let q = &qs[half * 32 + part * 16..][..16];
        let h = &hmask[part * 16..][..16];
        let bit = g / 2;
        for l in 0..16 {
            let low = i32::from((q[l] >> shift) & 3);
            let minus = if (h[l] >> bit) & 1 == 1 { 0 } else { 4 };
            y[g * 16 + l] = dl * (low - minus) as f32;
        }
    }
}

/// The 6-bit scale and min of Q4_K/Q5_K sub-block `j` (ggml's `get_scale_min_k4`).
fn scale_min_k4(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let sc = (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128] }`. Eight sub-blocks of 32; sub-blocks `2c` and `2c + 1`
/// take the low and high nibbles of `qs[32c..32c + 32]`.
pub(super) fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_le([b[0], b[1]]);
    let dmin = f16_le([b[2], b[3]]);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for g in 0..8 {
        let (sc, m) = scale_min_k4(scales, g);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(m);
        let shift = 4 * (g % 2);
        let q = &qs[(g / 2) * 32..][..32];
        for (l, &q) in q.iter().enumerate() {
            y[g * 32 + l] = dl * f32::from((q >> shift) & 0x0f) - ml;
        }
    }
}

/// `{ d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }`. As Q4_K, with a fifth bit for
/// sub-block `g` in bit `g` of `qh[l]`.
pub(super) fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_le([b[0], b[1]]);
    let dmin = f16_le([b[2], b[3]]);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for g in 0..8 {
        let (sc, m) = scale_min_k4(scales, g);
        let dl = d * f32::from(sc);
        let ml = dmin * f32::from(m);
        let shift = 4 * (g % 2);
        let q = &qs[(g / 2) * 32..][..32];
        for l in 0..32 {
            let value = ((q[l] >> shift) & 0x0f) | (((qh[l] >> g) & 1) << 4);
            y[g * 32 + l] = dl * f32::from(value) - ml;
        }
    }
}

/// `{ ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }`. Two halves of 128; in half `h`, row `t` (of 32)
/// takes nibble `t / 2` of `ql[64h + 32(t % 2) + l]` and bits `2t..2t+2` of `qh[32h + l]`, offset by 32; each run of
/// 16 outputs has its own signed scale.
pub(super) fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16_le([b[208], b[209]]);
    for half in 0..2 {
        let ql = &ql[half * 64..][..64];
        let qh = &qh[half * 32..][..32];
        for t in 0..4 {
            let low_src = &ql[(t % 2) * 32..][..32];
            let low_shift = 4 * (t / 2);
            for l in 0..32 {
                let low = (low_src[l] >> low_shift) & 0x0f;
                let high = (qh[l] >> (2 * t)) & 3;
                let q = i32::from(low | (high << 4)) - 32;
                let index = half * 128 + t * 32 + l;
                let scale = f32::from(scales[index / 16] as i8);
                y[index] = d * scale * q as f32;
            }
        }
    }
}

/// `{ d: f32, qs: [i8; 256], bsums: [i16; 16] }`: `y = d * q` (the sums only speed up dot products).
pub(super) fn q8_k(b: &[u8; 292], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (y, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
        *y = d * f32::from(q as i8);
    }
}
