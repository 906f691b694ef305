//! One forward pass on the GPU over a batch of sequence chunks (prefill chunks and decode steps mixed), the same
//! contract as the CPU model's `forward_observed`.
//!
//! Per layer: RMSNorm → qkv GEMM (f32 out) → RoPE + KV-cache write → the layer callback → paged attention → o GEMM
//! accumulated into the residual → RMSNorm → gate|up GEMM → SwiGLU → down GEMM accumulated into the residual. Only
//! the rows that want logits pay for the final norm and the output head. Per-step buffers grow to the largest batch
//! seen and are reused. Cost per step beyond the kernels: five small host→device copies of the batch layout and one
//! device→host copy of the logits.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use cleave_comm::NcclCommunicator;

use super::kv::DeviceKv;
use super::moe::{Mixture, MoeBuffers, mixture};
use super::weights::{DeviceMatrix, DeviceMlp, DeviceWeights};
use super::{CudaBackend, CudaError};
use crate::backend::KvBlockReader;
use crate::config::ModelConfig;
use crate::kv::BlockId;
use crate::model::{PipelineStage, SeqChunk};
use cleave_kernels::{AttnDims, AttnMeta, DecodeSplit, Kernels, PREFILL_TILE_MAX_HEAD_DIM, prefill_tile_rows};

/// The per-step activations, sized for `tokens` rows (and `logit_rows` rows of logits).
#[derive(Debug)]
struct Buffers {
    tokens: usize,
    x: CudaSlice<f32>,
    normed: CudaSlice<bf16>,
    qkv: CudaSlice<f32>,
    q: CudaSlice<f32>,
    attn: CudaSlice<bf16>,
    gate_up: CudaSlice<bf16>,
    act: CudaSlice<bf16>,
    /// A mixture-of-experts model's buffers.
    moe: Option<MoeBuffers>,
}

#[derive(Debug, Default)]
pub(super) struct Scratch {
    buffers: Option<Buffers>,
    logit_rows: usize,
    final_normed: Option<CudaSlice<bf16>>,
    logits: Option<CudaSlice<f32>>,
    /// Scratch of split decode attention (fixed size: see `Kernels::decode_split_lens`); the counters start at zero.
    split_partial: Option<CudaSlice<f32>>,
    split_counters: Option<CudaSlice<u32>>,
    /// Bumped whenever a buffer is reallocated: CUDA graphs captured before hold stale pointers.
    pub generation: u64,
    /// A context-parallel rank's KV exchange buffers.
    pub context: Option<super::context::Staging>,
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(stream: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<T>, CudaError> {
    stream.alloc_zeros::<T>(n.max(1)).map_err(CudaError::from)
}

impl Scratch {
    /// Makes every buffer hold at least `t` token rows and `n_logits` logit rows.
    pub fn ensure(
        &mut self,
        stream: &Arc<CudaStream>,
        cfg: &ModelConfig,
        kernels: &Kernels,
        t: usize,
        n_logits: usize,
    ) -> Result<(), CudaError> {
        if self.split_partial.is_none() || self.split_counters.is_none() {
            self.generation += 1;
            let (partial, counters) = kernels.decode_split_lens(cfg.head_dim);
            self.split_partial = Some(zeros(stream, partial)?);
            self.split_counters = Some(zeros(stream, counters)?);
        }
        self.buffers(stream, cfg, t)?;
        self.ensure_logits(stream, cfg, n_logits.max(1))
    }

    fn buffers(&mut self, stream: &Arc<CudaStream>, cfg: &ModelConfig, t: usize) -> Result<&mut Buffers, CudaError> {
        if self.buffers.as_ref().is_none_or(|b| b.tokens < t) {
            self.generation += 1;
            // Grow geometrically so a slowly growing batch does not reallocate every step.
            let tokens = t.next_power_of_two();
            let width = cfg.q_dim() + 2 * cfg.kv_dim();
            self.buffers = Some(Buffers {
                tokens,
                x: zeros(stream, tokens * cfg.hidden)?,
                normed: zeros(stream, tokens * cfg.hidden)?,
                qkv: zeros(stream, tokens * width)?,
                q: zeros(stream, tokens * cfg.q_dim())?,
                attn: zeros(stream, tokens * cfg.q_dim())?,
                gate_up: zeros(stream, tokens * 2 * cfg.intermediate)?,
                act: zeros(stream, tokens * cfg.intermediate)?,
                moe: match cfg.is_moe() {
                    true => Some(MoeBuffers {
                        logits: zeros(stream, tokens * cfg.n_experts)?,
                        rows: zeros(stream, tokens * cfg.hidden)?,
                        out: zeros(stream, tokens * cfg.hidden)?,
                    }),
                    false => None,
                },
            });
        }
        self.buffers.as_mut().ok_or(CudaError::NoDevice)
    }

    /// The logits buffer (after `ensure`).
    pub fn logits_mut(&mut self) -> Result<&mut CudaSlice<f32>, CudaError> {
        self.logits.as_mut().ok_or(CudaError::NoDevice)
    }

    pub fn ensure_logits(&mut self, stream: &Arc<CudaStream>, cfg: &ModelConfig, n: usize) -> Result<(), CudaError> {
        if self.logit_rows < n || self.logits.is_none() {
            self.generation += 1;
            let rows = n.next_power_of_two();
            self.final_normed = Some(zeros(stream, rows * cfg.hidden)?);
            self.logits = Some(zeros(stream, rows * cfg.vocab_size)?);
            self.logit_rows = rows;
        }
        Ok(())
    }
}

/// The batch layout on the host, before upload.
#[derive(Debug, Default)]
struct Layout {
    /// Token rows (the vectors below hold one padding element when there are none).
    n_tokens: usize,
    ids: Vec<u32>,
    pos: Vec<i32>,
    slots: Vec<i32>,
    table_off: Vec<i32>,
    tables: Vec<i32>,
    logit_rows: Vec<i32>,
    /// Prefill query tiles: (first row, rows, table offset, first position) each.
    tiles: Vec<i32>,
    n_tiles: usize,
    single_rows: Vec<i32>,
    n_single_rows: usize,
}

/// Chunks at least this long go through the tiled prefill attention; shorter ones (decodes) one row per block.
const TILED_MIN_ROWS: usize = 8;

/// The batch layout; `tile_rows` is the prefill kernel's tile height (`None`: no tiled attention for this model).
fn layout(chunks: &[SeqChunk<'_>], block_size: usize, tile_rows: Option<usize>) -> Layout {
    let mut l = Layout::default();
    let mut row = 0usize;
    for c in chunks {
        let off = l.tables.len() as i32;
        l.tables.extend(c.blocks.iter().map(|&b| b as i32));
        for (i, &token) in c.tokens.iter().enumerate() {
            let p = c.start_pos + i;
            l.ids.push(token);
            l.pos.push(p as i32);
            l.slots
                .push((c.blocks[p / block_size] as usize * block_size + p % block_size) as i32);
            l.table_off.push(off);
        }
        let len = c.tokens.len();
        if let Some(tile_rows) = tile_rows.filter(|_| len >= TILED_MIN_ROWS) {
            for first in (0..len).step_by(tile_rows) {
                let rows = tile_rows.min(len - first);
                l.tiles
                    .extend([(row + first) as i32, rows as i32, off, (c.start_pos + first) as i32]);
                l.n_tiles += 1;
            }
        } else {
            l.single_rows.extend((row..row + len).map(|r| r as i32));
            l.n_single_rows += len;
        }
        row += len;
        if c.want_logits && len > 0 {
            l.logit_rows.push(row as i32 - 1);
        }
    }
    // Device buffers are never empty; the counts say what is used.
    l.n_tokens = l.ids.len();
    if l.ids.is_empty() {
        l.ids.push(0);
    }
    for v in [
        &mut l.pos,
        &mut l.slots,
        &mut l.table_off,
        &mut l.tables,
        &mut l.tiles,
        &mut l.single_rows,
    ] {
        if v.is_empty() {
            v.push(0);
        }
    }
    l
}

/// `y[t, out] = x[t, in] · wᵀ + beta · y[t, out]` with bf16 inputs and f32 accumulation; `y` is bf16 or f32.
pub(super) fn gemm<Y: DeviceRepr, O: DevicePtrMut<Y>>(
    (blas, stream): (&CudaBlas, &CudaStream),
    x: &CudaSlice<bf16>,
    t: usize,
    w: &DeviceMatrix,
    y: &mut O,
    y_type: cudaDataType_t,
    beta: f32,
) -> Result<(), CudaError> {
    let y_elems = std::mem::size_of::<Y>();
    debug_assert!(y_elems == 2 || y_elems == 4);
    if x.len() < t * w.cols || y.len() < t * w.rows {
        return Err(CudaError::Kernel(cleave_kernels::KernelError::Shape {
            kernel: "gemm",
            what: "activations",
            got: x.len().min(y.len()),
            needed: t * w.cols.max(w.rows),
        }));
    }
    let alpha = 1.0f32;
    let (xp, _x_guard) = x.device_ptr(stream);
    let (wp, _w_guard) = w.data.device_ptr(stream);
    let (yp, _y_guard) = y.device_ptr_mut(stream);
    let dim = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    // SAFETY: column-major view of row-major buffers: C (rows × t, ldc = rows) = Wᵀᵀ… i.e. op(A) = Wᵀ with A the
    // in × out column-major view of W (lda = cols), B the in × t view of x (ldb = cols). Every extent was checked
    // above against the buffers' lengths; the pointers come from live slices on this stream.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_T,
            cublasOperation_t::CUBLAS_OP_N,
            dim(w.rows),
            dim(t),
            dim(w.cols),
            (&alpha) as *const f32 as *const c_void,
            wp as *const c_void,
            cudaDataType_t::CUDA_R_16BF,
            dim(w.cols),
            xp as *const c_void,
            cudaDataType_t::CUDA_R_16BF,
            dim(w.cols),
            (&beta) as *const f32 as *const c_void,
            yp as *mut c_void,
            y_type,
            dim(w.rows),
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}

/// The per-layer callback of a pass that ships KV while it computes.
pub(super) type LayerDone<'a> = &'a mut dyn FnMut(usize, &dyn KvBlockReader);

/// The model on the device, as one pass reads it.
pub(super) struct Model<'a> {
    pub cfg: &'a ModelConfig,
    pub stream: &'a Arc<CudaStream>,
    pub blas: &'a CudaBlas,
    pub kernels: &'a Kernels,
    pub weights: &'a DeviceWeights,
    pub inv_freq: &'a CudaSlice<f32>,
    /// This rank's tensor-parallel group (NCCL on the same stream), when the weights are one rank's shard.
    pub tp: Option<&'a NcclCommunicator>,
    /// Where copies of KV into peers' pools run, beside the compute (passes that export KV).
    pub transfer: Option<&'a Arc<CudaStream>>,
    /// This rank's pipeline stage and the group (NCCL on the same stream) its activations pass through.
    pub pipeline: Option<(&'a NcclCommunicator, &'a PipelineStage)>,
    /// This rank's context-parallel group (NCCL on the same stream), which exchanges each layer's new KV.
    pub context: Option<&'a NcclCommunicator>,
}

/// One batch on the device: its token ids, attention layout and the rows that want logits.
pub(super) struct Batch<'a> {
    pub ids: &'a CudaSlice<u32>,
    /// The batch's blocks, sorted and distinct: what a tensor-parallel group gathers for a KV read.
    pub blocks: &'a [BlockId],
    pub meta: AttnMeta<'a>,
    pub logit_rows: &'a CudaSlice<i32>,
    pub n_logits: usize,
    /// The logits buffer's row where this batch's first logits row goes (a micro-batch after others).
    pub logit_offset: usize,
    /// A context-parallel rank's share of the batch's KV exchange (the batch holds only its own rows; it may
    /// have none).
    pub exchange: Option<&'a super::context::Exchange>,
}

/// The whole forward pass as a sequence of launches on the stream (so a CUDA graph can capture it): embedding,
/// every layer, then the final norm and head for the logit rows into `scratch`'s logits buffer. A pipeline stage
/// after the first receives the activations from the one before instead of embedding, and a stage before the last
/// sends them on instead of computing logits.
pub(super) fn run_pass(
    m: &Model<'_>,
    kv: &mut DeviceKv,
    scratch: &mut Scratch,
    batch: &Batch<'_>,
    mut layer_done: Option<LayerDone<'_>>,
) -> Result<(), CudaError> {
    let (cfg, stream, kernels, weights) = (m.cfg, m.stream, m.kernels, m.weights);
    let t = batch.meta.n_tokens;
    let meta = &batch.meta;
    let dims = AttnDims {
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        block_size: kv.shape().block_size,
    };
    let (hidden, eps) = (cfg.hidden, cfg.rms_eps);
    let on = (m.blas, &**stream);
    // Row-parallel projections under tensor parallelism: rank 0 adds its partial sum to the residual, the others
    // write theirs alone, and the all-reduce of the residual rows leaves residual + every partial on every rank.
    let residual = if m.tp.is_some_and(|c| c.rank() > 0) { 0.0 } else { 1.0 };
    let Scratch {
        buffers: Some(b),
        final_normed: Some(final_normed),
        logits: Some(logits),
        split_partial: Some(split_partial),
        split_counters: Some(split_counters),
        context: staging,
        ..
    } = scratch
    else {
        return Err(CudaError::NoDevice);
    };
    // A context-parallel rank may hold no rows of a batch (decode steps stay on rank 0); it still takes part in
    // every layer's KV exchange.
    let rows = t > 0;
    match m.pipeline {
        Some((comm, stage)) if stage.stage > 0 => comm.recv(&mut b.x.slice_mut(..t * hidden), stage.stage - 1)?,
        _ if rows => kernels.embed_rows(
            stream,
            &weights.embed.data,
            cfg.vocab_size,
            batch.ids,
            t,
            &mut b.x,
            hidden,
        )?,
        _ => {}
    }
    for (layer, w) in weights.layers.iter().enumerate() {
        if rows {
            kernels.rms_norm(stream, &b.x, None, &w.attn_norm, &mut b.normed, t, hidden, eps)?;
            gemm(on, &b.normed, t, &w.qkv, &mut b.qkv, cudaDataType_t::CUDA_R_32F, 0.0)?;
            kernels.rope_write_kv(
                stream,
                &b.qkv,
                w.qkv_bias.as_ref(),
                meta,
                m.inv_freq,
                &mut b.q,
                &mut kv.keys[layer],
                &mut kv.values[layer],
                dims,
            )?;
        }
        if let (Some(comm), Some(plan), Some(staging)) = (m.context, batch.exchange, staging.as_mut()) {
            super::context::exchange_layer(kernels, stream, comm, kv, layer, plan, staging)?;
        }
        if let Some(done) = layer_done.as_mut() {
            match m.tp {
                Some(comm) => {
                    let gathered = kv.gather_layer(stream, comm, layer, batch.blocks)?;
                    done(layer, &gathered.reader(stream));
                }
                None => done(layer, &kv.reader(stream, m.transfer.map(|t| (kernels, t)))),
            }
        }
        if !rows {
            continue;
        }
        kernels.attention(
            stream,
            &b.q,
            &kv.keys[layer],
            &kv.values[layer],
            meta,
            &mut b.attn,
            dims,
            Some(DecodeSplit {
                partial: split_partial,
                counters: split_counters,
            }),
        )?;
        gemm(on, &b.attn, t, &w.o, &mut b.x, cudaDataType_t::CUDA_R_32F, residual)?;
        all_reduce_rows(m.tp, &mut b.x, t * hidden)?;
        kernels.rms_norm(stream, &b.x, None, &w.mlp_norm, &mut b.normed, t, hidden, eps)?;
        match &w.mlp {
            DeviceMlp::Dense(ff) => {
                gemm(
                    on,
                    &b.normed,
                    t,
                    &ff.gate_up,
                    &mut b.gate_up,
                    cudaDataType_t::CUDA_R_16BF,
                    0.0,
                )?;
                kernels.silu_mul(stream, &b.gate_up, &mut b.act, t, cfg.intermediate)?;
                gemm(on, &b.act, t, &ff.down, &mut b.x, cudaDataType_t::CUDA_R_32F, residual)?;
            }
            DeviceMlp::Experts { router, first, local } => {
                let layer = Mixture {
                    router,
                    first: *first,
                    local,
                    top_k: cfg.n_experts_used,
                };
                let bufs = b.moe.as_mut().ok_or(CudaError::Unprepared)?;
                let dense = (&mut b.gate_up, &mut b.act);
                mixture(m, &layer, &b.normed, t, dense, bufs, &mut b.x, residual)?;
            }
        }
        all_reduce_rows(m.tp, &mut b.x, t * hidden)?;
    }
    if let (Some(transfer), true) = (m.transfer, layer_done.is_some()) {
        // Copies into peers read this pass's KV: the next pass must not overwrite it before they are done.
        stream.join(transfer)?;
    }
    if let Some((comm, stage)) = m.pipeline
        && stage.stage + 1 < stage.stages
    {
        return Ok(comm.send(&b.x.slice(..t * hidden), stage.stage + 1)?);
    }
    let n = batch.n_logits;
    if n > 0 {
        kernels.rms_norm(
            stream,
            &b.x,
            Some(batch.logit_rows),
            &weights.norm,
            final_normed,
            n,
            hidden,
            eps,
        )?;
        let first = batch.logit_offset * cfg.vocab_size;
        gemm(
            on,
            final_normed,
            n,
            weights.head(),
            &mut logits.slice_mut(first..),
            cudaDataType_t::CUDA_R_32F,
            0.0,
        )?;
    }
    Ok(())
}

/// A batch's layout on the device (what `Batch` borrows), uploaded for one pass.
pub(super) struct DeviceBatch {
    ids: CudaSlice<u32>,
    pos: CudaSlice<i32>,
    slots: CudaSlice<i32>,
    table_off: CudaSlice<i32>,
    tables: CudaSlice<i32>,
    tiles: CudaSlice<i32>,
    single_rows: CudaSlice<i32>,
    logit_rows: CudaSlice<i32>,
    blocks: Vec<BlockId>,
    n_tokens: usize,
    n_tiles: usize,
    n_single_rows: usize,
    pub n_logits: usize,
}

impl DeviceBatch {
    /// Uploads the layout of `chunks` for a model of `cfg`'s shape over `block_size`-token blocks (a few small
    /// host→device copies; a batch without tokens uploads padding alone).
    pub fn upload(
        stream: &Arc<CudaStream>,
        cfg: &ModelConfig,
        block_size: usize,
        chunks: &[SeqChunk<'_>],
    ) -> Result<Self, CudaError> {
        let tiled = cfg.head_dim <= PREFILL_TILE_MAX_HEAD_DIM && cfg.head_dim.is_multiple_of(8);
        let l = layout(chunks, block_size, tiled.then(|| prefill_tile_rows(cfg.head_dim)));
        let up = |v: &[i32]| stream.clone_htod(v).map_err(CudaError::from);
        let mut rows = l.logit_rows.clone();
        if rows.is_empty() {
            rows.push(0);
        }
        let mut blocks: Vec<BlockId> = chunks.iter().flat_map(|c| c.blocks.iter().copied()).collect();
        blocks.sort_unstable();
        blocks.dedup();
        Ok(DeviceBatch {
            ids: stream.clone_htod(&l.ids)?,
            pos: up(&l.pos)?,
            slots: up(&l.slots)?,
            table_off: up(&l.table_off)?,
            tables: up(&l.tables)?,
            tiles: up(&l.tiles)?,
            single_rows: up(&l.single_rows)?,
            logit_rows: up(&rows)?,
            blocks,
            n_tokens: l.n_tokens,
            n_tiles: l.n_tiles,
            n_single_rows: l.n_single_rows,
            n_logits: l.logit_rows.len(),
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// The batch as a pass reads it, its logits going to rows `logit_offset..` of the logits buffer.
    pub fn batch(&self, logit_offset: usize) -> Batch<'_> {
        Batch {
            ids: &self.ids,
            blocks: &self.blocks,
            meta: AttnMeta {
                pos: &self.pos,
                slots: &self.slots,
                block_tables: &self.tables,
                table_off: &self.table_off,
                n_tokens: self.n_tokens,
                tiles: &self.tiles,
                n_tiles: self.n_tiles,
                single_rows: &self.single_rows,
                n_single_rows: self.n_single_rows,
            },
            logit_rows: &self.logit_rows,
            n_logits: self.n_logits,
            logit_offset,
            exchange: None,
        }
    }
}

impl CudaBackend {
    /// A forward pass with the batch layout uploaded for this step (any batch shape, any callback).
    pub(super) fn try_forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        layer_done: Option<LayerDone<'_>>,
    ) -> Result<Vec<f32>, CudaError> {
        if self.stage.is_some() {
            return self.forward_stage(chunks);
        }
        if self.context.is_some() {
            return self.forward_context(chunks, layer_done);
        }
        if chunks.iter().all(|c| c.tokens.is_empty()) {
            return Ok(Vec::new());
        }
        let stream = self.stream.clone();
        stream.context().bind_to_thread()?;
        let uploaded = DeviceBatch::upload(&stream, &self.config, self.kv.shape().block_size, chunks)?;
        let batch = uploaded.batch(0);
        self.scratch
            .ensure(&stream, &self.config, &self.kernels, uploaded.n_tokens, batch.n_logits)?;
        let (vocab, group_rank) = (self.config.vocab_size, self.group.as_ref().map(|g| g.0.rank()));
        let (model, kv, scratch) = self.pass_parts(true);
        run_pass(&model, kv, scratch, &batch, layer_done)?;
        read_logits(&stream, scratch, batch.n_logits * vocab, group_rank)
    }
}

/// Sums the first `n` values of `x` over the tensor-parallel group, on the stream (nothing when whole).
fn all_reduce_rows(tp: Option<&NcclCommunicator>, x: &mut CudaSlice<f32>, n: usize) -> Result<(), CudaError> {
    match tp {
        Some(comm) => Ok(comm.all_reduce_sum(&mut x.slice_mut(..n))?),
        None => Ok(()),
    }
}

/// How long a pass of a parallel group's rank may run before the group counts as failed: a member that stopped
/// mid-pass leaves the others' collectives waiting for ever. (A lone GPU waits as long as its pass takes.)
pub(super) const GROUP_PASS_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits for the work queued on `stream` by polling (yielding between queries), never in a blocking driver call:
/// while one thread blocks in the driver, other threads' event queries wait for it — the threads reporting KV copies
/// landed (CUDA IPC, NCCL links) would see them only when this wait ends. Rank `group_rank` of a group gives up
/// after [`GROUP_PASS_LIMIT`].
fn wait_polling(stream: &CudaStream, group_rank: Option<usize>) -> Result<(), CudaError> {
    let done = stream.record_event(None)?;
    let started = std::time::Instant::now();
    while !done.try_is_complete()? {
        if let Some(rank) = group_rank
            && started.elapsed() > GROUP_PASS_LIMIT
        {
            return Err(CudaError::Group(cleave_comm::CommError::Aborted {
                rank,
                cause: format!(
                    "a forward pass did not finish in {} s (a member of the group stopped mid-pass)",
                    GROUP_PASS_LIMIT.as_secs()
                ),
            }));
        }
        std::thread::yield_now();
    }
    Ok(())
}

/// Copies the first `n` logits back to the host once the pass is done (waited for by polling; bounded on rank
/// `group_rank` of a group).
pub(super) fn read_logits(
    stream: &Arc<CudaStream>,
    scratch: &Scratch,
    n: usize,
    group_rank: Option<usize>,
) -> Result<Vec<f32>, CudaError> {
    wait_polling(stream, group_rank)?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let logits = scratch.logits.as_ref().ok_or(CudaError::NoDevice)?;
    Ok(stream.clone_dtoh(&logits.slice(..n))?)
}
