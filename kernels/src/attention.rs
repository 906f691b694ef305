//! The attention launchers: RoPE with the paged KV-cache write, and causal paged attention — prefill chunks by tiles
//! of query rows (tensor-core flash attention for 64- and 128-dim heads, the CUDA-core tiled kernel for other
//! shapes), single rows (decode steps) one query head per block.
//!
//! Invariant: the tile records the host builds hold at most [`prefill_tile_rows`] rows for the model's head size;
//! the kernels cannot check that, so the host must use that function. Split decode attention leaves its counters at
//! zero after every launch. Cost: one launch for RoPE, one or two for attention per layer.

use cudarc::driver::{CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::{AttnDims, AttnMeta, KernelError, Kernels, NULL, PREFILL_TILE_MAX_HEAD_DIM, PREFILL_TILE_ROWS, check, int};

/// Threads of a `rope_write_kv` block (one head of one row).
const ROPE_THREADS: u32 = 64;
/// Threads of a flash-attention block: four warps of 16 query rows each.
const FLASH_THREADS: u32 = 128;
/// Query rows per flash-attention tile.
const FLASH_TILE_ROWS: usize = 64;

/// Query rows per prefill tile for a model with `head_dim`-sized heads: 64 where the tensor-core kernel serves the
/// head size (64, 128), else the CUDA-core kernel's 32.
pub fn prefill_tile_rows(head_dim: usize) -> usize {
    if matches!(head_dim, 64 | 128) {
        FLASH_TILE_ROWS
    } else {
        PREFILL_TILE_ROWS
    }
}

/// Scratch of split decode attention: partial results, and per-(row, head) counters that start at zero (the
/// kernel leaves them at zero).
#[derive(Debug)]
pub struct DecodeSplit<'a> {
    pub partial: &'a mut CudaSlice<f32>,
    pub counters: &'a mut CudaSlice<u32>,
}

/// Most key ranges one decode row is split into.
const MAX_DECODE_SPLITS: usize = 16;
/// Blocks per SM that splitting aims for (and at most launches).
const SPLIT_BLOCKS_PER_SM: usize = 2;
/// Warps of a `decode_attention` block (`DEC_WARPS` in the source); the query heads a block serves divide it.
const DEC_WARPS: usize = 16;

impl Kernels {
    /// Lengths of the `partial` and `counters` buffers of [`DecodeSplit`] for `head_dim`-sized heads (a block
    /// publishes a partial result for each query head it serves, at most `DEC_WARPS`).
    pub fn decode_split_lens(&self, head_dim: usize) -> (usize, usize) {
        let blocks = SPLIT_BLOCKS_PER_SM * self.sm_count;
        (blocks * DEC_WARPS * (head_dim + 2), blocks)
    }

    fn flash_for(&self, head_dim: usize) -> Option<&CudaFunction> {
        match head_dim {
            64 => Some(&self.flash_prefill_hd64),
            128 => Some(&self.flash_prefill_hd128),
            _ => None,
        }
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
        let cfg = LaunchConfig {
            grid_dim: (t as u32, (n_heads + 2 * n_kv_heads) as u32, 1),
            block_dim: (ROPE_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: block (t, y) reads qkv row t and writes head y of q_out row t (checked); the cache write lands at
        // slots[t], which the scheduler allocated inside the pool for this sequence (the engine builds slots from its
        // block table).
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// Causal paged attention: `out` (bf16, `[T, nh·hd]`) from `q` and this layer's cache, prefill chunks by tiles
    /// of query rows (`meta.tiles`), the other rows one per block (`meta.single_rows`, or every row without tiles).
    ///
    /// With `split` (buffers of [`Kernels::decode_split_lens`]), a batch of few single rows spreads each row's keys
    /// over several blocks (flash-decoding), so a long context does not leave most of the GPU idle.
    pub fn attention(
        &self,
        stream: &CudaStream,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<bf16>,
        v_cache: &CudaSlice<bf16>,
        meta: &AttnMeta<'_>,
        out: &mut CudaSlice<bf16>,
        dims: AttnDims,
        split: Option<DecodeSplit<'_>>,
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
        let flash = self.flash_for(head_dim);
        if meta.n_tiles > 0 && flash.is_none() && (head_dim > PREFILL_TILE_MAX_HEAD_DIM || head_dim % 8 != 0) {
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
            let grid_dim = (meta.n_tiles as u32, n_heads as u32, 1);
            if let Some(function) = flash {
                let n_tiles = int(meta.n_tiles);
                let mut launch = stream.launch_builder(function);
                launch
                    .arg(q)
                    .arg(k_cache)
                    .arg(v_cache)
                    .arg(meta.block_tables)
                    .arg(meta.tiles)
                    .arg(&n_tiles)
                    .arg(&mut *out)
                    .arg(&nh)
                    .arg(&nkv)
                    .arg(&bs)
                    .arg(&scale);
                let cfg = LaunchConfig {
                    grid_dim,
                    block_dim: (FLASH_THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: tile b covers rows tiles[4b]..+tiles[4b+1] (at most `prefill_tile_rows(head_dim)` = 64,
                // inside q and out by construction on the host) of one sequence, reading keys up to its last row's
                // position through that sequence's block table, which covers it; the kernel is compiled for exactly
                // this head_dim, and q, out and the cache are 16-byte aligned allocations with rows of head_dim
                // (a multiple of 8) elements, as its vector loads need.
                unsafe { launch.launch(cfg) }?;
            } else {
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
                    grid_dim,
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: tile b covers rows tiles[4b]..+tiles[4b+1] (≤ 32, inside q and out by construction on the
                // host) of one sequence, reading keys up to its last row's position through that sequence's block
                // table, which covers it; head_dim ≤ 128 fits the kernel's shared tiles.
                unsafe { launch.launch(cfg) }?;
            }
        }
        let singles = if meta.n_tiles > 0 { meta.n_single_rows } else { t };
        if singles > 0 {
            // 64- and 128-dim heads take the kernel with 16-byte loads and 64 keys in flight per block.
            let decode = match head_dim {
                64 => Some(&self.decode_attention_hd64),
                128 => Some(&self.decode_attention_hd128),
                _ => None,
            };
            let mut launch = stream.launch_builder(decode.unwrap_or(&self.paged_attention));
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
            launch.arg(&mut *out);
            // Once one block per row and head would fill the GPU, a decode block serves every query head of one KV
            // head where their count divides its warps (each key and value then leaves memory once); with fewer rows,
            // one head each, all warps on its keys (batch-1 decode is latency-bound).
            let group = n_heads / n_kv_heads;
            let busy = singles * n_heads >= SPLIT_BLOCKS_PER_SM * self.sm_count;
            let per_block = if decode.is_some() && busy && DEC_WARPS.is_multiple_of(group) {
                group
            } else {
                1
            };
            let blocks_y = n_heads / per_block;
            // Splits only where the rows alone leave the GPU idle: at most SPLIT_BLOCKS_PER_SM blocks per SM in all,
            // which bounds the scratch the split path needs.
            let budget = SPLIT_BLOCKS_PER_SM * self.sm_count / (singles * blocks_y).max(1);
            let splits = match split {
                Some(s) if decode.is_some() && budget >= 2 => {
                    let (partial_len, counters_len) = self.decode_split_lens(head_dim);
                    check("decode_attention", "partial", s.partial.len(), partial_len)?;
                    check("decode_attention", "counters", s.counters.len(), counters_len)?;
                    launch.arg(s.partial).arg(s.counters);
                    budget.min(MAX_DECODE_SPLITS)
                }
                _ => {
                    if decode.is_some() {
                        launch.arg(&NULL).arg(&NULL);
                    }
                    1
                }
            };
            launch.arg(&nh).arg(&nkv);
            if decode.is_none() {
                launch.arg(&hd);
            }
            launch.arg(&bs).arg(&scale);
            let per_block_i = int(per_block);
            if decode.is_some() {
                launch.arg(&per_block_i);
            }
            let cfg = LaunchConfig {
                grid_dim: (singles as u32, blocks_y as u32, splits as u32),
                block_dim: (512, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: block (x, g, z) serves row single_rows[x] (or x) and query heads g·per_block.., inside q and out
            // (checked); it reads keys 0..=pos[row] through the row's block table, which the scheduler allocated to
            // cover pos[row]; the arguments match the kernel chosen (the head-size-specific ones take no head_dim but
            // the heads per block, which divides DEC_WARPS, and their 16-byte loads are aligned: rows of 64 or 128
            // elements in aligned allocations). With splits, block (x, g, z) writes partial[((x·nh + h)·splits +
            // z)·(hd + 2) ..] for each of its heads h and counts in counters[x·blocks_y + g]: x·blocks_y·splits is
            // below SPLIT_BLOCKS_PER_SM · sm_count, so the partial index stays below that × DEC_WARPS · (hd + 2), the
            // lengths checked above.
            unsafe { launch.launch(cfg) }?;
        }
        Ok(())
    }
}
