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

use super::weights::DeviceMatrix;
use super::{CudaBackend, CudaError};
use crate::backend::KvBlockReader;
use crate::config::ModelConfig;
use crate::model::SeqChunk;
use cleave_kernels::{AttnDims, AttnMeta, PREFILL_TILE_MAX_HEAD_DIM, PREFILL_TILE_ROWS};

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
}

#[derive(Debug, Default)]
pub(super) struct Scratch {
    buffers: Option<Buffers>,
    logit_rows: usize,
    final_normed: Option<CudaSlice<bf16>>,
    logits: Option<CudaSlice<f32>>,
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(stream: &Arc<CudaStream>, n: usize) -> Result<CudaSlice<T>, CudaError> {
    stream.alloc_zeros::<T>(n.max(1)).map_err(CudaError::from)
}

impl Scratch {
    fn buffers(&mut self, stream: &Arc<CudaStream>, cfg: &ModelConfig, t: usize) -> Result<&mut Buffers, CudaError> {
        if self.buffers.as_ref().is_none_or(|b| b.tokens < t) {
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
            });
        }
        self.buffers.as_mut().ok_or(CudaError::NoDevice)
    }

    fn ensure_logits(&mut self, stream: &Arc<CudaStream>, cfg: &ModelConfig, n: usize) -> Result<(), CudaError> {
        if self.logit_rows < n || self.logits.is_none() {
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

fn layout(chunks: &[SeqChunk<'_>], block_size: usize, tiled: bool) -> Layout {
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
        if tiled && len >= TILED_MIN_ROWS {
            for first in (0..len).step_by(PREFILL_TILE_ROWS) {
                let rows = PREFILL_TILE_ROWS.min(len - first);
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
    for v in [&mut l.tables, &mut l.tiles, &mut l.single_rows] {
        if v.is_empty() {
            v.push(0);
        }
    }
    l
}

/// `y[t, out] = x[t, in] · wᵀ + beta · y[t, out]` with bf16 inputs and f32 accumulation; `y` is bf16 or f32.
fn gemm<Y: DeviceRepr>(
    (blas, stream): (&CudaBlas, &CudaStream),
    x: &CudaSlice<bf16>,
    t: usize,
    w: &DeviceMatrix,
    y: &mut CudaSlice<Y>,
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

impl CudaBackend {
    pub(super) fn try_forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        layer_done: &mut dyn FnMut(usize, &dyn KvBlockReader),
    ) -> Result<Vec<f32>, CudaError> {
        let CudaBackend {
            config: cfg,
            stream,
            blas,
            kernels,
            weights,
            kv,
            inv_freq,
            scratch,
            ..
        } = self;
        let block_size = kv.shape().block_size;
        let tiled = cfg.head_dim <= PREFILL_TILE_MAX_HEAD_DIM && cfg.head_dim % 8 == 0;
        let l = layout(chunks, block_size, tiled);
        let t = l.ids.len();
        if t == 0 {
            return Ok(Vec::new());
        }
        stream.context().bind_to_thread()?;
        let ids = stream.clone_htod(&l.ids)?;
        let pos = stream.clone_htod(&l.pos)?;
        let slots = stream.clone_htod(&l.slots)?;
        let table_off = stream.clone_htod(&l.table_off)?;
        let tables = stream.clone_htod(&l.tables)?;
        let tiles = stream.clone_htod(&l.tiles)?;
        let single_rows = stream.clone_htod(&l.single_rows)?;
        let meta = AttnMeta {
            pos: &pos,
            slots: &slots,
            block_tables: &tables,
            table_off: &table_off,
            n_tokens: t,
            tiles: &tiles,
            n_tiles: l.n_tiles,
            single_rows: &single_rows,
            n_single_rows: l.n_single_rows,
        };
        let dims = AttnDims {
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            block_size,
        };
        let (hidden, eps) = (cfg.hidden, cfg.rms_eps);
        let on = (&*blas, &**stream);
        let b = scratch.buffers(stream, cfg, t)?;
        kernels.embed_rows(stream, &weights.embed.data, cfg.vocab_size, &ids, t, &mut b.x, hidden)?;
        for (layer, w) in weights.layers.iter().enumerate() {
            kernels.rms_norm(stream, &b.x, None, &w.attn_norm, &mut b.normed, t, hidden, eps)?;
            gemm(on, &b.normed, t, &w.qkv, &mut b.qkv, cudaDataType_t::CUDA_R_32F, 0.0)?;
            kernels.rope_write_kv(
                stream,
                &b.qkv,
                w.qkv_bias.as_ref(),
                &meta,
                inv_freq,
                &mut b.q,
                &mut kv.keys[layer],
                &mut kv.values[layer],
                dims,
            )?;
            layer_done(layer, &kv.reader(stream));
            kernels.attention(
                stream,
                &b.q,
                &kv.keys[layer],
                &kv.values[layer],
                &meta,
                &mut b.attn,
                dims,
            )?;
            gemm(on, &b.attn, t, &w.o, &mut b.x, cudaDataType_t::CUDA_R_32F, 1.0)?;
            kernels.rms_norm(stream, &b.x, None, &w.mlp_norm, &mut b.normed, t, hidden, eps)?;
            gemm(
                on,
                &b.normed,
                t,
                &w.gate_up,
                &mut b.gate_up,
                cudaDataType_t::CUDA_R_16BF,
                0.0,
            )?;
            kernels.silu_mul(stream, &b.gate_up, &mut b.act, t, cfg.intermediate)?;
            gemm(on, &b.act, t, &w.down, &mut b.x, cudaDataType_t::CUDA_R_32F, 1.0)?;
        }
        let n = l.logit_rows.len();
        if n == 0 {
            stream.synchronize()?;
            return Ok(Vec::new());
        }
        let rows = stream.clone_htod(&l.logit_rows)?;
        scratch.ensure_logits(stream, cfg, n)?;
        let Scratch {
            buffers: Some(b),
            final_normed: Some(final_normed),
            logits: Some(logits),
            ..
        } = scratch
        else {
            return Err(CudaError::NoDevice);
        };
        kernels.rms_norm(stream, &b.x, Some(&rows), &weights.norm, final_normed, n, hidden, eps)?;
        gemm(
            on,
            final_normed,
            n,
            weights.head(),
            logits,
            cudaDataType_t::CUDA_R_32F,
            0.0,
        )?;
        Ok(stream.clone_dtoh(&logits.slice(..n * cfg.vocab_size))?)
    }
}
