//! Decode steps as CUDA graphs: a batch of single-token chunks (the steady state of decoding) replays a graph
//! captured once per batch-size bucket, so a step costs a few small uploads, one graph launch and the logits copy
//! instead of some three hundred separate launches.
//!
//! Invariant: a graph reads only buffers that outlive it — the weights, the KV pool, the scratch buffers of the
//! generation it was captured with (a reallocation drops every graph), and the persistent layout buffers below,
//! which each step overwrites before launching. A batch is padded to its bucket with rows that write and read a
//! reserved dummy KV block the scheduler never hands out. Cost: one capture per bucket and scratch generation.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream};

use super::CudaError;
use super::forward::{Batch, Model, Scratch, read_logits, run_pass};
use super::kv::DeviceKv;
use crate::model::SeqChunk;
use cleave_kernels::AttnMeta;

/// The largest decode batch served by a graph; larger batches take the plain path.
pub(super) const MAX_GRAPH_BATCH: usize = 64;

/// The batch layout buffers every graph reads, sized for `MAX_GRAPH_BATCH` rows.
#[derive(Debug)]
struct LayoutBuffers {
    ids: CudaSlice<u32>,
    pos: CudaSlice<i32>,
    slots: CudaSlice<i32>,
    table_off: CudaSlice<i32>,
    tables: CudaSlice<i32>,
    rows: CudaSlice<i32>,
    tiles: CudaSlice<i32>,
}

#[derive(Default)]
pub(super) struct DecodeGraphs {
    layout: Option<LayoutBuffers>,
    /// Bucket → (graph, scratch generation it was captured with).
    graphs: HashMap<usize, (SendGraph, u64)>,
    /// Capacity of the block-table buffer, in entries.
    table_capacity: usize,
}

impl std::fmt::Debug for DecodeGraphs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodeGraphs")
            .field("buckets", &self.graphs.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A captured graph, owned by the backend.
struct SendGraph(CudaGraph);

// SAFETY: the driver API is thread-safe and a graph exec handle may be launched from any thread with its context
// current (`launch` binds it). The backend, and with it every graph, moves once to the engine thread, which is then
// the only thread that launches or drops them.
unsafe impl Send for SendGraph {}

/// Whether a batch can run as a graph: every chunk one token that wants logits, at most `MAX_GRAPH_BATCH` rows.
pub(super) fn graphable(chunks: &[SeqChunk<'_>]) -> bool {
    !chunks.is_empty() && chunks.len() <= MAX_GRAPH_BATCH && chunks.iter().all(|c| c.tokens.len() == 1 && c.want_logits)
}

impl DecodeGraphs {
    /// Runs a graphable batch: uploads its layout (padded to the bucket), replays or captures the bucket's graph,
    /// and returns the real rows' logits. `None` when the batch's block tables exceed the buffer (plain path).
    pub fn run(
        &mut self,
        model: &Model<'_>,
        kv: &mut DeviceKv,
        scratch: &mut Scratch,
        chunks: &[SeqChunk<'_>],
    ) -> Result<Option<Vec<f32>>, CudaError> {
        let stream = model.stream;
        let n = chunks.len();
        let bucket = n.next_power_of_two();
        let shape = kv.shape();
        let bs = shape.block_size;
        let dummy = kv.dummy_block() as i32;
        if self.layout.is_none() {
            // Every row could hold a sequence as long as the pool.
            self.table_capacity = MAX_GRAPH_BATCH * shape.n_blocks.min(1 << 16) + 1;
            self.layout = Some(LayoutBuffers {
                ids: stream.alloc_zeros(MAX_GRAPH_BATCH)?,
                pos: stream.alloc_zeros(MAX_GRAPH_BATCH)?,
                slots: stream.alloc_zeros(MAX_GRAPH_BATCH)?,
                table_off: stream.alloc_zeros(MAX_GRAPH_BATCH)?,
                tables: stream.alloc_zeros(self.table_capacity)?,
                rows: stream.clone_htod(&(0..MAX_GRAPH_BATCH as i32).collect::<Vec<_>>())?,
                tiles: stream.alloc_zeros(4)?,
            });
        }
        let table_len: usize = chunks.iter().map(|c| c.blocks.len()).sum::<usize>() + 1;
        if table_len > self.table_capacity {
            return Ok(None);
        }
        scratch.ensure(stream, model.cfg, model.kernels, MAX_GRAPH_BATCH, MAX_GRAPH_BATCH)?;

        // The layout, padded: extra rows decode token 0 at position 0 into the dummy block.
        let (mut ids, mut pos, mut slots, mut table_off) = (
            Vec::with_capacity(bucket),
            Vec::with_capacity(bucket),
            Vec::with_capacity(bucket),
            Vec::with_capacity(bucket),
        );
        let mut tables = Vec::with_capacity(table_len);
        for c in chunks {
            let p = c.start_pos;
            table_off.push(tables.len() as i32);
            tables.extend(c.blocks.iter().map(|&b| b as i32));
            ids.push(c.tokens[0]);
            pos.push(p as i32);
            slots.push((c.blocks[p / bs] as usize * bs + p % bs) as i32);
        }
        let dummy_off = tables.len() as i32;
        tables.push(dummy);
        for _ in n..bucket {
            ids.push(0);
            pos.push(0);
            slots.push(dummy * bs as i32);
            table_off.push(dummy_off);
        }
        let layout = self.layout.as_mut().ok_or(CudaError::NoDevice)?;
        stream.memcpy_htod(&ids, &mut layout.ids.slice_mut(..bucket))?;
        stream.memcpy_htod(&pos, &mut layout.pos.slice_mut(..bucket))?;
        stream.memcpy_htod(&slots, &mut layout.slots.slice_mut(..bucket))?;
        stream.memcpy_htod(&table_off, &mut layout.table_off.slice_mut(..bucket))?;
        stream.memcpy_htod(&tables, &mut layout.tables.slice_mut(..tables.len()))?;

        let generation = scratch.generation;
        let fresh = self.graphs.get(&bucket).is_some_and(|(_, g)| *g == generation);
        if !fresh {
            self.graphs.retain(|_, (_, g)| *g == generation);
            let graph = capture(model, kv, scratch, layout, bucket)?;
            self.graphs.insert(bucket, (SendGraph(graph), generation));
        }
        let (graph, _) = self.graphs.get(&bucket).ok_or(CudaError::NoDevice)?;
        graph.0.launch()?;
        let group_rank = model.tp.map(|c| c.rank());
        read_logits(stream, scratch, n * model.cfg.vocab_size, group_rank).map(Some)
    }
}

/// Records one decode pass of `bucket` rows over the persistent layout buffers.
fn capture(
    model: &Model<'_>,
    kv: &mut DeviceKv,
    scratch: &mut Scratch,
    layout: &LayoutBuffers,
    bucket: usize,
) -> Result<CudaGraph, CudaError> {
    let stream: &Arc<CudaStream> = model.stream;
    let batch = Batch {
        ids: &layout.ids,
        blocks: &[],
        meta: AttnMeta {
            pos: &layout.pos,
            slots: &layout.slots,
            block_tables: &layout.tables,
            table_off: &layout.table_off,
            n_tokens: bucket,
            tiles: &layout.tiles,
            n_tiles: 0,
            single_rows: &layout.rows,
            n_single_rows: bucket,
        },
        logit_rows: &layout.rows,
        n_logits: bucket,
        logit_offset: 0,
        exchange: None,
    };
    stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let recorded = run_pass(model, kv, scratch, &batch, None);
    // End the capture whatever happened, so the stream is usable again.
    let graph = stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
    recorded?;
    graph?.ok_or(CudaError::NoDevice)
}
