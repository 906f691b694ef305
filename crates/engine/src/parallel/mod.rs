//! Tensor and expert parallelism on the CPU backend: a model's weights split across the ranks of a group
//! ([`shard_weights`], [`shard_experts`]), the group's leader driving its followers through one forward pass at a time
//! ([`ParallelBackend`], [`run_follower`]), and the KV of several ranks gathered for a transfer
//! ([`GatheredKv`]).
//!
//! Layout (Megatron-style): rank r of W holds query heads `r·H/W..`, KV heads `r·Hkv/W..` (so its KV cache holds
//! only those heads), gate/up rows `r·I/W..` and the matching columns of the output and down projections. Each
//! block half ends in one all-reduce of the `[tokens, hidden]` partial sums; embedding, norms and the output head
//! are whole on every rank, and only rank 0 computes logits. A mixture-of-experts model under tensor parallelism
//! splits every expert that way. Under expert parallelism attention is split the same way, while each rank holds
//! whole experts, `r·E/W..` (see `cpu::moe`).

mod follower;
mod leader;
mod protocol;

use cleave_comm::Communicator;

pub use follower::{run_follower, run_member};
pub use leader::{GroupFailure, ParallelBackend};

use crate::backend::{Backend, CpuBackend, KvBlockReader};
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv::{BlockId, KvCache, KvShape};
use crate::weights::{Experts, FeedForward, LayerWeights, LlamaWeights, Mlp};

/// A rank's own backend in a parallel group — the CPU backend over its part of the model, or a GPU holding its
/// tensor-parallel shard — with what the group's leader and followers need beyond [`Backend`]: how the whole
/// model's KV maps onto this rank, and the device-level group (NCCL) a GPU rank joins.
pub trait GroupMember: Backend {
    /// The pool as the whole model sees it: every KV head and every layer.
    fn whole_kv_shape(&self) -> KvShape;

    /// The part of one whole block layer (`layer` of the model; every KV head in `keys`/`values`) this rank
    /// stores: its local layer and its heads' keys and values, or `None` when another rank holds the layer.
    fn local_block_layer<'a>(
        &self,
        layer: usize,
        keys: &'a [f32],
        values: &'a [f32],
    ) -> Option<(usize, &'a [f32], &'a [f32])>;

    /// Refuses a forward pass that would hand each layer's KV to a transfer, where this group cannot gather it.
    fn check_kv_read(&self) -> Result<(), EngineError>;

    /// A fresh id for the device-level group the ranks' devices form (NCCL's unique id), or `None` when the
    /// ranks talk through the host communicator alone. Called on rank 0.
    fn device_group_id(&self) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(None)
    }

    /// Joins the device-level group `id` names as `rank` of `world`; every rank calls this at once.
    fn join_device_group(&mut self, rank: usize, world: usize, id: &[u8]) -> Result<(), EngineError> {
        let _ = (rank, world, id);
        Err(EngineError::invalid(
            "parallel",
            "this backend forms no device-level group",
        ))
    }
}

impl GroupMember for CpuBackend {
    fn whole_kv_shape(&self) -> KvShape {
        self.model().group_kv_shape(self.kv_shape())
    }

    fn local_block_layer<'a>(
        &self,
        layer: usize,
        keys: &'a [f32],
        values: &'a [f32],
    ) -> Option<(usize, &'a [f32], &'a [f32])> {
        self.model().local_block_layer(layer, keys, values)
    }

    fn check_kv_read(&self) -> Result<(), EngineError> {
        if self.model().is_pipeline_stage() {
            return Err(crate::model::pipeline_kv_read());
        }
        Ok(())
    }
}

/// A rank in a tensor-parallel group of `world` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TpRank {
    pub rank: usize,
    pub world: usize,
}

impl TpRank {
    /// Refuses a group size that does not split the model evenly, naming the size that does not divide.
    pub fn check(config: &ModelConfig, world: usize) -> Result<(), EngineError> {
        let sizes = [
            ("attention heads", config.n_heads),
            ("KV heads", config.n_kv_heads),
            ("MLP intermediate size", config.intermediate),
        ];
        check_sizes(config, world, "tensor_parallel", &sizes)
    }

    /// This rank's KV heads of one whole block layer (every KV head, head-major): the `rank`-th of `world` equal
    /// slices.
    pub fn kv_slice<'a>(&self, keys: &'a [f32], values: &'a [f32]) -> Option<(&'a [f32], &'a [f32])> {
        let local = keys.len() / self.world.max(1);
        let mine = self.rank * local..(self.rank + 1) * local;
        Some((keys.get(mine.clone())?, values.get(mine)?))
    }

    /// One rank's model shape: attention heads, KV heads and MLP width divided by `world` (checked by `check`).
    pub fn local_config(config: &ModelConfig, world: usize) -> ModelConfig {
        let world = world.max(1);
        ModelConfig {
            n_heads: config.n_heads / world,
            n_kv_heads: config.n_kv_heads / world,
            intermediate: config.intermediate / world,
            ..config.clone()
        }
    }

    /// An expert-parallel rank's shape of `config`: its share of the attention heads and KV heads, whole experts.
    pub fn local_expert_config(config: &ModelConfig, world: usize) -> ModelConfig {
        let world = world.max(1);
        ModelConfig {
            n_heads: config.n_heads / world,
            n_kv_heads: config.n_kv_heads / world,
            ..config.clone()
        }
    }

    /// Refuses an expert-parallel group of `world` ranks for a dense model, or one that does not split the
    /// experts, attention heads or KV heads evenly.
    pub fn check_experts(config: &ModelConfig, world: usize) -> Result<(), EngineError> {
        if !config.is_moe() {
            return Err(EngineError::invalid(
                "expert_parallel",
                "the model has no experts (a dense MLP); use tensor or pipeline parallelism",
            ));
        }
        if world == 0 || !config.n_experts.is_multiple_of(world) {
            return Err(EngineError::invalid(
                "expert_parallel",
                format!(
                    "{world} ranks cannot split the model's {} experts evenly",
                    config.n_experts
                ),
            ));
        }
        check_heads(config, world, "expert_parallel")
    }
}

/// Refuses a group that cannot split the model's attention heads and KV heads evenly.
fn check_heads(config: &ModelConfig, world: usize, field: &'static str) -> Result<(), EngineError> {
    let sizes = [("attention heads", config.n_heads), ("KV heads", config.n_kv_heads)];
    check_sizes(config, world, field, &sizes)
}

fn check_sizes(
    config: &ModelConfig,
    world: usize,
    field: &'static str,
    sizes: &[(&str, usize)],
) -> Result<(), EngineError> {
    if world == 0 {
        return Err(EngineError::invalid(field, "must be at least 1"));
    }
    for (what, n) in sizes {
        if !n.is_multiple_of(world) {
            let divisors: Vec<String> = (1..=config.n_kv_heads)
                .filter(|d| sizes.iter().all(|(_, n)| n.is_multiple_of(*d)))
                .map(|d| d.to_string())
                .collect();
            return Err(EngineError::invalid(
                field,
                format!(
                    "{world} ranks cannot split the model's {n} {what} evenly; this model allows {}",
                    divisors.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Keeps `at.rank`'s shard of every layer (see the module docs). Loading reads the whole checkpoint first, so a
/// rank briefly holds all weights.
pub fn shard_weights(weights: LlamaWeights, config: &ModelConfig, at: TpRank) -> Result<LlamaWeights, EngineError> {
    TpRank::check(config, at.world)?;
    if at.world == 1 {
        return Ok(weights);
    }
    let inter = config.intermediate;
    let inter_local = inter / at.world;
    let r = at.rank;
    let gate_up_rows: Vec<usize> = (r * inter_local..(r + 1) * inter_local)
        .chain(inter + r * inter_local..inter + (r + 1) * inter_local)
        .collect();
    let split = |ff: FeedForward| FeedForward {
        gate_up: ff.gate_up.permute_rows(&gate_up_rows),
        down: ff.down.slice_cols(r * inter_local, inter_local),
    };
    Ok(shard_attention(weights, config, at, |mlp| match mlp {
        Mlp::Dense(ff) => Mlp::Dense(split(ff)),
        Mlp::Experts(e) => Mlp::Experts(Experts {
            local: e.local.into_iter().map(split).collect(),
            ..e
        }),
    }))
}

/// Keeps `at.rank`'s expert-parallel shard: attention split as [`shard_weights`] splits it, and the contiguous
/// experts `r·E/W..(r+1)·E/W` of every layer, whole. Refuses dense models and expert counts that do not divide.
pub fn shard_experts(weights: LlamaWeights, config: &ModelConfig, at: TpRank) -> Result<LlamaWeights, EngineError> {
    TpRank::check_experts(config, at.world)?;
    if at.world == 1 {
        return Ok(weights);
    }
    let per_rank = config.n_experts / at.world;
    let mine = at.rank * per_rank..(at.rank + 1) * per_rank;
    Ok(shard_attention(weights, config, at, |mlp| match mlp {
        Mlp::Experts(e) => Mlp::Experts(Experts {
            router: e.router,
            first: mine.start,
            local: e.local.into_iter().skip(mine.start).take(per_rank).collect(),
        }),
        dense => dense,
    }))
}

/// Every layer with rank `at.rank`'s query heads, KV heads and output-projection columns, and its MLP as `mlp`
/// makes it.
fn shard_attention(weights: LlamaWeights, config: &ModelConfig, at: TpRank, mlp: impl Fn(Mlp) -> Mlp) -> LlamaWeights {
    let (q_dim, kv_dim) = (config.q_dim(), config.kv_dim());
    let (q_local, kv_local) = (q_dim / at.world, kv_dim / at.world);
    let r = at.rank;
    let qkv_rows: Vec<usize> = (r * q_local..(r + 1) * q_local)
        .chain(q_dim + r * kv_local..q_dim + (r + 1) * kv_local)
        .chain(q_dim + kv_dim + r * kv_local..q_dim + kv_dim + (r + 1) * kv_local)
        .collect();
    let layers = weights
        .layers
        .into_iter()
        .map(|layer| LayerWeights {
            attn_norm: layer.attn_norm,
            qkv: layer.qkv.permute_rows(&qkv_rows),
            qkv_bias: layer.qkv_bias.map(|b| qkv_rows.iter().map(|&i| b[i]).collect()),
            o: layer.o.slice_cols(r * q_local, q_local),
            mlp_norm: layer.mlp_norm,
            mlp: mlp(layer.mlp),
        })
        .collect();
    LlamaWeights { layers, ..weights }
}

/// One layer's keys and values of some blocks with every KV head, gathered from all ranks of a group: what a KV
/// transfer reads while a tensor-parallel forward pass runs.
#[derive(Debug)]
pub struct GatheredKv {
    blocks: Vec<BlockId>,
    /// `[rank][block][k then v][local heads · slots · head_dim]`, as the all-gather delivers it.
    data: Vec<f32>,
    /// Floats of one block's keys (or values) on one rank.
    local_floats: usize,
    world: usize,
}

impl GatheredKv {
    /// Gathers `layer` of `blocks` (sorted, the same list on every rank) from every rank of `comm`.
    pub fn gather(
        kv: &KvCache,
        layer: usize,
        blocks: &[BlockId],
        comm: &dyn Communicator,
    ) -> Result<Self, EngineError> {
        let local_floats = kv.shape().block_floats();
        let mut local = Vec::with_capacity(blocks.len() * 2 * local_floats);
        for &block in blocks {
            let (k, v) = kv.block_layer(layer, block);
            local.extend_from_slice(k);
            local.extend_from_slice(v);
        }
        let world = comm.world_size();
        let mut data = vec![0.0f32; local.len() * world];
        comm.all_gather(local.as_slice().into(), data.as_mut_slice().into())?;
        Ok(Self {
            blocks: blocks.to_vec(),
            data,
            local_floats,
            world,
        })
    }
}

impl KvBlockReader for GatheredKv {
    fn read_block_layer(&self, _layer: usize, block: BlockId, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        let Ok(i) = self.blocks.binary_search(&block) else {
            // Every block of the batch was gathered; a reader asking for another one gets nothing to ship.
            return;
        };
        let per_rank = self.blocks.len() * 2 * self.local_floats;
        for rank in 0..self.world {
            let at = rank * per_rank + i * 2 * self.local_floats;
            keys.extend_from_slice(&self.data[at..at + self.local_floats]);
            values.extend_from_slice(&self.data[at + self.local_floats..at + 2 * self.local_floats]);
        }
    }
}
