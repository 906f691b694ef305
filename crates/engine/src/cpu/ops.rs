//! Element-wise and row-wise f32 kernels of a Llama block: RMSNorm, rotary embeddings, SwiGLU, softmax.
//!
//! Each follows the Hugging Face reference formula and order of operations, so results agree with it to f32
//! rounding. All are linear in their input size; rows are processed in parallel when there are many.

use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread: rayon's hand-off costs more than the work.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// `out[r] = weight ⊙ x[r] / sqrt(mean(x[r]²) + eps)` for every row of width `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    let norm_row = |(xr, or): (&[f32], &mut [f32])| {
        let mean = xr.iter().map(|v| v * v).sum::<f32>() / width as f32;
        let inv = 1.0 / (mean + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    };
    if x.len() >= PAR_MIN_ELEMS {
        x.par_chunks_exact(width)
            .zip(out.par_chunks_exact_mut(width))
            .for_each(norm_row);
    } else {
        x.chunks_exact(width)
            .zip(out.chunks_exact_mut(width))
            .for_each(norm_row);
    }
}

/// Cosine and sine tables for the given positions: `[positions.len(), inv_freq.len()]` each.
pub fn rope_tables(positions: &[usize], inv_freq: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * inv_freq.len());
    let mut sin = Vec::with_capacity(positions.len() * inv_freq.len());
    for &p in positions {
        for &f in inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// Rotates each head of each token in place, "rotate-half" (NeoX / Hugging Face) pairing: element `i` pairs with
/// `i + head_dim / 2`. `x` is `[tokens, n_heads * head_dim]`.
pub fn apply_rope(x: &mut [f32], n_heads: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    let width = n_heads * head_dim;
    for (t, row) in x.chunks_exact_mut(width).enumerate() {
        let (c, s) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/// SwiGLU on a fused `[tokens, 2 * inter]` gate|up buffer: `out[t] = silu(gate[t]) ⊙ up[t]`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    let row = |(gu, o): (&[f32], &mut [f32])| {
        let (gate, up) = gu.split_at(inter);
        for ((o, &g), &u) in o.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    };
    if out.len() >= PAR_MIN_ELEMS {
        gate_up
            .par_chunks_exact(2 * inter)
            .zip(out.par_chunks_exact_mut(inter))
            .for_each(row);
    } else {
        gate_up
            .chunks_exact(2 * inter)
            .zip(out.chunks_exact_mut(inter))
            .for_each(row);
    }
}

/// In-place numerically stable softmax of one row.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// `x += y`, element-wise.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
