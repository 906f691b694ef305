//! Disaggregated prefill inside the scheduler: sequences whose prompt KV another worker computes, and prefill-only
//! sequences that compute it for another worker.
//!
//! Decode side: [`Scheduler::add_remote`] admits a request at once, reusing its cached prefix and allocating the
//! blocks for the rest of its prompt but the last token; the sequence then waits outside the batch while a prefill
//! worker writes those blocks layer by layer ([`Scheduler::write_remote_layer`]). [`Scheduler::finish_remote`] hands
//! it to the batch: with every layer written, only the last prompt token is computed here (so sampling, seeds and
//! logprobs are exactly those of a local prefill); after any failure the prompt is prefilled locally in the same
//! blocks. Invariant: an awaiting sequence owns its blocks like any other, so abort frees them, and a write names
//! the request and its exact destination blocks — a late or stray transfer can never touch blocks it does not own.
//!
//! Prefill side: a request of kind [`RequestKind::ExportKv`] runs through chunked prefill like any prompt, and during
//! its last chunk each layer's blocks from `first_block` on are copied out as soon as that layer is computed. Cost:
//! one copy of the exported blocks per layer, on the engine thread.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::Scheduler;
use super::sequence::SeqMode;
use crate::backend::{Backend, KvBlockReader, LandedCopy, PeerKv};
use crate::error::EngineError;
use crate::kv::BlockId;
use crate::scheduler::{NewRequest, RequestId};

/// What a request does with its prompt.
#[derive(Debug, Clone)]
pub enum RequestKind {
    /// Prefill (or receive the prompt KV from a prefill worker), then sample.
    Generate,
    /// Compute the prompt's KV for another worker and sample nothing.
    ExportKv(KvExport),
}

/// Where a prefill-only request sends its KV: blocks `first_block..` of its prompt, one message per layer.
#[derive(Debug, Clone)]
pub struct KvExport {
    /// Leading prompt blocks the receiver already holds; they are not sent.
    pub first_block: usize,
    pub layers: mpsc::UnboundedSender<ExportedLayer>,
    /// Write the blocks straight into this peer's pool instead of copying them out to the host.
    pub peer: Option<PeerExport>,
    /// Receives the logits of the prompt's last token (the receiver samples its first token from them).
    pub logits: Option<mpsc::UnboundedSender<Vec<f32>>>,
}

/// A peer's mapped pool and the blocks there that receive prompt blocks `first_block..`, in order.
#[derive(Debug, Clone)]
pub struct PeerExport {
    pub pool: PeerKv,
    pub blocks: Arc<[BlockId]>,
}

/// One layer of an exported prompt.
#[derive(Debug)]
pub struct ExportedLayer {
    pub layer: u32,
    pub data: LayerData,
}

#[derive(Debug)]
pub enum LayerData {
    /// The keys, then the values, of each exported block back to back, in the engine's
    /// `[block][kv_head][slot][head_dim]` layout.
    Host { keys: Vec<f32>, values: Vec<f32> },
    /// Queued into the peer's pool ([`KvExport::peer`]); landed once the copy says so.
    Copied(LandedCopy),
    /// The device could not queue the copy; the export cannot complete.
    Failed(String),
}

/// How a remote prefill ended well: how many prompt tokens the prefill worker found in its own cache, and the
/// logits of the prompt's last token when it sent them (the first token is then sampled from them here, exactly
/// as after a local prefill; without them this worker recomputes the last token).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RemoteDone {
    pub prefill_cached: usize,
    pub logits: Option<Vec<f32>>,
}

/// Where a prefill worker must write a request's prompt KV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKvTarget {
    /// Prompt tokens whose KV the prefill worker computes: the whole prompt.
    pub prefill_tokens: usize,
    /// Leading blocks this worker already holds from its prefix cache; they are not sent.
    pub first_block: usize,
    /// Destination blocks for prompt blocks `first_block..`, in order.
    pub blocks: Vec<BlockId>,
}

/// A sequence waiting for remote KV: which blocks it expects and which layers have landed (sized at the first
/// write, when the cache's layer count is at hand).
#[derive(Debug)]
pub(crate) struct AwaitingKv {
    first_block: usize,
    layers_written: Vec<bool>,
    /// A peer was given this worker's pool and may be writing the destination blocks directly.
    direct_writer: bool,
}

/// Why a remote layer write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RemoteWriteError {
    #[error("request {0} is not waiting for remote KV (finished, aborted or never asked)")]
    NotAwaiting(RequestId),
    #[error("the transfer names blocks {got:?} but the request's destination blocks are {expected:?}")]
    WrongBlocks { got: Vec<BlockId>, expected: Vec<BlockId> },
    #[error("layer {layer} is out of range (the model has {n_layers})")]
    LayerOutOfRange { layer: u32, n_layers: usize },
    #[error("the device refused the write: {0}")]
    Device(String),
    #[error("layer {layer}: {field} hold {got} floats, expected {expected}")]
    PayloadLength {
        layer: u32,
        field: &'static str,
        got: usize,
        expected: usize,
    },
}

impl Scheduler {
    /// Admits a request whose prompt KV a prefill worker will compute. Returns where that KV must go, or `None` when
    /// remote prefill cannot help — nothing left to compute past the cached prefix, or no free blocks now — in which
    /// case the request was queued for local prefill like [`Scheduler::add`].
    pub fn add_remote(&mut self, req: NewRequest) -> Result<Option<RemoteKvTarget>, EngineError> {
        let bs = self.config.block_size;
        let (id, single) = (req.id, req.sampling.n == 1);
        self.add(req)?;
        // `add` queued the sequence last among its priority; take it back out to decide.
        let Some(at) = self.waiting.iter().rposition(|s| s.request == id) else {
            return Ok(None);
        };
        let prefill_tokens = self.waiting[at].tokens.len();
        // n > 1 forks its samples from the computed prompt inside the batch; keep those local.
        if prefill_tokens < 2 || !single {
            return Ok(None);
        }
        let seq = &mut self.waiting[at];
        let total = prefill_tokens.div_ceil(bs);
        if self.config.prefix_caching {
            // The last token is always computed somewhere, so a block holding it is never taken from the cache.
            let reusable = ((prefill_tokens - 1) / bs).min(seq.hashes.len());
            seq.blocks = self.blocks.acquire_prefix(&seq.hashes[..reusable]);
        }
        let first_block = seq.blocks.len();
        let needed = total - first_block;
        if needed == 0 || self.blocks.available() < needed {
            self.blocks.release_all(&seq.blocks);
            seq.blocks.clear();
            return Ok(None);
        }
        for _ in 0..needed {
            if let Some(b) = self.blocks.allocate() {
                seq.blocks.push(b);
            }
        }
        let Some(mut seq) = self.waiting.remove(at) else {
            return Ok(None);
        };
        seq.computed = first_block * bs;
        seq.registered = first_block;
        seq.cached_tokens = seq.computed;
        seq.mode = SeqMode::AwaitingKv(AwaitingKv {
            first_block,
            layers_written: Vec::new(),
            direct_writer: false,
        });
        let target = RemoteKvTarget {
            prefill_tokens,
            first_block,
            blocks: seq.blocks[first_block..].to_vec(),
        };
        self.awaiting.push(seq);
        Ok(Some(target))
    }

    /// Writes one layer of remote KV into an awaiting request's blocks. `keys` and `values` hold `blocks.len()`
    /// blocks each; `blocks` must be exactly the request's destination blocks.
    pub fn write_remote_layer(
        &mut self,
        request: RequestId,
        layer: u32,
        blocks: &[BlockId],
        keys: &[f32],
        values: &[f32],
        backend: &mut dyn Backend,
    ) -> Result<(), RemoteWriteError> {
        let shape = backend.kv_shape();
        let state = self.awaiting_layer(request, layer, blocks, shape.n_layers)?;
        let per_block = shape.block_floats();
        for (field, got) in [("keys", keys.len()), ("values", values.len())] {
            if got != per_block * blocks.len() {
                return Err(RemoteWriteError::PayloadLength {
                    layer,
                    field,
                    got,
                    expected: per_block * blocks.len(),
                });
            }
        }
        for ((&block, k), v) in blocks
            .iter()
            .zip(keys.chunks_exact(per_block))
            .zip(values.chunks_exact(per_block))
        {
            backend
                .write_block_layer(layer as usize, block, k, v)
                .map_err(|e| RemoteWriteError::Device(e.to_string()))?;
        }
        state.layers_written[layer as usize] = true;
        Ok(())
    }

    /// The waiting state of `request`, after checking that a write of `layer` into `blocks` is one it expects.
    fn awaiting_layer(
        &mut self,
        request: RequestId,
        layer: u32,
        blocks: &[BlockId],
        n_layers: usize,
    ) -> Result<&mut AwaitingKv, RemoteWriteError> {
        let seq = self
            .awaiting
            .iter_mut()
            .find(|s| s.request == request)
            .ok_or(RemoteWriteError::NotAwaiting(request))?;
        let SeqMode::AwaitingKv(state) = &mut seq.mode else {
            return Err(RemoteWriteError::NotAwaiting(request));
        };
        let expected = &seq.blocks[state.first_block..];
        if blocks != expected {
            return Err(RemoteWriteError::WrongBlocks {
                got: blocks.to_vec(),
                expected: expected.to_vec(),
            });
        }
        if state.layers_written.is_empty() {
            state.layers_written = vec![false; n_layers];
        }
        if layer as usize >= n_layers {
            return Err(RemoteWriteError::LayerOutOfRange { layer, n_layers });
        }
        Ok(state)
    }

    /// Lets a peer write `request`'s destination blocks directly (CUDA IPC): from now until
    /// [`Scheduler::end_direct_writes`], those blocks are never handed to another request, even if this one ends.
    /// Returns false when the request is no longer waiting, in which case the peer must not be let in.
    pub fn allow_direct_writes(&mut self, request: RequestId) -> bool {
        let Some(seq) = self.awaiting.iter_mut().find(|s| s.request == request) else {
            return false;
        };
        match &mut seq.mode {
            SeqMode::AwaitingKv(state) => {
                state.direct_writer = true;
                true
            }
            _ => false,
        }
    }

    /// [`Scheduler::allow_direct_writes`] for a writer that names the blocks it writes: they must be exactly the
    /// request's destination blocks.
    pub fn allow_direct_writes_into(
        &mut self,
        request: RequestId,
        blocks: &[BlockId],
        n_layers: usize,
    ) -> Result<(), RemoteWriteError> {
        self.awaiting_layer(request, 0, blocks, n_layers)?;
        if self.allow_direct_writes(request) {
            Ok(())
        } else {
            Err(RemoteWriteError::NotAwaiting(request))
        }
    }

    /// Records that a peer finished writing `layer` of `request` into `blocks` directly.
    pub fn direct_layer_landed(
        &mut self,
        request: RequestId,
        layer: u32,
        blocks: &[BlockId],
        n_layers: usize,
    ) -> Result<(), RemoteWriteError> {
        let state = self.awaiting_layer(request, layer, blocks, n_layers)?;
        if !state.direct_writer {
            return Err(RemoteWriteError::NotAwaiting(request));
        }
        state.layers_written[layer as usize] = true;
        Ok(())
    }

    /// The peer writing `request`'s blocks directly is done (its connection closed, so it stopped): blocks held
    /// for it since its request ended are free again.
    pub fn end_direct_writes(&mut self, request: RequestId) {
        if let Some(seq) = self.awaiting.iter_mut().find(|s| s.request == request)
            && let SeqMode::AwaitingKv(state) = &mut seq.mode
        {
            state.direct_writer = false;
        }
        if let Some(blocks) = self.fenced.remove(&request) {
            self.blocks.release_all(&blocks);
        }
    }

    /// Takes the destination blocks of an awaiting sequence that a peer may still be writing out of its hands
    /// (into `fenced`, until `end_direct_writes`); its cached prefix stays.
    pub(super) fn fence_direct_writes(&mut self, seq: &mut super::sequence::Sequence) {
        let SeqMode::AwaitingKv(state) = &mut seq.mode else {
            return;
        };
        if !state.direct_writer {
            return;
        }
        state.direct_writer = false;
        let first = state.first_block.min(seq.blocks.len());
        let held = seq.blocks.split_off(first);
        self.fenced.entry(seq.request).or_default().extend(held);
    }

    /// Ends the wait for remote KV and queues the request for the batch. `Ok(done)` reports a transfer that
    /// completed; with every layer written, the first token is sampled from the prefill worker's logits (the output
    /// comes with the next step), or — without logits — the last prompt token is recomputed here. Anything else
    /// prefills the prompt locally. Returns whether the remote KV was used, or `None` for a request not waiting
    /// (already aborted).
    pub fn finish_remote(&mut self, request: RequestId, result: Result<RemoteDone, String>) -> Option<bool> {
        let at = self.awaiting.iter().position(|s| s.request == request)?;
        let mut seq = self.awaiting.swap_remove(at);
        let complete = match &seq.mode {
            SeqMode::AwaitingKv(state) => !state.layers_written.is_empty() && state.layers_written.iter().all(|&w| w),
            _ => return None,
        };
        if !(complete && result.is_ok()) {
            // A peer still writing must not write over the local prefill: it gets other blocks.
            self.fence_direct_writes(&mut seq);
        }
        seq.mode = SeqMode::Local;
        match result {
            Ok(done) if complete => {
                let prompt = seq.tokens.len();
                seq.cached_tokens = seq.cached_tokens.max(done.prefill_cached.min(prompt - 1));
                self.remote_prefills.completed += 1;
                match done.logits {
                    Some(row) => {
                        seq.computed = prompt;
                        let out = super::sample_and_check(&mut seq, &row, &self.eos, self.max_context);
                        let finished = out.finish.is_some();
                        self.pending.push(out);
                        if finished {
                            self.blocks.release_all(&seq.blocks);
                            return Some(true);
                        }
                    }
                    None => seq.computed = prompt - 1,
                }
                self.enqueue(seq);
                Some(true)
            }
            outcome => {
                let reason = match outcome {
                    Err(reason) => reason,
                    Ok(_) => "the transfer ended with layers missing".to_owned(),
                };
                tracing::warn!(request, %reason, "remote prefill failed; prefilling locally");
                self.remote_prefills.fell_back += 1;
                self.enqueue(seq);
                Some(false)
            }
        }
    }

    /// Copies, for every exporting sequence in `exports`, `layer`'s blocks into a message for its receiver, or
    /// queues their copy into the receiver's pool.
    pub(super) fn export_layer(exports: &[ExportPlan], layer: usize, kv: &dyn KvBlockReader) {
        for plan in exports {
            let data = match &plan.peer {
                Some(peer) if peer.blocks.len() != plan.blocks.len() => LayerData::Failed(format!(
                    "{} destination blocks for {} exported blocks",
                    peer.blocks.len(),
                    plan.blocks.len()
                )),
                Some(peer) => {
                    let pairs: Vec<_> = plan.blocks.iter().copied().zip(peer.blocks.iter().copied()).collect();
                    kv.copy_to_peer(layer, &peer.pool, &pairs)
                        .map_or_else(LayerData::Failed, LayerData::Copied)
                }
                None => {
                    let (mut keys, mut values) = (Vec::new(), Vec::new());
                    for &block in plan.blocks.iter() {
                        kv.read_block_layer(layer, block, &mut keys, &mut values);
                    }
                    LayerData::Host { keys, values }
                }
            };
            // A receiver that went away has aborted the request; the engine frees it at the next command.
            let _ = plan.layers.send(ExportedLayer {
                layer: layer as u32,
                data,
            });
        }
    }

    /// The exporting sequences whose prompt completes in this step, among the planned `(running index, tokens)`.
    pub(super) fn export_plans(&self, plan: &[(usize, usize)]) -> Vec<ExportPlan> {
        plan.iter()
            .filter_map(|&(i, take)| {
                let seq = &self.running[i];
                let SeqMode::Export(export) = &seq.mode else {
                    return None;
                };
                (seq.computed + take == seq.tokens.len()).then(|| ExportPlan {
                    blocks: seq.blocks[export.first_block.min(seq.blocks.len())..].into(),
                    layers: export.layers.clone(),
                    peer: export.peer.clone(),
                })
            })
            .collect()
    }
}

/// One exporting sequence's blocks and receiver, for the duration of one forward pass.
#[derive(Debug)]
pub(super) struct ExportPlan {
    blocks: Arc<[BlockId]>,
    layers: mpsc::UnboundedSender<ExportedLayer>,
    peer: Option<PeerExport>,
}

/// Counts of remote prefills, for load reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemotePrefillStats {
    /// Requests that waited for remote KV right now.
    pub awaiting: usize,
    /// Transfers that completed and were used.
    pub completed: u64,
    /// Transfers that failed; the request prefilled locally.
    pub fell_back: u64,
    /// Blocks held back from reuse until a peer that may still write them directly disconnects.
    pub fenced_blocks: usize,
}

#[cfg(test)]
mod tests;
