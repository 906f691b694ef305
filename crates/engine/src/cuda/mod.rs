//! The CUDA backend: bf16 weights and a bf16 paged KV pool on one GPU, GEMMs through cuBLAS (bf16 inputs, f32
//! accumulation), everything else through `cleave-kernels`. Chosen at run time: [`cuda_available`] is false on a
//! machine without a driver, and nothing here is touched then (cudarc would panic).
//!
//! Numerics: the residual stream, q, RMSNorm and softmax stay in f32; matrices, the KV cache and the inputs of each
//! GEMM are bf16. The o and down projections accumulate straight into the f32 residual (cuBLAS `beta = 1`), so the
//! residual adds cost no extra pass and no extra rounding.

#![allow(unsafe_code)] // cuBLAS calls on raw device pointers; each one carries a SAFETY note

pub mod bench;
mod context;
mod forward;
mod graphs;
mod ipc;
mod kv;
mod moe;
mod nccl_link;
mod pipeline;
pub mod reference;
mod synthetic;
mod weights;

use std::path::Path;
use std::sync::Arc;

pub use cleave_kernels::cuda_available;
use cleave_kernels::{KernelError, Kernels, ModuleInfo};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};

use crate::backend::{Backend, KvBlockReader, KvLinkEndpoint, LandedCopy, PeerKv, PeerTarget};
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv::{BlockId, KvShape};
use crate::model::{LlamaModel, PipelineStage, SeqChunk};
use crate::parallel::{GroupMember, TpRank, shard_weights};
use forward::Scratch;
use graphs::DecodeGraphs;

/// cuBLAS workspace; 32 MiB covers its Hopper GEMM kernels.
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;
pub use ipc::PeerPool;
use kv::DeviceKv;
pub use nccl_link::{LINK_TIMEOUT, LinkShape, NcclLink, STAGING_BYTES, chunk_blocks, new_link_id};
pub use synthetic::{SYNTHETIC_SHAPES, synthetic_config};
use weights::DeviceWeights;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no CUDA device: the driver library is missing or sees no GPU")]
    NoDevice,
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    #[error("the KV pool of {bytes} bytes holds no {block_size}-token block")]
    NoKvBlocks { bytes: usize, block_size: usize },
    #[error("a forward pass found its buffers unprepared for this model")]
    Unprepared,
    #[error("tensor-parallel group: {0}")]
    Group(#[from] cleave_comm::CommError),
    #[error("NCCL KV link: {0}")]
    Nccl(String),
}

impl From<CudaError> for EngineError {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::NoDevice => EngineError::invalid("device", e.to_string()),
            CudaError::Group(e) => EngineError::Group(e),
            other => EngineError::Internal(other.to_string()),
        }
    }
}

/// Where the model goes and how big its KV pool is.
#[derive(Debug, Clone)]
pub struct CudaOptions<'a> {
    pub ordinal: usize,
    pub kv_cache_bytes: usize,
    pub block_size: usize,
    /// Keeps compiled kernels between runs.
    pub kernel_cache: Option<&'a Path>,
}

/// The model, its KV pool and the per-step buffers on one GPU.
#[derive(Debug)]
pub struct CudaBackend {
    config: ModelConfig,
    stream: Arc<CudaStream>,
    /// Copies of KV into other processes' pools (CUDA IPC) run here, overlapping the next layer's compute.
    transfer: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
    weights: DeviceWeights,
    kv: DeviceKv,
    inv_freq: CudaSlice<f32>,
    scratch: Scratch,
    graphs: DecodeGraphs,
    /// cuBLAS's workspace, set once so no GEMM allocates inside a graph capture.
    _blas_workspace: CudaSlice<u8>,
    device_name: String,
    /// This rank's parallel group (tensor-parallel, pipeline, expert- or context-parallel), once joined; with
    /// tensor parallelism inside pipeline stages, the stage's tensor-parallel group.
    group: Option<GroupComm>,
    /// With tensor parallelism inside pipeline stages: the ranks of this tensor rank in every stage, which pass
    /// activations stage to stage.
    stage_group: Option<GroupComm>,
    /// Which shard the weights are (rank 0 of 1 when whole).
    shard: TpRank,
    /// Which layers this rank runs, when it is one stage of a pipeline (the weights and KV pool hold only those;
    /// `config` stays the whole model's).
    stage: Option<PipelineStage>,
    /// This rank's place in a context-parallel group (whole weights, whole KV pool, a share of each batch's
    /// tokens).
    context: Option<TpRank>,
}

/// The NCCL communicator a backend owns. cudarc leaves `Comm` `!Send` (it holds a raw `ncclComm_t`).
#[derive(Debug)]
struct GroupComm(cleave_comm::NcclCommunicator);

// SAFETY: NCCL communicators may be used from any thread as long as calls on one communicator do not overlap; the
// backend is `Send` but not `Sync`, and every call goes through `&mut self` on whichever one thread owns it.
unsafe impl Send for GroupComm {}

struct Device {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    kernels: Kernels,
}

fn open(options: &CudaOptions<'_>) -> Result<Device, CudaError> {
    if !cuda_available() {
        return Err(CudaError::NoDevice);
    }
    let ctx = CudaContext::new(options.ordinal)?;
    // SAFETY: the backend uses one stream for everything, so cudarc's per-buffer events (which order work across
    // streams) would only cost time on every launch.
    unsafe { ctx.disable_event_tracking() };
    // A stream of its own: the legacy default stream cannot be captured into a graph.
    let stream = ctx.new_stream()?;
    let blas = CudaBlas::new(stream.clone())?;
    let kernels = Kernels::load(&ctx, options.kernel_cache)?;
    Ok(Device {
        ctx,
        stream,
        blas,
        kernels,
    })
}

impl CudaBackend {
    /// Uploads a loaded model (GGUF or safetensors) to the GPU in bf16.
    pub fn from_model(model: LlamaModel, options: &CudaOptions<'_>) -> Result<Self, CudaError> {
        let device = open(options)?;
        let (config, host) = model.into_parts();
        let weights = DeviceWeights::upload(&device.stream, &host)?;
        drop(host);
        Self::assemble(device, config, weights, options)
    }

    /// Rank `at.rank`'s shard of `model` (see `parallel::shard_weights`), with a KV pool for its share of the KV
    /// heads; `join_tensor_parallel` then connects it to the other ranks. `model_config` reports the rank's shape.
    pub fn from_model_shard(model: LlamaModel, options: &CudaOptions<'_>, at: TpRank) -> Result<Self, EngineError> {
        let device = open(options)?;
        let (config, host) = model.into_parts();
        let host = shard_weights(host, &config, at)?;
        let weights = DeviceWeights::upload(&device.stream, &host)?;
        drop(host);
        let mut backend = Self::assemble(device, TpRank::local_config(&config, at.world), weights, options)?;
        backend.shard = at;
        Ok(backend)
    }

    /// Rank `at.rank`'s expert-parallel share of a mixture-of-experts `model` (see `parallel::shard_experts`): its
    /// attention heads as under tensor parallelism, whole experts `r·E/W..`, and a KV pool for its KV heads.
    pub fn from_model_experts(model: LlamaModel, options: &CudaOptions<'_>, at: TpRank) -> Result<Self, EngineError> {
        let device = open(options)?;
        let (config, host) = model.into_parts();
        let host = crate::parallel::shard_experts(host, &config, at)?;
        let weights = DeviceWeights::upload(&device.stream, &host)?;
        drop(host);
        let mut backend = Self::assemble(device, TpRank::local_expert_config(&config, at.world), weights, options)?;
        backend.shard = at;
        Ok(backend)
    }

    /// Tensor rank `at.rank` of pipeline stage `stage.stage`: the stage's layers, sharded as `from_model_shard`
    /// shards them; `join_device_group` connects it to its stage's tensor ranks and to its tensor rank in every stage.
    pub fn from_model_stage_shard(
        model: LlamaModel,
        options: &CudaOptions<'_>,
        stage: PipelineStage,
        at: TpRank,
    ) -> Result<Self, EngineError> {
        let device = open(options)?;
        let (config, mut host) = model.into_parts();
        host.layers = host.layers.drain(stage.layers.clone()).collect();
        let host = shard_weights(host, &config, at)?;
        let weights = DeviceWeights::upload(&device.stream, &host)?;
        drop(host);
        let mut backend = Self::assemble(device, TpRank::local_config(&config, at.world), weights, options)?;
        backend.shard = at;
        backend.stage = Some(stage);
        Ok(backend)
    }

    /// Stage `stage.stage` of a pipeline over `model`'s layers: that stage's layers and a KV pool for them alone;
    /// embedding, final norm and head stay on every stage (only the first and last use them). `join_group` then
    /// connects it to the other stages.
    pub fn from_model_stage(
        model: LlamaModel,
        options: &CudaOptions<'_>,
        stage: PipelineStage,
    ) -> Result<Self, CudaError> {
        let device = open(options)?;
        let (config, mut host) = model.into_parts();
        host.layers = host.layers.drain(stage.layers.clone()).collect();
        let weights = DeviceWeights::upload(&device.stream, &host)?;
        drop(host);
        let mut backend = Self::assemble(device, config, weights, options)?;
        backend.stage = Some(stage);
        Ok(backend)
    }

    /// This backend (the whole model) as rank `at.rank` of a context-parallel group (see `cuda/context.rs`);
    /// `join_group` then connects it to the other ranks.
    pub fn context_parallel(mut self, at: TpRank) -> Self {
        self.context = Some(at);
        self
    }

    /// Joins the NCCL group `unique_id` names as `rank` of `world` (every rank calls this at once; it blocks until
    /// all have). Forward passes then all-reduce the residual after each block half (a tensor-parallel shard), pass
    /// activations from stage to stage (a pipeline stage) or exchange each layer's new KV (a context-parallel
    /// rank).
    pub fn join_group(&mut self, rank: usize, world: usize, unique_id: &[u8]) -> Result<(), CudaError> {
        self.group = Some(self.join(rank, world, unique_id)?);
        Ok(())
    }

    /// The NCCL communicator `unique_id` names, joined as `rank` of `world` and warmed up.
    fn join(&mut self, rank: usize, world: usize, unique_id: &[u8]) -> Result<GroupComm, CudaError> {
        let comm = cleave_comm::NcclCommunicator::from_rank(
            self.stream.clone(),
            rank,
            world,
            unique_id,
            std::time::Duration::from_secs(60),
        )?;
        // NCCL connects its channels lazily, on the first collective, which must not happen inside a CUDA graph
        // capture (a decode step may be the first pass): one small all-reduce now, on every rank.
        let mut warm = self.stream.alloc_zeros::<f32>(1024)?;
        comm.all_reduce_sum(&mut warm)?;
        self.stream.synchronize()?;
        self.graphs = DecodeGraphs::default();
        Ok(GroupComm(comm))
    }

    /// Whether this backend holds the whole model on its own (no parallel group): only then may other processes
    /// read or write its KV pool directly.
    fn whole(&self) -> bool {
        self.shard.world == 1 && self.stage.is_none() && self.context.is_none()
    }

    /// What a forward pass reads (with the transfer stream when `exporting`), and the pool and buffers it writes.
    fn pass_parts(&mut self, exporting: bool) -> (forward::Model<'_>, &mut DeviceKv, &mut Scratch) {
        let group = self.group.as_ref().map(|c| &c.0);
        let between_stages = match self.shard.world {
            1 => group,
            _ => self.stage_group.as_ref().map(|c| &c.0),
        };
        let model = forward::Model {
            cfg: &self.config,
            stream: &self.stream,
            blas: &self.blas,
            kernels: &self.kernels,
            weights: &self.weights,
            inv_freq: &self.inv_freq,
            tp: group.filter(|_| self.shard.world > 1),
            transfer: exporting.then_some(&self.transfer),
            pipeline: between_stages.zip(self.stage.as_ref()),
            context: group.filter(|_| self.context.is_some()),
        };
        (model, &mut self.kv, &mut self.scratch)
    }

    /// Random bf16 weights of `config`'s shape, built on the GPU from `seed`.
    pub fn synthetic(config: ModelConfig, seed: u64, options: &CudaOptions<'_>) -> Result<Self, CudaError> {
        let device = open(options)?;
        let experts = 0..config.n_experts;
        let weights = DeviceWeights::synthetic(&device.stream, &device.kernels, &config, seed, experts)?;
        Self::assemble(device, config, weights, options)
    }

    /// Random weights of a mixture-of-experts `config` as expert-parallel rank `at.rank` holds them (its share of
    /// the heads and of each layer's experts; see `from_model_experts`), for benchmarks.
    pub fn synthetic_experts(
        config: &ModelConfig,
        seed: u64,
        options: &CudaOptions<'_>,
        at: TpRank,
    ) -> Result<Self, EngineError> {
        TpRank::check_experts(config, at.world)?;
        let device = open(options)?;
        let local = TpRank::local_expert_config(config, at.world);
        let share = config.n_experts / at.world;
        let experts = at.rank * share..(at.rank + 1) * share;
        let weights = DeviceWeights::synthetic(&device.stream, &device.kernels, &local, seed, experts)?;
        let mut backend = Self::assemble(device, local, weights, options)?;
        backend.shard = at;
        Ok(backend)
    }

    fn assemble(
        device: Device,
        config: ModelConfig,
        weights: DeviceWeights,
        options: &CudaOptions<'_>,
    ) -> Result<Self, CudaError> {
        let Device {
            ctx,
            stream,
            blas,
            kernels,
        } = device;
        // The pool holds the layers this rank runs (a pipeline stage's alone).
        let kv_config = ModelConfig {
            n_layers: weights.layers.len(),
            ..config.clone()
        };
        let kv = DeviceKv::allocate(&stream, &kv_config, options.kv_cache_bytes, options.block_size)?;
        let blas_workspace = stream.alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)?;
        {
            let (ptr, _guard) = cudarc::driver::DevicePtr::device_ptr(&blas_workspace, &stream);
            // SAFETY: the workspace lives as long as the backend that owns both it and the handle.
            let status = unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut std::ffi::c_void,
                    BLAS_WORKSPACE_BYTES,
                )
            };
            status.result()?;
        }
        let inv_freq = stream.clone_htod(&config.rope_inv_freq())?;
        stream.synchronize()?;
        Ok(CudaBackend {
            device_name: ctx.name().unwrap_or_else(|_| "CUDA device".to_owned()),
            config,
            transfer: ctx.new_stream()?,
            stream,
            blas,
            kernels,
            weights,
            kv,
            inv_freq,
            scratch: Scratch::default(),
            graphs: DecodeGraphs::default(),
            _blas_workspace: blas_workspace,
            group: None,
            stage_group: None,
            shard: TpRank { rank: 0, world: 1 },
            stage: None,
            context: None,
        })
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// How the kernels were obtained (compiled now or read from the cache), for startup reports.
    pub fn kernel_info(&self) -> &ModuleInfo {
        &self.kernels.info
    }

    /// Bytes of weights on the device.
    pub fn weights_bytes(&self) -> usize {
        self.weights.byte_len()
    }

    /// Bytes of the KV pool on the device.
    pub fn kv_bytes(&self) -> usize {
        self.kv.byte_len()
    }

    /// Device-to-device copy bandwidth in bytes/s over `bytes` (the memory roofline the benchmarks compare to).
    pub fn copy_bandwidth(&self, bytes: usize, repeats: usize) -> Result<f64, CudaError> {
        let src = self.stream.alloc_zeros::<u8>(bytes)?;
        let mut dst = self.stream.alloc_zeros::<u8>(bytes)?;
        self.stream.memcpy_dtod(&src, &mut dst)?;
        self.stream.synchronize()?;
        let started = std::time::Instant::now();
        for _ in 0..repeats {
            self.stream.memcpy_dtod(&src, &mut dst)?;
        }
        self.stream.synchronize()?;
        // A copy reads and writes every byte.
        Ok((2 * bytes * repeats) as f64 / started.elapsed().as_secs_f64())
    }

    /// Weight-read bandwidth of one-row GEMMs (the decode shape) on a 28672 × 4096 bf16 matrix, with bf16 and f32
    /// outputs: what batch-1 decode can reach through cuBLAS.
    pub fn gemv_probe(&self) -> Result<Vec<(String, f64)>, CudaError> {
        use cudarc::cublas::sys::cudaDataType_t;
        let (rows, cols, reps) = (28_672usize, 4096usize, 50usize);
        let mut w = weights::DeviceMatrix {
            rows,
            cols,
            data: self.stream.alloc_zeros::<half::bf16>(rows * cols)?,
        };
        self.kernels.fill_uniform(&self.stream, &mut w.data, 7, 0.01)?;
        let x = self.stream.alloc_zeros::<half::bf16>(cols)?;
        let mut y16 = self.stream.alloc_zeros::<half::bf16>(rows)?;
        let mut y32 = self.stream.alloc_zeros::<f32>(rows)?;
        let on = (&self.blas, &*self.stream);
        let mut out = Vec::new();
        for (name, f32_out) in [("bf16 out", false), ("f32 out", true), ("f32 out, beta 1", true)] {
            let beta = if name.ends_with("beta 1") { 1.0 } else { 0.0 };
            let run = |y16: &mut CudaSlice<half::bf16>, y32: &mut CudaSlice<f32>| {
                if f32_out {
                    forward::gemm(on, &x, 1, &w, y32, cudaDataType_t::CUDA_R_32F, beta)
                } else {
                    forward::gemm(on, &x, 1, &w, y16, cudaDataType_t::CUDA_R_16BF, beta)
                }
            };
            run(&mut y16, &mut y32)?;
            self.stream.synchronize()?;
            let started = std::time::Instant::now();
            for _ in 0..reps {
                run(&mut y16, &mut y32)?;
            }
            self.stream.synchronize()?;
            let bytes = (rows * cols * 2 * reps) as f64;
            out.push((name.to_owned(), bytes / started.elapsed().as_secs_f64() / 1e9));
        }
        Ok(out)
    }

    /// Copies blocks `0..blocks` of every layer into the same blocks of `peer` (CUDA IPC), or sends them over an
    /// NCCL link (whose receiver takes `1 + repeats` transfers of those blocks), `1 + repeats` times, and returns
    /// the bytes of keys and values moved per second after the first (the transfer path alone, for benchmarks).
    pub fn peer_copy_bandwidth(&self, peer: &PeerKv, blocks: usize, repeats: usize) -> Result<f64, EngineError> {
        let pairs: Vec<(BlockId, BlockId)> = (0..blocks as BlockId).map(|b| (b, b)).collect();
        let own: Vec<BlockId> = pairs.iter().map(|&(b, _)| b).collect();
        let shape = self.kv.shape();
        let run = || -> Result<(), CudaError> {
            let mut last = None;
            for layer in 0..shape.n_layers {
                let (keys, values) = (&self.kv.keys[layer], &self.kv.values[layer]);
                match &peer.0 {
                    PeerTarget::Pool(pool) => {
                        ipc::copy_layer(
                            &self.kernels,
                            &self.stream,
                            &self.transfer,
                            keys,
                            values,
                            pool,
                            layer,
                            &pairs,
                        )?;
                    }
                    PeerTarget::Link(link) => {
                        last = Some(link.send_layer(&self.kernels, &self.stream, keys, values, &own)?);
                    }
                }
            }
            match (&peer.0, last) {
                (PeerTarget::Link(link), Some(event)) => link.wait(&event),
                _ => Ok(self.transfer.synchronize()?),
            }
        };
        run()?;
        let started = std::time::Instant::now();
        for _ in 0..repeats.max(1) {
            run()?;
        }
        let bytes = (2 * shape.n_layers * blocks * shape.block_floats() * 2 * repeats.max(1)) as f64;
        Ok(bytes / started.elapsed().as_secs_f64())
    }

    /// Waits until every queued kernel finished (benchmarks time whole steps).
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(CudaError::from)
    }
}

impl GroupMember for CudaBackend {
    fn whole_kv_shape(&self) -> KvShape {
        let local = self.kv.shape();
        KvShape {
            n_kv_heads: local.n_kv_heads * self.shard.world,
            n_layers: self.config.n_layers,
            ..local
        }
    }

    fn local_block_layer<'a>(
        &self,
        layer: usize,
        keys: &'a [f32],
        values: &'a [f32],
    ) -> Option<(usize, &'a [f32], &'a [f32])> {
        let layer = match &self.stage {
            Some(stage) if !stage.layers.contains(&layer) => return None,
            Some(stage) => layer - stage.layers.start,
            None => layer,
        };
        self.shard.kv_slice(keys, values).map(|(k, v)| (layer, k, v))
    }

    /// A tensor-parallel GPU group gathers each layer's KV over NCCL for a transfer (`DeviceKv::gather_layer`); a
    /// pipeline stage holds only its layers' KV.
    fn check_kv_read(&self) -> Result<(), EngineError> {
        match self.stage {
            Some(_) => Err(crate::model::pipeline_kv_read()),
            None => Ok(()),
        }
    }

    /// One NCCL id; with tensor parallelism inside pipeline stages, one per stage (its tensor-parallel group) and
    /// one per tensor rank (its ranks across the stages), back to back.
    fn device_group_id(&self) -> Result<Option<Vec<u8>>, EngineError> {
        if self.whole() {
            return Ok(None);
        }
        let groups = match (&self.stage, self.shard.world) {
            (Some(stage), tensor) if tensor > 1 => stage.stages + tensor,
            _ => 1,
        };
        let mut ids = Vec::new();
        for _ in 0..groups {
            ids.extend(cleave_comm::NcclCommunicator::new_unique_id()?);
        }
        Ok(Some(ids))
    }

    fn join_device_group(&mut self, rank: usize, world: usize, id: &[u8]) -> Result<(), EngineError> {
        if let (Some(stage), tensor) = (self.stage.clone(), self.shard.world)
            && tensor > 1
        {
            // Rank s·T + t: tensor rank t of stage s (see `LlamaModel::tensor_pipeline`).
            let (s, t, stages) = (stage.stage, self.shard.rank, stage.stages);
            let ids: Vec<&[u8]> = id.chunks(id.len() / (stages + tensor).max(1)).collect();
            if rank != s * tensor + t || world != stages * tensor || ids.len() != stages + tensor {
                return Err(EngineError::invalid(
                    "parallel",
                    format!(
                        "rank {rank} of {world} joining as tensor rank {t} of {tensor} in stage {s} of {stages} \
                         ({} group ids)",
                        ids.len()
                    ),
                ));
            }
            self.group = Some(self.join(t, tensor, ids[s])?);
            self.stage_group = Some(self.join(s, stages, ids[stages + t])?);
            return Ok(());
        }
        let (mine, of) = match (&self.stage, self.context) {
            (Some(stage), _) => (stage.stage, stage.stages),
            (None, Some(at)) => (at.rank, at.world),
            (None, None) => (self.shard.rank, self.shard.world),
        };
        if rank != mine || world != of {
            return Err(EngineError::invalid(
                "parallel",
                format!("rank {rank} of {world} joining with the part of the model of rank {mine} of {of}"),
            ));
        }
        Ok(self.join_group(rank, world, id)?)
    }
}

impl Backend for CudaBackend {
    fn model_config(&self) -> &ModelConfig {
        &self.config
    }

    fn kv_shape(&self) -> KvShape {
        self.kv.shape()
    }

    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        layer_done: &mut dyn FnMut(usize, &dyn KvBlockReader),
    ) -> Result<Vec<f32>, EngineError> {
        self.try_forward(chunks, Some(layer_done)).map_err(EngineError::from)
    }

    /// Decode steps replay CUDA graphs, except on a pipeline stage or a context-parallel rank (their sends and
    /// exchanges run plainly) and for a mixture-of-experts model (its routing waits on the host).
    fn forward_plain(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<f32>, EngineError> {
        let graphs_allowed = self.stage.is_none() && self.context.is_none() && !self.weights.has_experts();
        if graphs::graphable(chunks) && graphs_allowed {
            let mut graphs = std::mem::take(&mut self.graphs);
            let (model, kv, scratch) = self.pass_parts(false);
            let replayed = graphs.run(&model, kv, scratch, chunks);
            self.graphs = graphs;
            if let Some(logits) = replayed? {
                return Ok(logits);
            }
        }
        self.try_forward(chunks, None).map_err(EngineError::from)
    }

    /// The pool's CUDA-IPC descriptor; none under tensor parallelism (each rank holds a slice of every block, so
    /// those groups transfer over TCP) or on a pipeline stage.
    fn export_kv_pool(&self) -> Result<Option<Vec<u8>>, EngineError> {
        if !self.whole() {
            return Ok(None);
        }
        // The engine thread may not have touched the device yet: IPC calls need the context current.
        self.stream.context().bind_to_thread().map_err(CudaError::from)?;
        Ok(Some(self.kv.export()?))
    }

    fn open_peer_kv(&mut self, descriptor: &[u8]) -> Result<PeerKv, EngineError> {
        if !self.whole() {
            return Err(EngineError::invalid(
                "transport",
                "a parallel group sends KV over TCP, not CUDA IPC",
            ));
        }
        let shape = self.kv.shape();
        let pool = PeerPool::open(self.stream.context(), descriptor, shape.n_layers, shape.block_floats())?;
        Ok(PeerKv(PeerTarget::Pool(Arc::new(pool))))
    }

    /// NCCL links for KV, under the same condition as CUDA IPC (the whole model on this device) and with NCCL.
    fn kv_link_endpoint(&self) -> Option<KvLinkEndpoint> {
        (self.whole() && cleave_comm::nccl_available()).then(|| KvLinkEndpoint {
            ctx: self.stream.context().clone(),
            block_elems: self.kv.shape().block_floats(),
            staging_bytes: STAGING_BYTES,
            max_ctas: None,
        })
    }

    fn receive_kv(&mut self, link: &PeerKv, blocks: &[BlockId]) -> Result<Vec<LandedCopy>, EngineError> {
        let PeerTarget::Link(link) = &link.0 else {
            return Err(EngineError::invalid("transport", "KV is received over NCCL links only"));
        };
        let pointers = self.kv.layer_pointers();
        let events = link.receive_layers(&self.kernels, &pointers, self.kv.shape().n_blocks + 1, blocks)?;
        Ok(events
            .into_iter()
            .map(|event| LandedCopy {
                event,
                link: Some(link.clone()),
            })
            .collect())
    }

    fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<(), EngineError> {
        self.kv.copy_block(&self.stream, src, dst).map_err(EngineError::from)
    }

    fn write_block_layer(
        &mut self,
        layer: usize,
        block: BlockId,
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), EngineError> {
        self.kv
            .write_block_layer(&self.stream, layer, block, keys, values)
            .map_err(EngineError::from)
    }
}
