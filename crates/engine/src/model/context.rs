//! Context parallelism: each rank of W takes 1/W of every chunk's tokens (contiguous parts, the last part on the
//! last rank) through the whole model, and attention runs as ring attention: every layer, each rank passes key and
//! value blocks around the ring (to rank + 1, from rank − 1) while folding the block it holds into its queries'
//! online softmax ([`Partial`]); the prefix already in the KV cache is folded in locally. Every block that passes
//! through a rank is also written into its KV cache, so after each layer every rank's cache holds the whole
//! batch's KV: later chunks, decode steps and KV transfers read it locally, at the price of a whole KV pool per rank.

use cleave_comm::Communicator;

use super::SeqChunk;
use crate::cpu::attention::AttnDims;
use crate::cpu::ring::{Partial, RowAt};
use crate::error::EngineError;
use crate::kv::KvCache;

/// One rank's part of one chunk of the batch.
#[derive(Debug, Clone, Copy)]
struct Part<'c> {
    chunk: SeqChunk<'c>,
    /// The chunk's index in the batch.
    seq: usize,
    /// Where the whole chunk starts: positions before it are in the KV cache already.
    base: usize,
}

/// How a batch is split across a context-parallel group, and the group.
pub(super) struct Ring<'a, 'c> {
    /// Per rank, its parts in batch order.
    parts: Vec<Vec<Part<'c>>>,
    comm: &'a dyn Communicator,
}

impl<'a, 'c> Ring<'a, 'c> {
    pub(super) fn new(chunks: &[SeqChunk<'c>], comm: &'a dyn Communicator) -> Self {
        let world = comm.world_size();
        let parts = (0..world)
            .map(|rank| {
                chunks
                    .iter()
                    .enumerate()
                    .map(|(seq, c)| {
                        let (from, to) = (rank * c.tokens.len() / world, (rank + 1) * c.tokens.len() / world);
                        Part {
                            chunk: SeqChunk {
                                tokens: &c.tokens[from..to],
                                start_pos: c.start_pos + from,
                                blocks: c.blocks,
                                want_logits: c.want_logits && rank + 1 == world,
                            },
                            seq,
                            base: c.start_pos,
                        }
                    })
                    .collect()
            })
            .collect();
        Ring { parts, comm }
    }

    /// This rank's chunks: its part of each chunk of the batch (empty where the chunk is shorter than the group).
    pub(super) fn local_chunks(&self) -> Vec<SeqChunk<'c>> {
        self.parts[self.comm.rank()].iter().map(|p| p.chunk).collect()
    }

    /// The rank that computes every chunk's last token, hence the logits.
    pub(super) fn last_rank(&self) -> usize {
        self.comm.world_size() - 1
    }

    fn rows_at(&self, rank: usize) -> Vec<RowAt> {
        self.parts[rank]
            .iter()
            .flat_map(|p| {
                (0..p.chunk.tokens.len()).map(move |i| RowAt {
                    seq: p.seq,
                    pos: p.chunk.start_pos + i,
                })
            })
            .collect()
    }

    /// Ring attention of this rank's rows for `layer`: `q` `[rows, q_dim]`, this rank's keys and values `k`, `v`
    /// `[rows, kv_dim]` (rotated, already in `kv`). Writes `out` like `q`, and every other rank's keys and values
    /// for the batch into `kv`.
    pub(super) fn attend(
        &self,
        (q, k, v): (&[f32], &[f32], &[f32]),
        kv: &mut KvCache,
        layer: usize,
        dims: AttnDims,
        out: &mut [f32],
    ) -> Result<(), EngineError> {
        let (rank, world) = (self.comm.rank(), self.comm.world_size());
        let kv_dim = dims.n_kv_heads * dims.head_dim;
        let at_q = self.rows_at(rank);
        let mut state = Partial::new(at_q.len(), dims);

        // The cached prefix of each chunk, before any of its parts.
        let mut row = 0;
        for part in &self.parts[rank] {
            let rows = row..row + part.chunk.tokens.len();
            row = rows.end;
            if rows.is_empty() || part.base == 0 {
                continue;
            }
            let (keys, values) = cached_prefix(kv, layer, part, dims);
            let at_k: Vec<RowAt> = (0..part.base).map(|pos| RowAt { seq: part.seq, pos }).collect();
            state.fold(rows, q, &at_q, &keys, &values, &at_k);
        }

        // The batch's own keys and values, block by block around the ring: fold the block held while the next
        // one travels.
        let (next, prev) = ((rank + 1) % world, (rank + world - 1) % world);
        let mut held: Vec<f32> = k.iter().chain(v).copied().collect();
        let mut src = rank;
        for step in 0..world {
            let at_k = self.rows_at(src);
            let (hk, hv) = held.split_at(at_k.len() * kv_dim);
            if step + 1 == world {
                state.fold(0..at_q.len(), q, &at_q, hk, hv, &at_k);
                break;
            }
            let incoming_src = (src + world - 1) % world;
            let mut incoming = vec![0.0f32; 2 * self.parts_rows(incoming_src) * kv_dim];
            // Both ends of each link know the block's size (the parts are the same on every rank), so an empty
            // block is not sent at all — a decode step's one row travels alone.
            let comm = self.comm;
            let moved = std::thread::scope(|scope| {
                let (send, recv) = (held.as_slice(), incoming.as_mut_slice());
                let transfer = (!send.is_empty() || !recv.is_empty()).then(|| {
                    scope.spawn(move || match (send.is_empty(), recv.is_empty()) {
                        (false, false) => comm.send_recv(send.into(), next, recv.into(), prev),
                        (false, true) => comm.send(send.into(), next),
                        _ => comm.recv(recv.into(), prev),
                    })
                });
                state.fold(0..at_q.len(), q, &at_q, hk, hv, &at_k);
                transfer.map(|t| t.join())
            });
            if let Some(moved) = moved {
                moved.map_err(|_| EngineError::Internal("a ring-attention transfer thread panicked".into()))??;
            }
            self.write(kv, layer, incoming_src, &incoming, kv_dim);
            held = incoming;
            src = incoming_src;
        }
        state.finish(out);
        Ok(())
    }

    fn parts_rows(&self, rank: usize) -> usize {
        self.parts[rank].iter().map(|p| p.chunk.tokens.len()).sum()
    }

    /// Writes rank `src`'s keys and values (`[k rows | v rows]`) into `kv`.
    fn write(&self, kv: &mut KvCache, layer: usize, src: usize, block: &[f32], kv_dim: usize) {
        let block_size = kv.block_size();
        let (keys, values) = block.split_at(block.len() / 2);
        let mut row = 0;
        for part in &self.parts[src] {
            for i in 0..part.chunk.tokens.len() {
                let pos = part.chunk.start_pos + i;
                let (k, v) = (
                    &keys[row * kv_dim..(row + 1) * kv_dim],
                    &values[row * kv_dim..(row + 1) * kv_dim],
                );
                kv.write(layer, part.chunk.blocks[pos / block_size], pos % block_size, k, v);
                row += 1;
            }
        }
    }
}

/// Keys and values of `part`'s chunk before its start, `[base, kv_dim]` each, read from `kv`.
fn cached_prefix(kv: &KvCache, layer: usize, part: &Part<'_>, dims: AttnDims) -> (Vec<f32>, Vec<f32>) {
    let (hd, n) = (dims.head_dim, part.base);
    let kv_dim = dims.n_kv_heads * hd;
    let (mut keys, mut values) = (vec![0.0f32; n * kv_dim], vec![0.0f32; n * kv_dim]);
    let (mut hk, mut hv) = (vec![0.0f32; n * hd], vec![0.0f32; n * hd]);
    for g in 0..dims.n_kv_heads {
        kv.gather(layer, g, part.chunk.blocks, n, &mut hk, &mut hv);
        for pos in 0..n {
            let at = pos * kv_dim + g * hd;
            keys[at..at + hd].copy_from_slice(&hk[pos * hd..(pos + 1) * hd]);
            values[at..at + hd].copy_from_slice(&hv[pos * hd..(pos + 1) * hd]);
        }
    }
    (keys, values)
}
