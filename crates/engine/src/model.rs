//! The Llama-family transformer on the CPU backend: one forward pass over a batch of sequence chunks.
//!
//! A batch mixes prefill chunks (many tokens of one sequence) and decode steps (one token each); all tokens go
//! through every projection as one `[tokens, features]` matrix, and attention reads each sequence's context
//! through its block table. Only the chunks that ask for logits pay for the output head.

use std::path::Path;
use std::sync::Arc;

use cleave_comm::Communicator;

use crate::backend::KvBlockReader;
use crate::config::ModelConfig;
use crate::cpu::attention::{AttnChunk, AttnDims, paged_attention};
use crate::cpu::matmul::matmul;
use crate::cpu::ops::{add_assign, apply_rope, rms_norm, rope_tables, silu_mul};
use crate::error::EngineError;
use crate::kv::{BlockId, KvCache, KvShape};
use crate::parallel::{GatheredKv, TpRank, shard_weights};
use crate::weights::{LlamaWeights, load_gguf, load_hf_dir};

/// One sequence's contribution to a forward pass: `tokens` at positions `start_pos..`, whose KV is written into
/// (and whose earlier context is read from) `blocks`, which must already cover `start_pos + tokens.len()`.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub blocks: &'a [BlockId],
    /// Produce next-token logits for the chunk's last token.
    pub want_logits: bool,
}

/// Called with each layer's KV once it is written (see `LlamaModel::forward_observed`).
pub type LayerDone<'a> = dyn FnMut(usize, &dyn KvBlockReader) + 'a;

#[derive(Debug)]
pub struct LlamaModel {
    config: ModelConfig,
    weights: LlamaWeights,
    inv_freq: Vec<f32>,
    /// This model's place in a tensor-parallel group, when its weights are one rank's shard.
    tp: Option<TensorParallel>,
}

/// One rank of a tensor-parallel group: the heads, KV heads and MLP columns of `rank`'s shard, and the group's
/// communicator for the all-reduces after each block half.
#[derive(Debug)]
struct TensorParallel {
    rank: TpRank,
    comm: Arc<dyn Communicator>,
}

impl LlamaModel {
    pub fn new(config: ModelConfig, weights: LlamaWeights) -> Self {
        let inv_freq = config.rope_inv_freq();
        LlamaModel {
            config,
            weights,
            inv_freq,
            tp: None,
        }
    }

    /// Keeps this rank's shard of the weights (`comm.rank()` of `comm.world_size()`): attention heads and KV heads
    /// split across ranks, MLP rows (gate/up) and columns (down) likewise; embedding, norms and the output head
    /// stay whole. Sizes that do not divide are refused, naming them.
    pub fn tensor_parallel(self, comm: Arc<dyn Communicator>) -> Result<Self, EngineError> {
        let rank = TpRank {
            rank: comm.rank(),
            world: comm.world_size(),
        };
        let LlamaModel {
            config,
            weights,
            inv_freq,
            ..
        } = self;
        let weights = shard_weights(weights, &config, rank)?;
        Ok(LlamaModel {
            config,
            weights,
            inv_freq,
            tp: (rank.world > 1).then_some(TensorParallel { rank, comm }),
        })
    }

    /// This model's rank in its tensor-parallel group (rank 0 of 1 when whole).
    pub fn tp_rank(&self) -> TpRank {
        self.tp.as_ref().map_or(TpRank { rank: 0, world: 1 }, |tp| tp.rank)
    }

    /// Loads a GGUF file (also returning it, for the tokenizer) — see `weights::load_gguf`.
    pub fn load_gguf(path: &Path) -> Result<(cleave_gguf::GgufFile, Self), EngineError> {
        let (file, config, weights) = load_gguf(path)?;
        Ok((file, LlamaModel::new(config, weights)))
    }

    pub fn load_hf_dir(dir: &Path) -> Result<Self, EngineError> {
        let (config, weights) = load_hf_dir(dir)?;
        Ok(LlamaModel::new(config, weights))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The configuration and weights, for a backend that moves the weights to another device.
    pub fn into_parts(self) -> (ModelConfig, LlamaWeights) {
        (self.config, self.weights)
    }

    pub fn weights_bytes(&self) -> usize {
        self.weights.byte_len()
    }

    /// The KV pool shape for `n_blocks` blocks of `block_size` tokens (this rank's KV heads under tensor
    /// parallelism).
    pub fn kv_shape(&self, n_blocks: usize, block_size: usize) -> KvShape {
        KvShape {
            n_layers: self.config.n_layers,
            n_blocks,
            block_size,
            n_kv_heads: self.config.n_kv_heads / self.tp_rank().world,
            head_dim: self.config.head_dim,
        }
    }

    /// Runs the batch, writes its keys/values into `kv`, and returns `[n, vocab]` logits for the chunks with
    /// `want_logits`, in batch order (on a tensor-parallel group's rank 0; other ranks return none).
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut KvCache) -> Result<Vec<f32>, EngineError> {
        self.forward_observed(chunks, kv, None)
    }

    /// `forward`, calling `layer_done(layer, reader)` as soon as each layer's keys and values for the whole batch
    /// are in `kv` — before that layer's attention and MLP run — so a KV transfer can ship layer `l` while layers
    /// `l..` are still computing. Under tensor parallelism every rank must pass a callback or none: the reader
    /// holds every KV head of the batch's blocks, gathered from all ranks.
    pub fn forward_observed(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvCache,
        mut layer_done: Option<&mut LayerDone<'_>>,
    ) -> Result<Vec<f32>, EngineError> {
        let cfg = &self.config;
        let world = self.tp_rank().world;
        let (hidden, q_dim, kv_dim, inter) = (
            cfg.hidden,
            cfg.q_dim() / world,
            cfg.kv_dim() / world,
            cfg.intermediate / world,
        );
        let (n_heads, n_kv_heads) = (cfg.n_heads / world, cfg.n_kv_heads / world);
        let n_tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let positions: Vec<usize> = chunks
            .iter()
            .flat_map(|c| (0..c.tokens.len()).map(move |i| c.start_pos + i))
            .collect();
        let (cos, sin) = rope_tables(&positions, &self.inv_freq);

        let mut x = vec![0.0f32; n_tokens * hidden];
        for (row, &tok) in x.chunks_exact_mut(hidden).zip(chunks.iter().flat_map(|c| c.tokens)) {
            self.weights.embed.dequantize_rows(tok as usize, row);
        }
        let mut attn_chunks = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for c in chunks {
            attn_chunks.push(AttnChunk {
                row,
                len: c.tokens.len(),
                start_pos: c.start_pos,
                blocks: c.blocks,
            });
            row += c.tokens.len();
        }
        let dims = AttnDims {
            n_heads,
            n_kv_heads,
            head_dim: cfg.head_dim,
        };
        let gathered_blocks: Vec<BlockId> = match (&layer_done, &self.tp) {
            (Some(_), Some(_)) => {
                let mut blocks: Vec<BlockId> = chunks.iter().flat_map(|c| c.blocks.iter().copied()).collect();
                blocks.sort_unstable();
                blocks.dedup();
                blocks
            }
            _ => Vec::new(),
        };
        let block_size = kv.block_size();

        let mut normed = vec![0.0f32; n_tokens * hidden];
        let mut qkv = vec![0.0f32; n_tokens * (q_dim + 2 * kv_dim)];
        let (mut q, mut k, mut v) = (
            vec![0.0f32; n_tokens * q_dim],
            vec![0.0f32; n_tokens * kv_dim],
            vec![0.0f32; n_tokens * kv_dim],
        );
        let mut attn = vec![0.0f32; n_tokens * q_dim];
        let mut proj = vec![0.0f32; n_tokens * hidden];
        let mut gate_up = vec![0.0f32; n_tokens * 2 * inter];
        let mut act = vec![0.0f32; n_tokens * inter];

        for (layer, w) in self.weights.layers.iter().enumerate() {
            rms_norm(&x, &w.attn_norm, cfg.rms_eps, &mut normed);
            matmul(&normed, n_tokens, &w.qkv, &mut qkv);
            let width = q_dim + 2 * kv_dim;
            for t in 0..n_tokens {
                let src = &mut qkv[t * width..(t + 1) * width];
                if let Some(bias) = &w.qkv_bias {
                    add_assign(src, bias);
                }
                q[t * q_dim..(t + 1) * q_dim].copy_from_slice(&src[..q_dim]);
                k[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&src[q_dim..q_dim + kv_dim]);
                v[t * kv_dim..(t + 1) * kv_dim].copy_from_slice(&src[q_dim + kv_dim..]);
            }
            apply_rope(&mut q, n_heads, cfg.head_dim, &cos, &sin);
            apply_rope(&mut k, n_kv_heads, cfg.head_dim, &cos, &sin);
            for c in &attn_chunks {
                for i in 0..c.len {
                    let (t, pos) = (c.row + i, c.start_pos + i);
                    let (kt, vt) = (&k[t * kv_dim..(t + 1) * kv_dim], &v[t * kv_dim..(t + 1) * kv_dim]);
                    kv.write(layer, c.blocks[pos / block_size], pos % block_size, kt, vt);
                }
            }
            if let Some(done) = layer_done.as_mut() {
                match &self.tp {
                    Some(tp) => done(
                        layer,
                        &GatheredKv::gather(kv, layer, &gathered_blocks, tp.comm.as_ref())?,
                    ),
                    None => done(layer, kv),
                }
            }
            paged_attention(&q, &attn_chunks, kv, layer, dims, &mut attn);
            matmul(&attn, n_tokens, &w.o, &mut proj);
            self.all_reduce(&mut proj)?;
            add_assign(&mut x, &proj);

            rms_norm(&x, &w.mlp_norm, cfg.rms_eps, &mut normed);
            matmul(&normed, n_tokens, &w.gate_up, &mut gate_up);
            silu_mul(&gate_up, inter, &mut act);
            matmul(&act, n_tokens, &w.down, &mut proj);
            self.all_reduce(&mut proj)?;
            add_assign(&mut x, &proj);
        }
        if self.tp_rank().rank != 0 {
            return Ok(Vec::new());
        }

        let last_rows: Vec<usize> = attn_chunks
            .iter()
            .zip(chunks)
            .filter(|(_, c)| c.want_logits && !c.tokens.is_empty())
            .map(|(a, _)| a.row + a.len - 1)
            .collect();
        let mut selected = vec![0.0f32; last_rows.len() * hidden];
        for (dst, &r) in selected.chunks_exact_mut(hidden).zip(&last_rows) {
            dst.copy_from_slice(&x[r * hidden..(r + 1) * hidden]);
        }
        let mut final_norm = vec![0.0f32; selected.len()];
        rms_norm(&selected, &self.weights.norm, cfg.rms_eps, &mut final_norm);
        let mut logits = vec![0.0f32; last_rows.len() * cfg.vocab_size];
        matmul(&final_norm, last_rows.len(), self.weights.head(), &mut logits);
        Ok(logits)
    }

    /// Sums a row-parallel layer's partial outputs over the tensor-parallel group (nothing when whole).
    fn all_reduce(&self, partial: &mut [f32]) -> Result<(), EngineError> {
        match &self.tp {
            Some(tp) => Ok(tp.comm.all_reduce_sum(partial.into())?),
            None => Ok(()),
        }
    }
}
