//! The 32-element block formats of ggml (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), one block per call.
//!
//! Each mirrors `dequantize_row_*` in ggml-quants.c: the block's f16 scale `d` (and min `m`) multiply small
//! integers; element `j` of the low nibbles and element `j + 16` of the high nibbles share byte `j`. Operations keep
//! ggml's order (`q * d + m`, never fused) so results are bit-identical.

use super::f16_le;

/// `{ d: f16, qs: [u8; 16] }`: `y = (q - 8) * d`.
pub(super) fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_le([b[0], b[1]]);
    let qs = &b[2..18];
    for (j, &q) in qs.iter().enumerate() {
        y[j] = (i32::from(q & 0x0f) - 8) as f32 * d;
        y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
    }
}

/// `{ d: f16, m: f16, qs: [u8; 16] }`: `y = q * d + m`.
pub(super) fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_le([b[0], b[1]]);
    let m = f16_le([b[2], b[3]]);
    let qs = &b[4..20];
    for (j, &q) in qs.iter().enumerate() {
        y[j] = f32::from(q & 0x0f) * d + m;
        y[j + 16] = f32::from(q >> 4) * d + m;
    }
}

/// The 5-bit values of a Q5 block: low nibbles from `qs`, fifth bits from the little-endian u32 `qh` (bit `j` for
/// element `j`).
fn five_bit(qh: u32, qs: &[u8], j: usize) -> (u8, u8) {
    let low_high = (((qh >> j) << 4) & 0x10) as u8;
    let high_high = ((qh >> (j + 12)) & 0x10) as u8;
    ((qs[j] & 0x0f) | low_high, (qs[j] >> 4) | high_high)
}

/// `{ d: f16, qh: [u8; 4], qs: [u8; 16] }`: `y = (q - 16) * d`.
pub(super) fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_le([b[0], b[1]]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let (q0, q1) = five_bit(qh, qs, j);
        y[j] = (i32::from(q0) - 16) as f32 * d;
        y[j + 16] = (i32::from(q1) - 16) as f32 * d;
    }
}

/// `{ d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] }`: `y = q * d + m`.
pub(super) fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_le([b[0], b[1]]);
    let m = f16_le([b[2], b[3]]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let (q0, q1) = five_bit(qh, qs, j);
        y[j] = f32::from(q0) * d + m;
        y[j + 16] = f32::from(q1) * d + m;
    }
}

/// `{ d: f16, qs: [i8; 32] }`: `y = q * d`.
pub(super) fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_le([b[0], b[1]]);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = f32::from(q as i8) * d;
    }
}
