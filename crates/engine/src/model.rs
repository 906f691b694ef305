//! The Llama-family transformer on the CPU backend: one forward pass over a batch of sequence chunks.
//!
//! A batch mixes prefill chunks (many tokens of one sequence) and decode steps (one token each); all tokens go
//! through every projection as one `[tokens, features]` matrix, and attention reads each sequence's context
//! through its block table. Only the chunks that ask for logits pay for the output head.

mod context;

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use cleave_comm::Communicator;

use crate::backend::KvBlockReader;
use crate::config::ModelConfig;
use crate::cpu::attention::{AttnChunk, AttnDims, paged_attention};
use crate::cpu::matmul::matmul;
use crate::cpu::moe;
use crate::cpu::ops::{add_assign, apply_rope, rms_norm, rope_tables, silu_mul};
use crate::error::EngineError;
use crate::kv::{BlockId, KvCache, KvShape};
use crate::parallel::{GatheredKv, TpRank, shard_experts, shard_weights};
use crate::weights::{LlamaWeights, Mlp, load_gguf, load_hf_dir};

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
    /// This model's place in a parallel group, when its weights are one rank's part.
    group: Option<Group>,
}

/// A rank of a parallel group: how the model is split, and the group's communicator (for a pipeline, the one
/// connecting this rank's counterparts in every stage).
#[derive(Debug)]
struct Group {
    split: Split,
    comm: Arc<dyn Communicator>,
    /// Within a pipeline stage, the stage's tensor-parallel split and its ranks' communicator.
    stage_tensor: Option<(TpRank, Arc<dyn Communicator>)>,
    /// `(rank, world)` in the whole group.
    member: (usize, usize),
}

impl Group {
    fn new(split: Split, comm: Arc<dyn Communicator>) -> Self {
        let member = (comm.rank(), comm.world_size());
        Group {
            split,
            comm,
            stage_tensor: None,
            member,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Split {
    /// This rank's heads, KV heads and MLP columns; an all-reduce after each block half.
    Tensor(TpRank),
    /// Attention split as `Tensor`; this rank's share of each layer's experts, tokens dispatched to them and
    /// combined back with all-to-alls.
    Expert(TpRank),
    /// This rank's contiguous layers; activations from the previous stage, to the next one.
    Pipeline(PipelineStage),
    /// The whole model; this rank's part of every chunk's tokens, attention as ring attention (`context`).
    Context,
}

/// One stage of a pipeline-parallel group: rank `stage` of `stages` runs `layers` (stage 0 also embeds, the last
/// stage also computes logits), each batch cut into up to `micro_batches` pieces so the stages overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineStage {
    pub stage: usize,
    pub stages: usize,
    pub layers: Range<usize>,
    pub micro_batches: usize,
}

impl PipelineStage {
    /// Stage `stage` of `stages` over `n_layers` layers: contiguous ranges as even as possible, the first stages
    /// taking one more when they do not divide. More stages than layers is refused.
    pub fn new(n_layers: usize, stages: usize, stage: usize, micro_batches: usize) -> Result<Self, EngineError> {
        if stages == 0 || stages > n_layers || stage >= stages {
            return Err(EngineError::invalid(
                "pipeline_parallel",
                format!("{stages} stages cannot split the model's {n_layers} layers (stage {stage})"),
            ));
        }
        let (base, extra) = (n_layers / stages, n_layers % stages);
        let start = stage * base + stage.min(extra);
        let len = base + usize::from(stage < extra);
        Ok(Self {
            stage,
            stages,
            layers: start..start + len,
            micro_batches: micro_batches.max(1),
        })
    }
}

impl LlamaModel {
    pub fn new(config: ModelConfig, weights: LlamaWeights) -> Self {
        let inv_freq = config.rope_inv_freq();
        LlamaModel {
            config,
            weights,
            inv_freq,
            group: None,
        }
    }

    /// Keeps this rank's shard of the weights (`comm.rank()` of `comm.world_size()`): attention heads and KV heads
    /// split across ranks, MLP rows (gate/up) and columns (down) likewise; embedding, norms and the output head
    /// stay whole. Sizes that do not divide are refused, naming them.
    pub fn tensor_parallel(self, comm: Arc<dyn Communicator>) -> Result<Self, EngineError> {
        self.sharded(comm, shard_weights, Split::Tensor)
    }

    /// Keeps this rank's expert-parallel shard (`comm.rank()` of `comm.world_size()`): attention heads and KV heads
    /// split as under tensor parallelism, and a contiguous share of every layer's experts (routers stay whole).
    /// A dense model, or expert or head counts that do not divide, are refused.
    pub fn expert_parallel(self, comm: Arc<dyn Communicator>) -> Result<Self, EngineError> {
        self.sharded(comm, shard_experts, Split::Expert)
    }

    /// Makes this model rank `comm.rank()` of a context-parallel group: whole weights, 1/W of every chunk's tokens,
    /// ring attention (see `model::context`); every rank keeps the whole KV.
    pub fn context_parallel(self, comm: Arc<dyn Communicator>) -> Self {
        let group = (comm.world_size() > 1).then(|| Group::new(Split::Context, comm));
        LlamaModel { group, ..self }
    }

    /// This model with its weights cut by `shard` for its rank of `comm`, in the group as `split`.
    fn sharded(
        self,
        comm: Arc<dyn Communicator>,
        shard: fn(LlamaWeights, &ModelConfig, TpRank) -> Result<LlamaWeights, EngineError>,
        split: fn(TpRank) -> Split,
    ) -> Result<Self, EngineError> {
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
        let weights = shard(weights, &config, rank)?;
        Ok(LlamaModel {
            config,
            weights,
            inv_freq,
            group: (rank.world > 1).then(|| Group::new(split(rank), comm)),
        })
    }

    /// Keeps this rank's stage of the layers (`comm.rank()` of `comm.world_size()` stages, see `PipelineStage`);
    /// embedding, final norm and head stay on every stage (only the first and last use them).
    pub fn pipeline_parallel(self, comm: Arc<dyn Communicator>, micro_batches: usize) -> Result<Self, EngineError> {
        let stage = PipelineStage::new(self.config.n_layers, comm.world_size(), comm.rank(), micro_batches)?;
        let LlamaModel {
            config,
            mut weights,
            inv_freq,
            ..
        } = self;
        weights.layers = weights.layers.drain(stage.layers.clone()).collect();
        Ok(LlamaModel {
            config,
            weights,
            inv_freq,
            group: (stage.stages > 1).then(|| Group::new(Split::Pipeline(stage), comm)),
        })
    }

    /// Rank `world.rank()` of a group of `tensor` × stages ranks: stage `rank / tensor` of a pipeline, and rank
    /// `rank % tensor` of that stage's tensor-parallel split (so a stage's ranks are consecutive — one node each,
    /// tensor parallelism inside it, the pipeline across nodes). Activations pass between the ranks of equal
    /// tensor rank in neighbouring stages; each stage all-reduces among its own ranks.
    pub fn tensor_pipeline(
        self,
        world: Arc<dyn Communicator>,
        tensor: usize,
        micro_batches: usize,
    ) -> Result<Self, EngineError> {
        let (rank, size) = (world.rank(), world.world_size());
        if tensor == 0 || !size.is_multiple_of(tensor) {
            return Err(EngineError::invalid(
                "tensor_parallel",
                format!("{tensor} tensor-parallel ranks do not divide a group of {size}"),
            ));
        }
        let (stages, stage_index, t) = (size / tensor, rank / tensor, rank % tensor);
        let stage = PipelineStage::new(self.config.n_layers, stages, stage_index, micro_batches)?;
        let sub = |members: Vec<usize>| -> Result<Arc<dyn Communicator>, EngineError> {
            Ok(Arc::new(cleave_comm::SubCommunicator::new(world.clone(), members)?))
        };
        let stage_comm = sub((0..tensor).map(|i| stage_index * tensor + i).collect())?;
        let pipeline_comm = sub((0..stages).map(|s| s * tensor + t).collect())?;
        let tp = TpRank { rank: t, world: tensor };
        let LlamaModel {
            config,
            mut weights,
            inv_freq,
            ..
        } = self;
        weights.layers = weights.layers.drain(stage.layers.clone()).collect();
        let weights = shard_weights(weights, &config, tp)?;
        Ok(LlamaModel {
            config,
            weights,
            inv_freq,
            group: Some(Group {
                split: Split::Pipeline(stage),
                comm: pipeline_comm,
                stage_tensor: Some((tp, stage_comm)),
                member: (rank, size),
            }),
        })
    }

    /// This model's rank in the group its attention heads are split across (rank 0 of 1 when whole or
    /// pipeline-split).
    pub fn tp_rank(&self) -> TpRank {
        match &self.group {
            Some(Group {
                split: Split::Tensor(rank) | Split::Expert(rank),
                ..
            })
            | Some(Group {
                stage_tensor: Some((rank, _)),
                ..
            }) => *rank,
            _ => TpRank { rank: 0, world: 1 },
        }
    }

    /// `(rank, world)` of the parallel group this model is a part of, if any.
    pub fn group_rank(&self) -> Option<(usize, usize)> {
        self.group.as_ref().map(|g| g.member)
    }

    /// Whether this model is one stage of a pipeline.
    pub fn is_pipeline_stage(&self) -> bool {
        matches!(
            &self.group,
            Some(Group {
                split: Split::Pipeline(_),
                ..
            })
        )
    }

    /// The whole model's view of a rank's KV pool of shape `local`: every KV head and every layer.
    pub fn group_kv_shape(&self, local: KvShape) -> KvShape {
        KvShape {
            n_layers: self.config.n_layers,
            n_kv_heads: self.config.n_kv_heads,
            ..local
        }
    }

    /// The part of one whole block layer (`layer` of the model; every KV head in `keys`/`values`) this rank
    /// stores: its local layer index and its heads' keys and values, or `None` when another stage holds the layer.
    pub fn local_block_layer<'a>(
        &self,
        layer: usize,
        keys: &'a [f32],
        values: &'a [f32],
    ) -> Option<(usize, &'a [f32], &'a [f32])> {
        match &self.group {
            None => Some((layer, keys, values)),
            Some(Group {
                split: Split::Tensor(rank) | Split::Expert(rank),
                ..
            }) => rank.kv_slice(keys, values).map(|(k, v)| (layer, k, v)),
            Some(Group {
                split: Split::Pipeline(stage),
                ..
            }) => {
                let (keys, values) = self.tp_rank().kv_slice(keys, values)?;
                stage
                    .layers
                    .contains(&layer)
                    .then(|| (layer - stage.layers.start, keys, values))
            }
            Some(Group {
                split: Split::Context, ..
            }) => Some((layer, keys, values)),
        }
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
    /// parallelism, its layers under pipeline parallelism).
    pub fn kv_shape(&self, n_blocks: usize, block_size: usize) -> KvShape {
        KvShape {
            n_layers: self.weights.layers.len(),
            n_blocks,
            block_size,
            n_kv_heads: self.config.n_kv_heads / self.tp_rank().world,
            head_dim: self.config.head_dim,
        }
    }

    /// Runs the batch, writes its keys/values into `kv`, and returns `[n, vocab]` logits for the chunks with
    /// `want_logits`, in batch order (on a parallel group's rank 0; other ranks return none).
    pub fn forward(&self, chunks: &[SeqChunk<'_>], kv: &mut KvCache) -> Result<Vec<f32>, EngineError> {
        self.forward_observed(chunks, kv, None)
    }

    /// `forward`, calling `layer_done(layer, reader)` as soon as each layer's keys and values for the whole batch
    /// are in `kv` — before that layer's attention and MLP run — so a KV transfer can ship layer `l` while layers
    /// `l..` are still computing. Under tensor parallelism every rank must pass a callback or none: the reader
    /// holds every KV head of the batch's blocks, gathered from all ranks. A pipeline stage takes no callback.
    pub fn forward_observed(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvCache,
        layer_done: Option<&mut LayerDone<'_>>,
    ) -> Result<Vec<f32>, EngineError> {
        if let Some(Group {
            split: Split::Pipeline(stage),
            comm,
            ..
        }) = &self.group
        {
            if layer_done.is_some() {
                return Err(pipeline_kv_read());
            }
            return self.forward_stage(chunks, kv, stage, comm.as_ref());
        }
        if let Some(Group {
            split: Split::Context,
            comm,
            ..
        }) = &self.group
        {
            return self.forward_context(chunks, kv, layer_done, comm.as_ref());
        }
        let mut x = self.embed(chunks);
        self.run_layers(&mut x, chunks, kv, layer_done, 0, None)?;
        if self.tp_rank().rank != 0 {
            return Ok(Vec::new());
        }
        Ok(self.logits(&x, chunks))
    }

    /// One context-parallel rank's part of a batch: its rows through every layer with ring attention; the last rank
    /// holds every chunk's last token, computes the logits and sends them to rank 0.
    fn forward_context(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvCache,
        layer_done: Option<&mut LayerDone<'_>>,
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, EngineError> {
        let ring = context::Ring::new(chunks, comm);
        let local = ring.local_chunks();
        let mut x = self.embed(&local);
        self.run_layers(&mut x, &local, kv, layer_done, 0, Some(&ring))?;
        let (rank, last) = (comm.rank(), ring.last_rank());
        if rank == last {
            let logits = self.logits(&x, &local);
            if rank == 0 {
                return Ok(logits);
            }
            comm.send(logits.as_slice().into(), 0)?;
            return Ok(Vec::new());
        }
        if rank == 0 {
            return self.receive_logits(chunks, last, comm);
        }
        Ok(Vec::new())
    }

    /// Rank 0 receiving the batch's logits rows from rank `from`, which computed them.
    fn receive_logits(
        &self,
        chunks: &[SeqChunk<'_>],
        from: usize,
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, EngineError> {
        let rows = chunks.iter().filter(|c| c.want_logits && !c.tokens.is_empty()).count();
        let mut logits = vec![0.0f32; rows * self.config.vocab_size];
        comm.recv(logits.as_mut_slice().into(), from)?;
        Ok(logits)
    }

    /// One pipeline stage's part of a batch, piece by piece: stage 0 embeds each piece and sends its activations
    /// on as soon as its layers are done, so the next stage works on piece i while this one computes piece i + 1;
    /// the last stage collects the logits and sends them to stage 0 at the end (one message, in batch order).
    fn forward_stage(
        &self,
        chunks: &[SeqChunk<'_>],
        kv: &mut KvCache,
        stage: &PipelineStage,
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, EngineError> {
        let (first, last) = (stage.stage == 0, stage.stage + 1 == stage.stages);
        // With tensor parallelism inside the stages, only each stage's first tensor rank handles logits.
        let lead = self.tp_rank().rank == 0;
        let hidden = self.config.hidden;
        let mut logits = Vec::new();
        for piece in micro_batches(chunks, stage.micro_batches) {
            let n_tokens: usize = piece.iter().map(|c| c.tokens.len()).sum();
            let mut x = if first {
                self.embed(&piece)
            } else {
                let mut x = vec![0.0f32; n_tokens * hidden];
                comm.recv(x.as_mut_slice().into(), stage.stage - 1)?;
                x
            };
            self.run_layers(&mut x, &piece, kv, None, stage.layers.start, None)?;
            if !last {
                comm.send(x.as_slice().into(), stage.stage + 1)?;
            } else if lead {
                logits.extend(self.logits(&x, &piece));
            }
        }
        match (first, last, lead) {
            (_, _, false) => Ok(Vec::new()),
            (false, true, true) => {
                comm.send(logits.as_slice().into(), 0)?;
                Ok(Vec::new())
            }
            (true, false, true) => self.receive_logits(chunks, stage.stages - 1, comm),
            _ => Ok(logits),
        }
    }

    /// The batch's token embeddings, `[tokens, hidden]`.
    fn embed(&self, chunks: &[SeqChunk<'_>]) -> Vec<f32> {
        let hidden = self.config.hidden;
        let n_tokens: usize = chunks.iter().map(|c| c.tokens.len()).sum();
        let mut x = vec![0.0f32; n_tokens * hidden];
        for (row, &tok) in x.chunks_exact_mut(hidden).zip(chunks.iter().flat_map(|c| c.tokens)) {
            self.weights.embed.dequantize_rows(tok as usize, row);
        }
        x
    }

    /// Runs this rank's layers over `x` (`[tokens, hidden]`, updated in place); `first_layer` is the model layer
    /// of the first one (what `layer_done` is told).
    fn run_layers(
        &self,
        x: &mut [f32],
        chunks: &[SeqChunk<'_>],
        kv: &mut KvCache,
        mut layer_done: Option<&mut LayerDone<'_>>,
        first_layer: usize,
        ring: Option<&context::Ring<'_, '_>>,
    ) -> Result<(), EngineError> {
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
        let attn_chunks = attn_chunks(chunks);
        let dims = AttnDims {
            n_heads,
            n_kv_heads,
            head_dim: cfg.head_dim,
        };
        let gathered_blocks: Vec<BlockId> = match (&layer_done, &self.group) {
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
            rms_norm(x, &w.attn_norm, cfg.rms_eps, &mut normed);
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
            match ring {
                // Every rank's cache holds the whole batch's KV once the ring has gone round.
                Some(ring) => {
                    ring.attend((&q, &k, &v), kv, layer, dims, &mut attn)?;
                    if let Some(done) = layer_done.as_mut() {
                        done(first_layer + layer, kv);
                    }
                }
                None => {
                    if let Some(done) = layer_done.as_mut() {
                        match &self.group {
                            Some(group) => done(
                                first_layer + layer,
                                &GatheredKv::gather(kv, layer, &gathered_blocks, group.comm.as_ref())?,
                            ),
                            None => done(first_layer + layer, kv),
                        }
                    }
                    paged_attention(&q, &attn_chunks, kv, layer, dims, &mut attn);
                }
            }
            matmul(&attn, n_tokens, &w.o, &mut proj);
            self.all_reduce(&mut proj)?;
            add_assign(x, &proj);

            rms_norm(x, &w.mlp_norm, cfg.rms_eps, &mut normed);
            match (&w.mlp, &self.group) {
                (Mlp::Dense(ff), _) => {
                    matmul(&normed, n_tokens, &ff.gate_up, &mut gate_up);
                    silu_mul(&gate_up, inter, &mut act);
                    matmul(&act, n_tokens, &ff.down, &mut proj);
                    self.all_reduce(&mut proj)?;
                }
                (
                    Mlp::Experts(experts),
                    Some(Group {
                        split: Split::Expert(_),
                        comm,
                        ..
                    }),
                ) => moe::expert_parallel(experts, &normed, n_tokens, cfg.n_experts_used, comm.as_ref(), &mut proj)?,
                (Mlp::Experts(experts), _) => {
                    moe::mixture(experts, &normed, n_tokens, cfg.n_experts_used, &mut proj)?;
                    self.all_reduce(&mut proj)?;
                }
            }
            add_assign(x, &proj);
        }
        Ok(())
    }

    /// `[n, vocab]` logits of the last token of each chunk that wants them, from the final activations `x`.
    fn logits(&self, x: &[f32], chunks: &[SeqChunk<'_>]) -> Vec<f32> {
        let cfg = &self.config;
        let hidden = cfg.hidden;
        let last_rows: Vec<usize> = attn_chunks(chunks)
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
        logits
    }

    /// Sums a row-parallel layer's partial outputs over the group its heads (and, under tensor parallelism, MLP
    /// columns) are split across (nothing otherwise).
    fn all_reduce(&self, partial: &mut [f32]) -> Result<(), EngineError> {
        match &self.group {
            Some(Group {
                split: Split::Tensor(_) | Split::Expert(_),
                comm,
                ..
            })
            | Some(Group {
                stage_tensor: Some((_, comm)),
                ..
            }) => Ok(comm.all_reduce_sum(partial.into())?),
            _ => Ok(()),
        }
    }
}

/// Why a pipeline stage refuses a per-layer KV callback: each stage holds only its layers' KV.
pub(crate) fn pipeline_kv_read() -> EngineError {
    EngineError::invalid(
        "kv_transfer",
        "reading KV for a transfer from a pipeline-parallel group is not supported yet (each stage holds only its \
         layers' KV)",
    )
}

/// Each chunk's rows in the batch's `[tokens, ·]` matrices.
fn attn_chunks<'a>(chunks: &[SeqChunk<'a>]) -> Vec<AttnChunk<'a>> {
    let mut row = 0;
    chunks
        .iter()
        .map(|c| {
            let chunk = AttnChunk {
                row,
                len: c.tokens.len(),
                start_pos: c.start_pos,
                blocks: c.blocks,
            };
            row += c.tokens.len();
            chunk
        })
        .collect()
}

/// Cuts a batch into up to `pieces` pieces of about equal token counts, in order; a chunk may be cut too (its
/// later tokens then read the earlier ones' KV, written by the previous piece). Only the piece holding a chunk's
/// last token asks for its logits.
pub fn micro_batches<'a>(chunks: &[SeqChunk<'a>], pieces: usize) -> Vec<Vec<SeqChunk<'a>>> {
    let total: usize = chunks.iter().map(|c| c.tokens.len()).sum();
    if pieces <= 1 || total <= 1 {
        return vec![chunks.to_vec()];
    }
    let per = total.div_ceil(pieces);
    let (mut out, mut current, mut room) = (Vec::new(), Vec::new(), per);
    for c in chunks {
        if c.tokens.is_empty() {
            current.push(*c);
            continue;
        }
        let mut off = 0;
        while off < c.tokens.len() {
            let take = room.min(c.tokens.len() - off);
            current.push(SeqChunk {
                tokens: &c.tokens[off..off + take],
                start_pos: c.start_pos + off,
                blocks: c.blocks,
                want_logits: c.want_logits && off + take == c.tokens.len(),
            });
            off += take;
            room -= take;
            if room == 0 {
                out.push(std::mem::take(&mut current));
                room = per;
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
