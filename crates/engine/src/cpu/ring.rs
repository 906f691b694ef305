//! The arithmetic of ring attention: attention computed block by block with an online softmax, so a query row can
//! fold in keys and values as they arrive from other ranks and never needs them all at once.
//!
//! Per (query row, head) the state is the running maximum score `m`, the denominator `l = Σ exp(s − m)` and the
//! unnormalised output `acc = Σ exp(s − m)·v`; folding a block rescales both by `exp(m_old − m_new)`. The result,
//! `acc / l`, equals softmax attention over every folded key, whatever the order of the blocks.

use std::ops::Range;

use rayon::prelude::*;

use super::attention::AttnDims;

/// Where a query or key row sits: the batch chunk (sequence) it belongs to and its position in that sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowAt {
    pub seq: usize,
    pub pos: usize,
}

/// The online-softmax state of every (query row, head).
#[derive(Debug)]
pub struct Partial {
    dims: AttnDims,
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

impl Partial {
    pub fn new(rows: usize, dims: AttnDims) -> Self {
        Partial {
            dims,
            max: vec![f32::NEG_INFINITY; rows * dims.n_heads],
            sum: vec![0.0; rows * dims.n_heads],
            acc: vec![0.0; rows * dims.n_heads * dims.head_dim],
        }
    }

    /// Folds keys and values (`[n, n_kv_heads · head_dim]`, rows at `at_k`) into query rows `rows` of `q`
    /// (`[all rows, n_heads · head_dim]`, rows at `at_q`, rotated): each query sees the keys of its own sequence at
    /// positions up to its own.
    pub fn fold(&mut self, rows: Range<usize>, q: &[f32], at_q: &[RowAt], k: &[f32], v: &[f32], at_k: &[RowAt]) {
        let AttnDims {
            n_heads,
            n_kv_heads,
            head_dim: hd,
        } = self.dims;
        let (q_dim, kv_dim, group) = (n_heads * hd, n_kv_heads * hd, n_heads / n_kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let (max, sum, acc) = (
            &mut self.max[rows.start * n_heads..rows.end * n_heads],
            &mut self.sum[rows.start * n_heads..rows.end * n_heads],
            &mut self.acc[rows.start * q_dim..rows.end * q_dim],
        );
        max.par_chunks_mut(n_heads)
            .zip(sum.par_chunks_mut(n_heads))
            .zip(acc.par_chunks_mut(q_dim))
            .enumerate()
            .for_each(|(i, ((m, l), acc))| {
                let row = rows.start + i;
                let at = at_q[row];
                let visible: Vec<usize> = (0..at_k.len())
                    .filter(|&j| at_k[j].seq == at.seq && at_k[j].pos <= at.pos)
                    .collect();
                if visible.is_empty() {
                    return;
                }
                let mut scores = vec![0.0f32; visible.len()];
                for h in 0..n_heads {
                    let g = h / group;
                    let qh = &q[row * q_dim + h * hd..row * q_dim + (h + 1) * hd];
                    for (s, &j) in scores.iter_mut().zip(&visible) {
                        let kh = &k[j * kv_dim + g * hd..j * kv_dim + (g + 1) * hd];
                        *s = qh.iter().zip(kh).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    let new_max = scores.iter().copied().fold(m[h], f32::max);
                    let rescale = (m[h] - new_max).exp();
                    let out = &mut acc[h * hd..(h + 1) * hd];
                    l[h] *= rescale;
                    out.iter_mut().for_each(|o| *o *= rescale);
                    for (&s, &j) in scores.iter().zip(&visible) {
                        let p = (s - new_max).exp();
                        l[h] += p;
                        let vh = &v[j * kv_dim + g * hd..j * kv_dim + (g + 1) * hd];
                        out.iter_mut().zip(vh).for_each(|(o, &x)| *o += p * x);
                    }
                    m[h] = new_max;
                }
            });
    }

    /// The attention output, `[rows, n_heads · head_dim]`; a row that saw no key stays zero.
    pub fn finish(self, out: &mut [f32]) {
        let hd = self.dims.head_dim;
        for ((o, acc), &l) in out.chunks_exact_mut(hd).zip(self.acc.chunks_exact(hd)).zip(&self.sum) {
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            o.iter_mut().zip(acc).for_each(|(o, &a)| *o = a * inv);
        }
    }
}
