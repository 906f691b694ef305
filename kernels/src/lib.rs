//! cleave's CUDA kernels: what cuBLAS does not do for the Llama forward pass — embedding gather, RMSNorm, RoPE with
//! the paged KV-cache write, paged attention (tensor-core flash attention for prefill tiles, one query row per block
//! for decode), SwiGLU, and random weights for synthetic models. The sources live in `cuda/`; [`Kernels::load`]
//! compiles them with NVRTC at first use (cached on disk, see `compile.rs`) and resolves every function once per
//! device. The attention launchers are in `attention.rs`.
//!
//! Every launcher takes the device buffers as typed cudarc slices and checks the sizes it relies on before the
//! launch, so a shape bug becomes an error instead of an out-of-bounds access; each `unsafe` launch says why the
//! kernel stays inside its buffers. bf16 is `half::bf16` on the host and its raw 16 bits on the device.
//!
//! Use [`cuda_available`] before touching anything else: cudarc panics when the driver library is missing.

#![allow(unsafe_code)] // kernel launches; each one carries a SAFETY note
#![allow(clippy::too_many_arguments)] // a launcher takes every buffer and size its kernel reads

mod attention;
mod compile;
mod moe;

use std::path::Path;
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use half::bf16;

pub use attention::{DecodeSplit, prefill_tile_rows};
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
    flash_prefill_hd64: CudaFunction,
    flash_prefill_hd128: CudaFunction,
    decode_attention_hd64: CudaFunction,
    decode_attention_hd128: CudaFunction,
    copy_kv_blocks: CudaFunction,
    gather_rows_bf16: CudaFunction,
    scatter_add_rows: CudaFunction,
    /// Streaming multiprocessors of the device (sizes the split of decode attention).
    sm_count: usize,
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
    /// Query tiles of prefill chunks: `(first row, rows ≤ prefill_tile_rows(head_dim), table offset, first
    /// position)` each, `[4 · n_tiles]`.
    pub tiles: &'a CudaSlice<i32>,
    pub n_tiles: usize,
    /// Rows served one token per block by `paged_attention` (decode steps, short chunks), `[n_single_rows]`; all
    /// rows when `n_tiles` is 0.
    pub single_rows: &'a CudaSlice<i32>,
    pub n_single_rows: usize,
}

/// Longest head the prefill kernels handle (larger heads go through `paged_attention` row by row).
pub const PREFILL_TILE_MAX_HEAD_DIM: usize = 128;
/// Query rows per tile of the CUDA-core `prefill_attention` (see [`prefill_tile_rows`] for the rows a model's
/// tiles hold).
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
/// Block pairs one `copy_kv_blocks` launch carries (`COPY_PAIRS` in the source).
pub const COPY_PAIRS: usize = 256;

/// The launch-parameter layout of `BlockPairs` in `elementwise.cu`.
#[repr(C)]
#[derive(Clone, Copy)]
struct BlockPairs {
    n: i32,
    src: [i32; COPY_PAIRS],
    dst: [i32; COPY_PAIRS],
}

// SAFETY: plain old data with the C layout of the kernel's `BlockPairs`.
unsafe impl cudarc::driver::DeviceRepr for BlockPairs {}
/// Threads of an `rms_norm` block (`NORM_THREADS` in the source).
const NORM_THREADS: u32 = 512;
/// A null device pointer for optional kernel arguments.
pub(crate) const NULL: u64 = 0;

pub(crate) fn check(kernel: &'static str, what: &'static str, got: usize, needed: usize) -> Result<(), KernelError> {
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

pub(crate) fn int(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

impl Kernels {
    /// Compiles or loads the kernels for `ctx`'s device; `cache_dir` keeps the compiled PTX between runs.
    pub fn load(ctx: &Arc<CudaContext>, cache_dir: Option<&Path>) -> Result<Kernels, KernelError> {
        let (module, info) = compile::load_module(ctx, cache_dir)?;
        let f = |name: &str| module.load_function(name);
        let sm_count = ctx.attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        Ok(Kernels {
            embed_rows: f("embed_rows")?,
            rms_norm: f("rms_norm")?,
            silu_mul: f("silu_mul")?,
            fill_uniform_bf16: f("fill_uniform_bf16")?,
            rope_write_kv: f("rope_write_kv")?,
            paged_attention: f("paged_attention")?,
            prefill_attention: f("prefill_attention")?,
            flash_prefill_hd64: f("flash_prefill_hd64")?,
            flash_prefill_hd128: f("flash_prefill_hd128")?,
            decode_attention_hd64: f("decode_attention_hd64")?,
            decode_attention_hd128: f("decode_attention_hd128")?,
            copy_kv_blocks: f("copy_kv_blocks")?,
            gather_rows_bf16: f("gather_rows_bf16")?,
            scatter_add_rows: f("scatter_add_rows")?,
            sm_count: usize::try_from(sm_count).unwrap_or(1).max(1),
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
        let cfg = LaunchConfig {
            block_dim: (NORM_THREADS, 1, 1),
            ..rows(n)
        };
        // SAFETY: block r reads row rows[r] (or r) of x — the caller passes row indices inside x — and writes row r
        // of out; w has dim elements; the kernel is built for exactly NORM_THREADS threads.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Copies blocks of one layer's keys and values into another pool of the same block layout — on this device or,
    /// through CUDA IPC, another one: `(src, dst)` pairs, block `src` of `src_k`/`src_v` over block `dst` of the
    /// pool at `dst_k`/`dst_v`, `block_elems` elements a block. One launch per [`COPY_PAIRS`] pairs; nothing is
    /// uploaded, so the copy queues behind the stream's work without stalling the host.
    ///
    /// # Safety
    /// `dst_k` and `dst_v` must each point to a device allocation, readable from this device, of at least
    /// `dst_blocks · block_elems` elements that nothing else writes meanwhile.
    pub unsafe fn copy_kv_blocks(
        &self,
        stream: &CudaStream,
        src_k: &CudaSlice<bf16>,
        src_v: &CudaSlice<bf16>,
        dst_k: u64,
        dst_v: u64,
        dst_blocks: usize,
        block_elems: usize,
        pairs: &[(u32, u32)],
    ) -> Result<(), KernelError> {
        const WORD: usize = 16 / std::mem::size_of::<bf16>();
        if !block_elems.is_multiple_of(WORD) {
            return Err(KernelError::Shape {
                kernel: "copy_kv_blocks",
                what: "a block (elements, not a multiple of 8)",
                got: block_elems,
                needed: block_elems.next_multiple_of(WORD),
            });
        }
        for &(src, dst) in pairs {
            let needed = (src as usize + 1) * block_elems;
            check("copy_kv_blocks", "src_k", src_k.len(), needed)?;
            check("copy_kv_blocks", "src_v", src_v.len(), needed)?;
            check(
                "copy_kv_blocks",
                "the destination pool (blocks)",
                dst_blocks,
                dst as usize + 1,
            )?;
        }
        let words = (block_elems / WORD) as i64;
        for chunk in pairs.chunks(COPY_PAIRS) {
            let mut batch = BlockPairs {
                n: int(chunk.len()),
                src: [0; COPY_PAIRS],
                dst: [0; COPY_PAIRS],
            };
            for (i, &(src, dst)) in chunk.iter().enumerate() {
                batch.src[i] = int(src as usize);
                batch.dst[i] = int(dst as usize);
            }
            let mut launch = stream.launch_builder(&self.copy_kv_blocks);
            launch
                .arg(src_k)
                .arg(src_v)
                .arg(&dst_k)
                .arg(&dst_v)
                .arg(&words)
                .arg(&batch);
            let cfg = LaunchConfig {
                grid_dim: (chunk.len() as u32, 2, 1),
                block_dim: (THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: block (i, kv) reads block src[i] of src_k or src_v and writes block dst[i] of the destination
            // pool, `words` 16-byte words each; every source block was checked inside its slice, every destination
            // block inside `dst_blocks`, which the caller vouches for; the pairs struct matches `BlockPairs`.
            unsafe { launch.launch(cfg) }?;
        }
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
}
