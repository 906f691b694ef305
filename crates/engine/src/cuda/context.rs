//! Context parallelism on GPUs: every rank holds the whole model and a whole KV pool, and takes a share of each
//! chunk's new tokens through every layer. After each layer's keys and values are written, the ranks exchange the
//! blocks they wrote (one NCCL all-gather of keys and one of values — a ring inside NCCL) and scatter the others'
//! blocks into their own pools, so every rank's attention then runs over the whole context in its paged cache with
//! the usual kernels, and after the pass every rank holds the batch's whole KV (later chunks, decode steps and KV
//! transfers read it locally).
//!
//! The split ([`split`]) cuts each chunk at block boundaries into 2·W pieces of about equal token counts and gives
//! rank r pieces r and 2W − 1 − r, so the causal attention work (which grows with the position) is balanced; a
//! block's new rows thus belong to one rank alone, and rank 0 holds every chunk's last token and computes the
//! logits. Chunks shorter than a block (decode steps) stay whole on rank 0; the other ranks then only take part in
//! the exchange.

use std::sync::Arc;

use cleave_comm::NcclCommunicator;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use super::forward::{DeviceBatch, read_logits, run_pass};
use super::kv::DeviceKv;
use super::{CudaBackend, CudaError};
use crate::kv::BlockId;
use crate::model::SeqChunk;

/// One rank's share of a batch: its pieces (in batch order), and for every rank the blocks its pieces write.
#[derive(Debug)]
pub(super) struct Split<'c> {
    pub local: Vec<SeqChunk<'c>>,
    pub owned: Vec<Vec<BlockId>>,
}

/// Rank `rank` of `world`'s share of `chunks` over `block_size`-token blocks (see the module note).
pub(super) fn split<'c>(chunks: &[SeqChunk<'c>], rank: usize, world: usize, block_size: usize) -> Split<'c> {
    let pieces = 2 * world;
    let owner = |piece: usize| if piece < world { piece } else { pieces - 1 - piece };
    let mut local = Vec::new();
    let mut owned = vec![Vec::new(); world];
    for c in chunks {
        let (start, n) = (c.start_pos, c.tokens.len());
        let mut cuts = Vec::with_capacity(pieces + 1);
        cuts.push(start);
        for j in 1..pieces {
            let raw = start + j * n / pieces;
            let aligned = raw - raw % block_size;
            let previous = cuts[j - 1];
            cuts.push(aligned.max(previous));
        }
        cuts.push(start + n);
        for piece in 0..pieces {
            let (from, to) = (cuts[piece], cuts[piece + 1]);
            if from >= to {
                continue;
            }
            let at = owner(piece);
            owned[at].extend(c.blocks[from / block_size..=(to - 1) / block_size].iter().copied());
            if at == rank {
                local.push(SeqChunk {
                    tokens: &c.tokens[from - start..to - start],
                    start_pos: from,
                    blocks: c.blocks,
                    want_logits: c.want_logits && piece == pieces - 1,
                });
            }
        }
    }
    Split { local, owned }
}

/// What one layer's exchange moves: this rank's blocks into its send buffers, and every other rank's blocks from
/// the gathered buffers into the pool.
#[derive(Debug)]
pub(super) struct Exchange {
    /// (pool block, slot in the send buffers).
    gather: Vec<(u32, u32)>,
    /// (slot in the gathered buffers, pool block).
    scatter: Vec<(u32, u32)>,
    /// Slots per rank (the most blocks any rank writes; at least one).
    per_rank: usize,
}

impl Exchange {
    pub fn new(owned: &[Vec<BlockId>], rank: usize) -> Self {
        let per_rank = owned.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let gather = owned[rank].iter().zip(0..).map(|(&b, i)| (b, i)).collect();
        let scatter = owned
            .iter()
            .enumerate()
            .filter(|&(r, _)| r != rank)
            .flat_map(|(r, blocks)| {
                blocks
                    .iter()
                    .zip(0..)
                    .map(move |(&b, i)| ((r * per_rank) as u32 + i, b))
            })
            .collect();
        Exchange {
            gather,
            scatter,
            per_rank,
        }
    }
}

/// The exchange's device buffers, grown to the largest exchange seen.
#[derive(Debug)]
pub(super) struct Staging {
    send: (CudaSlice<bf16>, CudaSlice<bf16>),
    gathered: (CudaSlice<bf16>, CudaSlice<bf16>),
}

impl Staging {
    /// Buffers for `per_rank` blocks of `block_elems` from each of `world` ranks, reusing `old` when big enough.
    pub fn ensure(
        old: Option<Staging>,
        stream: &Arc<CudaStream>,
        per_rank: usize,
        world: usize,
        block_elems: usize,
    ) -> Result<Staging, CudaError> {
        let send = per_rank * block_elems;
        match old {
            Some(s) if s.send.0.len() >= send && s.gathered.0.len() >= world * send => Ok(s),
            _ => Ok(Staging {
                send: (stream.alloc_zeros(send)?, stream.alloc_zeros(send)?),
                gathered: (stream.alloc_zeros(world * send)?, stream.alloc_zeros(world * send)?),
            }),
        }
    }
}

/// Layer `layer`'s exchange (see the module note), queued on `stream`.
pub(super) fn exchange_layer(
    kernels: &cleave_kernels::Kernels,
    stream: &CudaStream,
    comm: &NcclCommunicator,
    kv: &DeviceKv,
    layer: usize,
    plan: &Exchange,
    staging: &mut Staging,
) -> Result<(), CudaError> {
    let shape = kv.shape();
    let (block_elems, world) = (shape.block_floats(), comm.world_size());
    let len = plan.per_rank * block_elems;
    {
        let (k, _k_sync) = staging.send.0.device_ptr(stream);
        let (v, _v_sync) = staging.send.1.device_ptr(stream);
        // SAFETY: the send buffers hold `per_rank` blocks of `block_elems` (`Staging::ensure`), and the gather's
        // slots count up from 0 below this rank's block count, at most `per_rank`; only this stream writes them.
        unsafe {
            kernels.copy_kv_blocks(
                stream,
                &kv.keys[layer],
                &kv.values[layer],
                k,
                v,
                plan.per_rank,
                block_elems,
                &plan.gather,
            )
        }?;
    }
    comm.all_gather(
        &staging.send.0.slice(..len),
        &mut staging.gathered.0.slice_mut(..world * len),
    )?;
    comm.all_gather(
        &staging.send.1.slice(..len),
        &mut staging.gathered.1.slice_mut(..world * len),
    )?;
    let (k, _k_sync) = kv.keys[layer].device_ptr(stream);
    let (v, _v_sync) = kv.values[layer].device_ptr(stream);
    // SAFETY: `k`/`v` are this layer's pool buffers of `n_blocks + 1` blocks; the kernel checks every destination
    // block against that count and every source slot against the gathered buffers' lengths.
    unsafe {
        kernels.copy_kv_blocks(
            stream,
            &staging.gathered.0,
            &staging.gathered.1,
            k,
            v,
            shape.n_blocks + 1,
            block_elems,
            &plan.scatter,
        )
    }?;
    Ok(())
}

impl CudaBackend {
    /// This rank's share of `chunks` (see the module note): the logits on rank 0, none on the others. With
    /// `layer_done`, each layer is reported once the exchange put the whole batch's KV of it in this pool.
    pub(super) fn forward_context(
        &mut self,
        chunks: &[SeqChunk<'_>],
        layer_done: Option<super::forward::LayerDone<'_>>,
    ) -> Result<Vec<f32>, CudaError> {
        let Some(at) = self.context else {
            return Err(CudaError::Nccl(
                "a context-parallel pass on a backend of no such group".to_owned(),
            ));
        };
        let stream = self.stream.clone();
        stream.context().bind_to_thread()?;
        let block_size = self.kv.shape().block_size;
        let split = split(chunks, at.rank, at.world, block_size);
        if split.owned.iter().all(Vec::is_empty) {
            return Ok(Vec::new());
        }
        let plan = Exchange::new(&split.owned, at.rank);
        let uploaded = DeviceBatch::upload(&stream, &self.config, block_size, &split.local)?;
        self.scratch.ensure(
            &stream,
            &self.config,
            &self.kernels,
            uploaded.n_tokens(),
            uploaded.n_logits,
        )?;
        let block_elems = self.kv.shape().block_floats();
        let staging = self.scratch.context.take();
        self.scratch.context = Some(Staging::ensure(staging, &stream, plan.per_rank, at.world, block_elems)?);
        let vocab = self.config.vocab_size;
        {
            let (model, kv, scratch) = self.pass_parts(true);
            let mut batch = uploaded.batch(0);
            batch.exchange = Some(&plan);
            run_pass(&model, kv, scratch, &batch, layer_done)?;
        }
        // Bounded: a rank that died leaves the others' all-gathers waiting, and this wait aborts them.
        if let Some(group) = self.group.as_mut() {
            group.0.synchronize("a context-parallel pass")?;
        }
        read_logits(&stream, &self.scratch, uploaded.n_logits * vocab, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk<'a>(tokens: &'a [u32], start_pos: usize, blocks: &'a [u32]) -> SeqChunk<'a> {
        SeqChunk {
            tokens,
            start_pos,
            blocks,
            want_logits: true,
        }
    }

    /// Every new token lands on exactly one rank, each block's new rows on one rank, pieces start at block
    /// boundaries (or where the chunk starts), rank 0 holds each chunk's last token alone, and the ranks' token
    /// counts weighted by position (the causal attention work) stay within 12% of even (a 1,000-token chunk in
    /// 16-token blocks; exactly even for 32k tokens).
    #[test]
    fn the_split_covers_every_token_once_in_whole_blocks_balanced_with_the_last_on_rank_0() {
        let long: Vec<u32> = (0..1000).collect();
        let short = [7u32];
        let (long_blocks, short_blocks): (Vec<u32>, Vec<u32>) = ((0..70).collect(), vec![90]);
        let chunks = [chunk(&long[..], 37, &long_blocks), chunk(&short, 5, &short_blocks)];
        for world in [1usize, 2, 3, 4] {
            let splits: Vec<Split<'_>> = (0..world).map(|r| split(&chunks, r, world, 16)).collect();
            let mut seen: Vec<usize> = Vec::new();
            let mut work = vec![0usize; world];
            for (rank, s) in splits.iter().enumerate() {
                assert_eq!(s.owned, splits[0].owned, "every rank plans the same exchange");
                for c in &s.local {
                    assert!(c.start_pos % 16 == 0 || c.start_pos == 37 || c.start_pos == 5);
                    assert_eq!(
                        c.want_logits,
                        rank == 0 && (c.start_pos + c.tokens.len() == 1037 || c.start_pos == 5)
                    );
                    seen.extend(c.start_pos..c.start_pos + c.tokens.len());
                    work[rank] += (c.start_pos..c.start_pos + c.tokens.len()).sum::<usize>();
                }
            }
            seen.sort_unstable();
            let want: Vec<usize> = (37..1037)
                .chain([5])
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(seen, want, "world {world}");
            let blocks: Vec<BlockId> = splits[0].owned.concat();
            let distinct: std::collections::BTreeSet<_> = blocks.iter().collect();
            assert_eq!(
                blocks.len(),
                distinct.len(),
                "a block written by two ranks (world {world})"
            );
            assert!(
                splits[0].local.iter().any(|c| c.tokens == short),
                "a short chunk stays whole on rank 0"
            );
            let (most, least) = (work.iter().max().unwrap(), work.iter().min().unwrap());
            let mean = work.iter().sum::<usize>() / world;
            assert!(
                100 * (most - least) <= 12 * mean,
                "world {world}: attention work {work:?}"
            );
        }
    }

    #[test]
    fn the_exchange_gathers_own_blocks_and_scatters_the_others_from_their_rank_slots() {
        let owned = vec![vec![4, 5], vec![9], vec![]];
        let plan = Exchange::new(&owned, 1);
        assert_eq!(plan.per_rank, 2);
        assert_eq!(plan.gather, vec![(9, 0)]);
        assert_eq!(plan.scatter, vec![(0, 4), (1, 5)]);
        let plan = Exchange::new(&owned, 2);
        assert_eq!(plan.gather, vec![]);
        assert_eq!(plan.scatter, vec![(0, 4), (1, 5), (2, 9)]);
    }
}
