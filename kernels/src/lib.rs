//! cleave's CUDA kernels: what cuBLAS does not do for the Llama forward pass — embedding gather, RMSNorm, RoPE with
//! the paged KV-cache write, paged and tiled prefill attention, SwiGLU, and random weights for synthetic models. The sources live in `cuda/`; [`Kernels::load`] compiles them with NVRTC at first use (cached on disk,
//! see `compile.rs`) and resolves every function once per device.
//!
//! Every launcher takes the device buffers as typed cudarc slices and checks the sizes it relies on before the
//! launch, so a shape bug becomes an error instead of an out-of-bounds access; each `unsafe` launch says why the
//! kernel stays inside its buffers. bf16 is `half::bf16` on the host and its raw 16 bits on the device.
//!
//! Use [`cuda_available`] before touching anything else: cudarc panics when the driver library is missing.

#![allow(unsafe_code)] // kernel launches; each one carries a SAFETY note
#![allow(clippy::too_many_arguments)] // a launcher takes every buffer and size its kernel reads

mod compile;

use std::path::Path;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use half::bf16;

pub use compile::{ModuleInfo, arch_for, compile_ptx};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("CUDA driver: {0}")]
    Driver(#[from] DriverError),
    #[error("NVRTC could not compile the kernels for {arch}:\n{log}")]
    Compile { arch: String, log: String },
    #[error("no kernels are built for this device's architecture ({arch})")]
    UnsupportedDevice { arch: String },
    #[error("{kernel}: {what} holds {got} elements, the launch needs {needed}")]
    Shape {
        kernel: &'static str,
        what: &'static str,
        got: usize,
        needed: usize,
    },
}

/// Whether a CUDA driver and at least one device are present. Never panics.
pub fn cuda_available() -> bool {
    // SAFETY: only probes whether the driver library can be loaded; loads nothing else.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    present && CudaContext::device_count().is_ok_and(|n| n > 0)
}

/// The kernels, resolved once on one device.
#[derive(Debug)]
pub struct Kernels {
    embed_rows: CudaFunction,
    rms_norm: CudaFunction,
    silu_mul: CudaFunction,
    fill_uniform_bf16: CudaFunction,
    rope_write_kv: CudaFunction,
    paged_attention: CudaFunction,
    prefill_attention: CudaFunction,
    pub info: ModuleInfo,
}

/// Where `rope_write_kv` and `paged_attention` find the batch's layout on the device.
#[derive(Debug, Clone, Copy)]
pub struct AttnMeta<'a> {
    /// Absolute position of each token row, `[T]`.
    pub pos: &'a CudaSlice<i32>,
    /// Cache slot of each token row (`block · block_size + offset`), `[T]`.
    pub slots: &'a CudaSlice<i32>,
    /// Every sequence's block table, back to back.
    pub block_tables: &'a CudaSlice<i32>,
    /// Where each token row's sequence table starts in `block_tables`, `[T]`.
    pub table_off: &'a CudaSlice<i32>,
    pub n_tokens: usize,
    /// Query tiles of prefill chunks for `prefill_attention`: `(first row, rows ≤ 32, table offset, first position)`
    /// each, `[4 · n_tiles]`.
    pub tiles: &'a CudaSlice<i32>,
    pub n_tiles: usize,
    /// Rows served one token per block by `paged_attention` (decode steps, short chunks), `[n_single_rows]`; all
    /// rows when `n_tiles` is 0.
    pub single_rows: &'a CudaSlice<i32>,
    pub n_single_rows: usize,
}

/// Longest head `prefill_attention` handles (larger heads go through `paged_attention` row by row).
pub const PREFILL_TILE_MAX_HEAD_DIM: usize = 128;
/// Query rows per `prefill_attention` tile.
pub const PREFILL_TILE_ROWS: usize = 32;

/// Head counts and sizes, and the pool's block size.
#[derive(Debug, Clone, Copy)]
pub struct AttnDims {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
}

const THREADS: u32 = 256;
/// A null device pointer for optional kernel arguments.
const NULL: u64 = 0;

fn check(kernel: &'static str, what: &'static str, got: usize, needed: usize) -> Result<(), KernelError> {
    if got < needed {
        return Err(KernelError::Shape {
            kernel,
            what,
            got,
            needed,
        });
    }
    Ok(())
}

fn rows(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn grid_stride(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl Kernels {
    /// Compiles or loads the kernels for `ctx`'s device; `cache_dir` keeps the compiled PTX between runs.
    pub fn load(ctx: &Arc<CudaContext>, cache_dir: Option<&Path>) -> Result<Kernels, KernelError> {
        let (module, info) = compile::load_module(ctx, cache_dir)?;
        let f = |name: &str| module.load_function(name);
        Ok(Kernels {
            embed_rows: f("embed_rows")?,
            rms_norm: f("rms_norm")?,
            silu_mul: f("silu_mul")?,
            fill_uniform_bf16: f("fill_uniform_bf16")?,
            rope_write_kv: f("rope_write_kv")?,
            paged_attention: f("paged_attention")?,
            prefill_attention: f("prefill_attention")?,
            info,
        })
    }

    /// `x[r] = table[ids[r]]` for `ids.len()` rows of `hidden` (bf16 → f32).
    pub fn embed_rows(
        &self,
        stream: &CudaStream,
        table: &CudaSlice<bf16>,
        vocab: usize,
        ids: &CudaSlice<u32>,
        n: usize,
        x: &mut CudaSlice<f32>,
        hidden: usize,
    ) -> Result<(), KernelError> {
        check("embed_rows", "table", table.len(), vocab * hidden)?;
        check("embed_rows", "ids", ids.len(), n)?;
        check("embed_rows", "x", x.len(), n * hidden)?;
        let hidden_i = int(hidden);
        let mut launch = stream.launch_builder(&self.embed_rows);
        launch.arg(table).arg(ids).arg(x).arg(&hidden_i);
        // SAFETY: one block per row r < n reads table row ids[r] (the caller validated ids < vocab on the host) and
        // writes x row r; all sizes were checked above.
        unsafe { launch.launch(rows(n)) }?;
        Ok(())
    }

    /// `out[r] = bf16(w ⊙ norm(x[src]))` for `n` rows, `src = rows[r]` when given, else `r`.
    pub fn rms_norm(
        &self,
        stream: &CudaStream,
        x: &CudaSlice<f32>,
        rows_of_x: Option<&CudaSlice<i32>>,
        w: &CudaSlice<f32>,
        out: &mut CudaSlice<bf16>,
        n: usize,
        dim: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        check("rms_norm", "w", w.len(), dim)?;
        check("rms_norm", "out", out.len(), n * dim)?;
        if rows_of_x.is_none() {
            check("rms_norm", "x", x.len(), n * dim)?;
        }
        let dim_i = int(dim);
        let mut launch = stream.launch_builder(&self.rms_norm);
        launch.arg(x);
        match rows_of_x {
            Some(r) => {
                check("rms_norm", "rows", r.len(), n)?;
                launch.arg(r)
            }
            None => launch.arg(&NULL),
        };
        launch.arg(w).arg(out).arg(&dim_i).arg(&eps);
        // SAFETY: block r reads row rows[r] (or r) of x — the caller passes row indices inside x — and writes row r
        // of out; w has dim elements.
        unsafe { launch.launch(rows(n)) }?;
        Ok(())
    }

    /// SwiGLU over `n` rows of a fused `[gate | up]` buffer of width `2 · inter`.
    pub fn silu_mul(
        &self,
        stream: &CudaStream,
        gate_up: &CudaSlice<bf16>,
        out: &mut CudaSlice<bf16>,
        n: usize,
        inter: usize,
    ) -> Result<(), KernelError> {
        check("silu_mul", "gate_up", gate_up.len(), n * 2 * inter)?;
        check("silu_mul", "out", out.len(), n * inter)?;
        let inter_i = int(inter);
        let mut launch = stream.launch_builder(&self.silu_mul);
        launch.arg(gate_up).arg(out).arg(&inter_i);
        let cfg = LaunchConfig {
            grid_dim: (n as u32, inter.div_ceil(THREADS as usize).clamp(1, 64) as u32, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: block (r, c) reads row r of gate_up (2·inter) and writes row r of out (inter), columns strided
        // inside 0..inter; sizes checked.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Fills `out` with uniform values in `[-scale, scale)` derived from `seed` (synthetic weights).
    pub fn fill_uniform(
        &self,
        stream: &CudaStream,
        out: &mut CudaSlice<bf16>,
        seed: u64,
        scale: f32,
    ) -> Result<(), KernelError> {
        let len = out.len();
        let n = len as u64;
        let mut launch = stream.launch_builder(&self.fill_uniform_bf16);
        launch.arg(out).arg(&n).arg(&seed).arg(&scale);
        // SAFETY: grid-stride loop over exactly out.len() elements.
        unsafe { launch.launch(grid_stride(len)) }?;
        Ok(())
    }

    /// RoPE on q and k of each token row of `qkv` (f32, `[T, (nh + 2·nkv)·hd]`, plus `bias` when the model has
    /// one), q into `q_out`, k and v into this layer's cache at each row's slot.
    pub fn rope_write_kv(
        &self,
        stream: &CudaStream,
        qkv: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
        meta: &AttnMeta<'_>,
        inv_freq: &CudaSlice<f32>,
        q_out: &mut CudaSlice<f32>,
        k_cache: &mut CudaSlice<bf16>,
        v_cache: &mut CudaSlice<bf16>,
        dims: AttnDims,
    ) -> Result<(), KernelError> {
        let AttnDims {
            n_heads,
            n_kv_heads,
            head_dim,
            block_size,
        } = dims;
        let t = meta.n_tokens;
        let width = (n_heads + 2 * n_kv_heads) * head_dim;
        check("rope_write_kv", "qkv", qkv.len(), t * width)?;
        check("rope_write_kv", "q_out", q_out.len(), t * n_heads * head_dim)?;
        check("rope_write_kv", "pos", meta.pos.len(), t)?;
        check("rope_write_kv", "slots", meta.slots.len(), t)?;
        check("rope_write_kv", "inv_freq", inv_freq.len(), head_dim / 2)?;
        if let Some(b) = bias {
            check("rope_write_kv", "bias", b.len(), width)?;
        }
        let (nh, nkv, hd, bs) = (int(n_heads), int(n_kv_heads), int(head_dim), int(block_size));
        let mut launch = stream.launch_builder(&self.rope_write_kv);
        launch.arg(qkv);
        match bias {
            Some(b) => launch.arg(b),
            None => launch.arg(&NULL),
        };
        launch
            .arg(meta.pos)
            .arg(meta.slots)
            .arg(inv_freq)
            .arg(q_out)
            .arg(k_cache)
            .arg(v_cache)
            .arg(&nh)
            .arg(&nkv)
            .arg(&hd)
            .arg(&bs);
        // SAFETY: block t reads qkv row t and writes q_out row t (checked); the cache write lands at slots[t], which
        // the scheduler allocated inside the pool for this sequence (the engine builds slots from its block table).
        unsafe { launch.launch(rows(t)) }?;
        Ok(())
    }

    /// Causal paged attention: `out` (bf16, `[T, nh·hd]`) from `q` and this layer's cache, prefill chunks by tiles
    /// of query rows (`meta.tiles`), the other rows one per block (`meta.single_rows`, or every row without tiles).
    pub fn attention(
        &self,
        stream: &CudaStream,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<bf16>,
        v_cache: &CudaSlice<bf16>,
        meta: &AttnMeta<'_>,
        out: &mut CudaSlice<bf16>,
        dims: AttnDims,
    ) -> Result<(), KernelError> {
        let AttnDims {
            n_heads,
            n_kv_heads,
            head_dim,
            block_size,
        } = dims;
        let t = meta.n_tokens;
        check("attention", "q", q.len(), t * n_heads * head_dim)?;
        check("attention", "out", out.len(), t * n_heads * head_dim)?;
        check("attention", "table_off", meta.table_off.len(), t)?;
        check("attention", "tiles", meta.tiles.len(), 4 * meta.n_tiles)?;
        check("attention", "single_rows", meta.single_rows.len(), meta.n_single_rows)?;
        if head_dim == 0 || head_dim > 256 || head_dim % 2 != 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(KernelError::Shape {
                kernel: "attention",
                what: "head_dim (even, at most 256, with query heads a multiple of KV heads)",
                got: head_dim,
                needed: 256,
            });
        }
        if meta.n_tiles > 0 && (head_dim > PREFILL_TILE_MAX_HEAD_DIM || head_dim % 8 != 0) {
            return Err(KernelError::Shape {
                kernel: "prefill_attention",
                what: "head_dim (a multiple of 8, at most 128)",
                got: head_dim,
                needed: PREFILL_TILE_MAX_HEAD_DIM,
            });
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (nh, nkv, hd, bs) = (int(n_heads), int(n_kv_heads), int(head_dim), int(block_size));
        if meta.n_tiles > 0 {
            let mut launch = stream.launch_builder(&self.prefill_attention);
            launch
                .arg(q)
                .arg(k_cache)
                .arg(v_cache)
                .arg(meta.block_tables)
                .arg(meta.tiles)
                .arg(&mut *out)
                .arg(&nh)
                .arg(&nkv)
                .arg(&hd)
                .arg(&bs)
                .arg(&scale);
            let cfg = LaunchConfig {
                grid_dim: (meta.n_tiles as u32, n_heads as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: tile b covers rows tiles[4b]..+tiles[4b+1] (≤ 32, inside q and out by construction on the
            // host) of one sequence, reading keys up to its last row's position through that sequence's block
            // table, which covers it; head_dim ≤ 128 fits the kernel's shared tiles.
            unsafe { launch.launch(cfg) }?;
        }
        let singles = if meta.n_tiles > 0 { meta.n_single_rows } else { t };
        if singles > 0 {
            let mut launch = stream.launch_builder(&self.paged_attention);
            launch
                .arg(q)
                .arg(k_cache)
                .arg(v_cache)
                .arg(meta.block_tables)
                .arg(meta.table_off)
                .arg(meta.pos);
            if meta.n_tiles > 0 {
                launch.arg(meta.single_rows);
            } else {
                launch.arg(&NULL);
            }
            launch.arg(&mut *out).arg(&nh).arg(&nkv).arg(&hd).arg(&bs).arg(&scale);
            let cfg = LaunchConfig {
                grid_dim: (singles as u32, n_heads as u32, 1),
                block_dim: (512, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: block (x, h) serves row single_rows[x] (or x), inside q and out (checked); it reads keys
            // 0..=pos[row] through the row's block table, which the scheduler allocated to cover pos[row].
            unsafe { launch.launch(cfg) }?;
        }
        Ok(())
    }
}
