//! The arithmetic of ring attention: attention computed block by block with an online softmax, so a query row can
//! fold in keys and values as they arrive from other ranks and never needs them all at once.
//!
//! Per (query row, head) the state is the running maximum score `m`, the denominator `l = Σ exp(s − m)` and the
//! unnormalised output `acc = Σ exp(s − m)·v`; folding a block rescales both by `exp(m_old − m_new)`. The result,
//! `acc / l`, equals softmax attention over every folded key, whatever the order of the blocks.

use std::ops::Range;

use rayon::prelude::*;

use super::attention::AttnDims;
use super::matmul::{MatMut, MatRef, gemm_strided};

/// Where a query or key row sits: the batch chunk (sequence) it belongs to and its position in that sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowAt {
    pub seq: usize,
    pub pos: usize,
}

/// The online-softmax state of every (query row, head), head-major so heads fold in parallel.
#[derive(Debug)]
pub struct Partial {
    dims: AttnDims,
    rows: usize,
    /// `[head][row]`.
    max: Vec<f32>,
    /// `[head][row]`.
    sum: Vec<f32>,
    /// `[head][row][head_dim]`.
    acc: Vec<f32>,
}

impl Partial {
    pub fn new(rows: usize, dims: AttnDims) -> Self {
        Partial {
            dims,
            rows,
            max: vec![f32::NEG_INFINITY; rows * dims.n_heads],
            sum: vec![0.0; rows * dims.n_heads],
            acc: vec![0.0; rows * dims.n_heads * dims.head_dim],
        }
    }

    /// Folds keys and values (`[n, n_kv_heads · head_dim]`, rows at `at_k`) into query rows `rows` of `q`
    /// (`[all rows, n_heads · head_dim]`, rows at `at_q`, rotated): each query sees the keys of its own sequence at
    /// positions up to its own. Rows of one sequence and keys of one sequence must each be contiguous (the batch's
    /// parts are); each (query run, key run) of one sequence is two GEMMs per head.
    pub fn fold(&mut self, rows: Range<usize>, q: &[f32], at_q: &[RowAt], k: &[f32], v: &[f32], at_k: &[RowAt]) {
        let AttnDims {
            n_heads,
            n_kv_heads,
            head_dim: hd,
        } = self.dims;
        let (q_dim, kv_dim, group) = (n_heads * hd, n_kv_heads * hd, n_heads / n_kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let key_runs = runs(at_k, 0);
        let mut pairs: Vec<(Range<usize>, Range<usize>)> = Vec::new();
        for qr in runs(&at_q[rows.clone()], rows.start) {
            let seq = at_q[qr.start].seq;
            pairs.extend(
                key_runs
                    .iter()
                    .filter(|kr| at_k[kr.start].seq == seq)
                    .map(|kr| (qr.clone(), kr.clone())),
            );
        }
        if pairs.is_empty() {
            return;
        }
        let all_rows = self.rows;
        self.max
            .par_chunks_mut(all_rows)
            .zip(self.sum.par_chunks_mut(all_rows))
            .zip(self.acc.par_chunks_mut(all_rows * hd))
            .enumerate()
            .for_each(|(h, ((m, l), acc))| {
                let g = h / group;
                for (qr, kr) in &pairs {
                    let (nq, nk) = (qr.len(), kr.len());
                    let mut scores = vec![0.0f32; nq * nk];
                    let q_rows = MatRef {
                        data: &q[qr.start * q_dim + h * hd..],
                        row_stride: q_dim,
                        col_stride: 1,
                    };
                    let k_t = MatRef {
                        data: &k[kr.start * kv_dim + g * hd..],
                        row_stride: 1,
                        col_stride: kv_dim,
                    };
                    let out = MatMut {
                        data: &mut scores,
                        row_stride: nk,
                    };
                    gemm_strided(nq, nk, hd, q_rows, k_t, out, scale);
                    let mut rescale = vec![0.0f32; nq];
                    for (i, row) in scores.chunks_exact_mut(nk).enumerate() {
                        let (r, pos) = (qr.start + i, at_q[qr.start + i].pos);
                        let mut new_max = m[r];
                        for (s, at) in row.iter_mut().zip(&at_k[kr.clone()]) {
                            if at.pos > pos {
                                *s = f32::NEG_INFINITY;
                            } else {
                                new_max = new_max.max(*s);
                            }
                        }
                        if new_max == f32::NEG_INFINITY {
                            rescale[i] = 1.0;
                            row.fill(0.0);
                            continue;
                        }
                        rescale[i] = (m[r] - new_max).exp();
                        let mut added = 0.0;
                        for s in row.iter_mut() {
                            *s = (*s - new_max).exp();
                            added += *s;
                        }
                        l[r] = l[r] * rescale[i] + added;
                        m[r] = new_max;
                    }
                    let mut pv = vec![0.0f32; nq * hd];
                    let p = MatRef {
                        data: &scores,
                        row_stride: nk,
                        col_stride: 1,
                    };
                    let vs = MatRef {
                        data: &v[kr.start * kv_dim + g * hd..],
                        row_stride: kv_dim,
                        col_stride: 1,
                    };
                    let out = MatMut {
                        data: &mut pv,
                        row_stride: hd,
                    };
                    gemm_strided(nq, hd, nk, p, vs, out, 1.0);
                    for (i, add) in pv.chunks_exact(hd).enumerate() {
                        let r = qr.start + i;
                        for (o, &x) in acc[r * hd..(r + 1) * hd].iter_mut().zip(add) {
                            *o = *o * rescale[i] + x;
                        }
                    }
                }
            });
    }

    /// The attention output, `[rows, n_heads · head_dim]`; a row that saw no key stays zero.
    pub fn finish(self, out: &mut [f32]) {
        let (hd, heads, rows) = (self.dims.head_dim, self.dims.n_heads, self.rows);
        for h in 0..heads {
            for r in 0..rows {
                let l = self.sum[h * rows + r];
                let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                let acc = &self.acc[(h * rows + r) * hd..(h * rows + r + 1) * hd];
                let o = &mut out[r * heads * hd + h * hd..r * heads * hd + (h + 1) * hd];
                o.iter_mut().zip(acc).for_each(|(o, &a)| *o = a * inv);
            }
        }
    }
}

/// Maximal runs of consecutive rows of one sequence in `at`, as ranges offset by `base`.
fn runs(at: &[RowAt], base: usize) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, row) in at.iter().enumerate() {
        match out.last_mut() {
            Some(last) if at[last.end - 1 - base].seq == row.seq => last.end = base + i + 1,
            _ => out.push(base + i..base + i + 1),
        }
    }
    out
}
