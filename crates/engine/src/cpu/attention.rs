//! Causal grouped-query attention over the paged KV cache, for a batch mixing prefill chunks and decode steps.
//!
//! Each (sequence, KV head) pair is one parallel task: it gathers that head's keys and values from the sequence's
//! blocks into contiguous scratch, then for each query head of the group computes `softmax(QKᵀ·scale + causal
//! mask)·V` with two GEMMs. Cost per task: O(new_tokens × context × head_dim); the gather copies context × head_dim.

use rayon::prelude::*;

use super::matmul::{MatMut, MatRef, gemm_strided};
use super::ops::softmax;
use crate::kv::{BlockId, KvCache};

/// One sequence's slice of the batch: rows `row..row + len` of the query buffer, at positions
/// `start_pos..start_pos + len`, reading keys through `blocks`.
#[derive(Debug, Clone, Copy)]
pub struct AttnChunk<'a> {
    pub row: usize,
    pub len: usize,
    pub start_pos: usize,
    pub blocks: &'a [BlockId],
}

#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// `q` is `[tokens, n_heads * head_dim]` (already rotated); the chunk's keys/values must already be in `kv`.
/// Writes `out` in the same layout as `q`.
pub fn paged_attention(
    q: &[f32],
    chunks: &[AttnChunk<'_>],
    kv: &KvCache,
    layer: usize,
    dims: AttnDims,
    out: &mut [f32],
) {
    let AttnDims {
        n_heads,
        n_kv_heads,
        head_dim: hd,
    } = dims;
    let q_dim = n_heads * hd;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let tasks: Vec<(usize, usize)> = (0..chunks.len())
        .flat_map(|c| (0..n_kv_heads).map(move |g| (c, g)))
        .collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(c, g)| {
            let chunk = chunks[c];
            let ctx = chunk.start_pos + chunk.len;
            let (mut keys, mut values) = (vec![0.0; ctx * hd], vec![0.0; ctx * hd]);
            kv.gather(layer, g, chunk.blocks, ctx, &mut keys, &mut values);
            let mut scores = vec![0.0; chunk.len * ctx];
            // Per query head of the group: [len, hd] outputs, concatenated.
            let mut head_out = vec![0.0; group * chunk.len * hd];
            for r in 0..group {
                let h = g * group + r;
                let q_rows = MatRef {
                    data: &q[chunk.row * q_dim + h * hd..],
                    row_stride: q_dim,
                    col_stride: 1,
                };
                let k_t = MatRef {
                    data: &keys,
                    row_stride: 1,
                    col_stride: hd,
                };
                let scores_out = MatMut {
                    data: &mut scores,
                    row_stride: ctx,
                };
                gemm_strided(chunk.len, ctx, hd, q_rows, k_t, scores_out, scale);
                for (i, row) in scores.chunks_exact_mut(ctx).enumerate() {
                    let visible = chunk.start_pos + i + 1;
                    softmax(&mut row[..visible]);
                    row[visible..].fill(0.0);
                }
                let p = MatRef {
                    data: &scores,
                    row_stride: ctx,
                    col_stride: 1,
                };
                let v = MatRef {
                    data: &values,
                    row_stride: hd,
                    col_stride: 1,
                };
                let dst = &mut head_out[r * chunk.len * hd..(r + 1) * chunk.len * hd];
                gemm_strided(
                    chunk.len,
                    hd,
                    ctx,
                    p,
                    v,
                    MatMut {
                        data: dst,
                        row_stride: hd,
                    },
                    1.0,
                );
            }
            head_out
        })
        .collect();
    for (&(c, g), head_out) in tasks.iter().zip(results) {
        let chunk = chunks[c];
        for r in 0..group {
            let h = g * group + r;
            for i in 0..chunk.len {
                let src = &head_out[(r * chunk.len + i) * hd..(r * chunk.len + i + 1) * hd];
                let at = (chunk.row + i) * q_dim + h * hd;
                out[at..at + hd].copy_from_slice(src);
            }
        }
    }
}
