//! Continuous batching: which sequences run in the next step, and what their outputs are.
//!
//! Each step has a token budget. Running sequences go first, oldest first — decodes take one token, prompts still
//! being prefilled take a chunk — then waiting sequences are admitted in (priority, arrival) order while budget,
//! slots and KV blocks last, reusing any cached prefix. When a running sequence needs a block and none is free,
//! the lowest-priority, newest sequence is preempted: its blocks are freed and it is recomputed later (its full
//! blocks usually survive in the prefix cache). The scheduler owns the block manager; the engine thread owns the
//! scheduler, so nothing here is shared.

mod remote;
mod sequence;
mod text;

use std::collections::VecDeque;
use std::sync::Arc;

use cleave_tokens::Tokenizer;

pub use remote::{
    ExportedLayer, KvExport, LayerData, PeerExport, RemoteDone, RemoteKvTarget, RemotePrefillStats, RemoteWriteError,
    RequestKind,
};
use sequence::Sequence;
pub use sequence::{Finish, FinishReason, NewRequest, RequestId, SeqOutput, Usage};

use crate::error::EngineError;
use cleave_tokens::BlockHash;

use crate::backend::Backend;
use crate::kv::{BlockManager, KvEvent, PrefixCacheStats};
use crate::model::SeqChunk;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Tokens (prefill chunks plus decodes) run per step.
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_running: usize,
    pub prefix_caching: bool,
    /// Separates the prefix hashes of different models or adapters.
    pub hash_seed: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            block_size: 16,
            max_batch_tokens: 512,
            max_running: 64,
            prefix_caching: true,
            hash_seed: 0,
        }
    }
}

/// A snapshot of the scheduler's load, for load reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    pub running: usize,
    pub waiting: usize,
    pub free_blocks: usize,
    pub total_blocks: usize,
    /// Prompt tokens of waiting and partly prefilled sequences not yet computed.
    pub queued_prefill_tokens: usize,
    pub preemptions: u64,
    pub prefix_cache: PrefixCacheStats,
    pub remote_prefill: RemotePrefillStats,
}

#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    /// Sequences whose prompt KV a prefill worker is writing; they hold blocks but take no part in steps.
    awaiting: Vec<Sequence>,
    /// Blocks a peer may still be writing into directly (CUDA IPC) although their request ended: held until the
    /// transfer connection closes (`end_direct_writes`), so no other request is handed memory being written.
    fenced: std::collections::HashMap<RequestId, Vec<crate::kv::BlockId>>,
    /// Outputs produced between steps (a first token sampled from a prefill worker's logits), returned by the next
    /// step.
    pending: Vec<SeqOutput>,
    remote_prefills: RemotePrefillStats,
    tokenizer: Arc<Tokenizer>,
    eos: Vec<u32>,
    max_context: usize,
    arrivals: u64,
    preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, n_blocks: usize, tokenizer: Arc<Tokenizer>, max_context: usize) -> Self {
        let eos = tokenizer.eos_token_ids().to_vec();
        Scheduler {
            config,
            blocks: BlockManager::new(n_blocks),
            waiting: VecDeque::new(),
            running: Vec::new(),
            awaiting: Vec::new(),
            fenced: std::collections::HashMap::new(),
            pending: Vec::new(),
            remote_prefills: RemotePrefillStats::default(),
            tokenizer,
            eos,
            max_context,
            arrivals: 0,
            preemptions: 0,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Prefix-cache publications and evictions since the last call.
    pub fn drain_kv_events(&mut self) -> Vec<KvEvent> {
        self.blocks.drain_events()
    }

    /// Every block hash in the prefix cache.
    pub fn cached_hashes(&self) -> Vec<BlockHash> {
        self.blocks.cached_hashes()
    }

    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty() || !self.pending.is_empty()
    }

    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            free_blocks: self.blocks.available(),
            total_blocks: self.blocks.n_blocks(),
            queued_prefill_tokens: self.waiting.iter().chain(&self.running).map(|s| s.uncomputed()).sum(),
            preemptions: self.preemptions,
            prefix_cache: self.blocks.stats(),
            remote_prefill: RemotePrefillStats {
                awaiting: self.awaiting.len(),
                fenced_blocks: self.fenced.values().map(Vec::len).sum(),
                ..self.remote_prefills
            },
        }
    }

    /// Queues a request. Refuses one that could never fit in the KV cache even alone.
    pub fn add(&mut self, req: NewRequest) -> Result<(), EngineError> {
        let bs = self.config.block_size;
        // Full prompt blocks are shared by all samples; each sample owns the rest of its blocks.
        let shared = req.prompt.len() / bs;
        let per_sample = (req.prompt.len() + req.sampling.stop.max_tokens).div_ceil(bs) - shared;
        let needed = shared + per_sample * req.sampling.n as usize;
        if needed > self.blocks.n_blocks() {
            return Err(EngineError::ResourceExhausted(format!(
                "the request needs {needed} KV blocks of {bs} tokens at its max_tokens; the cache has {} — \
                 lower max_tokens or n, or give the engine more KV memory",
                self.blocks.n_blocks()
            )));
        }
        self.arrivals += 1;
        let seq = Sequence::new(req, self.arrivals, bs, self.config.hash_seed, self.tokenizer.clone());
        self.enqueue(seq);
        Ok(())
    }

    /// Drops every sequence of a request and frees its blocks. Returns whether it was known.
    pub fn abort(&mut self, request: RequestId) -> bool {
        let mut found = false;
        for seq in self
            .running
            .iter()
            .chain(&self.waiting)
            .filter(|s| s.request == request)
        {
            self.blocks.release_all(&seq.blocks);
            found = true;
        }
        if let Some(at) = self.awaiting.iter().position(|s| s.request == request) {
            let mut seq = self.awaiting.swap_remove(at);
            self.fence_direct_writes(&mut seq);
            self.blocks.release_all(&seq.blocks);
            found = true;
        }
        self.running.retain(|s| s.request != request);
        self.waiting.retain(|s| s.request != request);
        self.awaiting.retain(|s| s.request != request);
        found
    }

    /// Runs one batch through the model and returns what each scheduled sequence produced.
    /// A backend error fails the step; the caller fails the requests it cannot continue.
    pub fn step(&mut self, backend: &mut dyn Backend) -> Result<Vec<SeqOutput>, EngineError> {
        if !self.pending.is_empty() {
            // Delivered before the next forward pass, not after it: a first token is not held for a step.
            return Ok(std::mem::take(&mut self.pending));
        }
        let plan = self.plan();
        if plan.is_empty() {
            return Ok(Vec::new());
        }
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .map(|&(i, take)| {
                let s = &self.running[i];
                SeqChunk {
                    tokens: &s.tokens[s.computed..s.computed + take],
                    start_pos: s.computed,
                    blocks: &s.blocks,
                    want_logits: s.computed + take == s.tokens.len() && s.wants_logits(),
                }
            })
            .collect();
        let exports = self.export_plans(&plan);
        let logits = if exports.is_empty() {
            backend.forward_plain(&chunks)?
        } else {
            backend.forward(&chunks, &mut |layer, kv| Self::export_layer(&exports, layer, kv))?
        };
        let vocab = backend.model_config().vocab_size;
        self.apply(&plan, &logits, vocab, backend)
    }

    /// Chooses this step's work: `(index into running, tokens to compute)`, allocating the blocks it needs.
    fn plan(&mut self) -> Vec<(usize, usize)> {
        let bs = self.config.block_size;
        let mut budget = self.config.max_batch_tokens;
        let mut plan = Vec::new();
        let mut preempted = false;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let take = self.running[i].uncomputed().min(budget);
            let needed = (self.running[i].computed + take)
                .div_ceil(bs)
                .saturating_sub(self.running[i].blocks.len());
            // Make room by preempting the least important sequence after this one.
            while self.blocks.available() < needed && self.running.len() > i + 1 {
                let victim = self.pick_victim(i + 1);
                let seq = self.running.remove(victim);
                self.preempt(seq);
                preempted = true;
            }
            if self.blocks.available() < needed {
                let seq = self.running.remove(i);
                self.preempt(seq);
                preempted = true;
                continue;
            }
            self.grow(i, needed);
            plan.push((i, take));
            budget -= take;
            i += 1;
        }
        // A victim preempted above sits in `waiting` now; admitting it again in this step would thrash.
        while budget > 0 && self.running.len() < self.config.max_running && !preempted {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            if seq.blocks.is_empty() && self.config.prefix_caching {
                let reusable = (seq.tokens.len() - 1) / bs;
                seq.blocks = self
                    .blocks
                    .acquire_prefix(&seq.hashes[..reusable.min(seq.hashes.len())]);
                seq.computed = seq.blocks.len() * bs;
                seq.registered = seq.blocks.len();
                if seq.generated() == 0 {
                    seq.cached_tokens = seq.computed;
                }
            }
            let take = seq.uncomputed().min(budget);
            let needed = (seq.computed + take).div_ceil(bs).saturating_sub(seq.blocks.len());
            if self.blocks.available() < needed {
                self.blocks.release_all(&seq.blocks);
                seq.blocks.clear();
                seq.computed = 0;
                seq.registered = 0;
                self.waiting.push_front(seq);
                break;
            }
            self.running.push(seq);
            let idx = self.running.len() - 1;
            self.grow(idx, needed);
            plan.push((idx, take));
            budget -= take;
        }
        plan
    }

    fn grow(&mut self, i: usize, n: usize) {
        for _ in 0..n {
            if let Some(b) = self.blocks.allocate() {
                self.running[i].blocks.push(b);
            }
        }
    }

    /// Index (at or after `from`) of the running sequence to preempt: lowest priority, then newest.
    fn pick_victim(&self, from: usize) -> usize {
        (from..self.running.len())
            .max_by_key(|&j| (self.running[j].priority, self.running[j].arrival))
            .unwrap_or(from)
    }

    fn preempt(&mut self, mut seq: Sequence) {
        self.blocks.release_all(&seq.blocks);
        seq.blocks.clear();
        seq.computed = 0;
        seq.registered = 0;
        self.preemptions += 1;
        self.enqueue(seq);
    }

    fn enqueue(&mut self, seq: Sequence) {
        let key = (seq.priority, seq.arrival);
        let at = self.waiting.partition_point(|s| (s.priority, s.arrival) <= key);
        self.waiting.insert(at, seq);
    }

    /// Advances the scheduled sequences past the step: publishes full blocks, samples, checks stops.
    fn apply(
        &mut self,
        plan: &[(usize, usize)],
        logits: &[f32],
        vocab: usize,
        backend: &mut dyn Backend,
    ) -> Result<Vec<SeqOutput>, EngineError> {
        let bs = self.config.block_size;
        let mut outputs = Vec::new();
        let mut rows = logits.chunks_exact(vocab);
        let mut finished = Vec::new();
        let mut forks = Vec::new();
        for &(i, take) in plan {
            let seq = &mut self.running[i];
            seq.computed += take;
            if self.config.prefix_caching {
                let full = (seq.computed / bs).min(seq.hashes.len());
                for b in seq.registered..full {
                    self.blocks.register(seq.blocks[b], seq.hashes[b]);
                }
                seq.registered = seq.registered.max(full);
            }
            if seq.computed < seq.tokens.len() {
                continue;
            }
            if seq.exports() {
                if seq.wants_logits()
                    && let Some(row) = rows.next()
                {
                    seq.send_export_logits(row);
                }
                let mut out = seq.output();
                out.finish = Some(Finish {
                    reason: FinishReason::Prefilled,
                    usage: seq.usage(),
                });
                outputs.push(out);
                finished.push(i);
                continue;
            }
            let Some(row) = rows.next() else { break };
            for index in 1..=std::mem::take(&mut seq.forks_pending) {
                let mut child = seq.fork(index, self.tokenizer.clone());
                share_prefix(&mut self.blocks, backend, &mut child, &seq.blocks, seq.computed, bs)?;
                let out = sample_and_check(&mut child, row, &self.eos, self.max_context);
                if out.finish.is_some() {
                    self.blocks.release_all(&child.blocks);
                } else {
                    forks.push(child);
                }
                outputs.push(out);
            }
            let out = sample_and_check(seq, row, &self.eos, self.max_context);
            if out.finish.is_some() {
                finished.push(i);
            }
            outputs.push(out);
        }
        for &i in finished.iter().rev() {
            let seq = self.running.remove(i);
            self.blocks.release_all(&seq.blocks);
        }
        for child in forks {
            if child.blocks.is_empty() {
                self.enqueue(child);
            } else {
                self.running.push(child);
            }
        }
        Ok(outputs)
    }
}

/// Gives a forked sample the parent's computed prompt: full blocks are shared by reference, the partial last block
/// is copied (the samples write different tokens into it). Without a free block the child recomputes later, from
/// the prefix cache.
fn share_prefix(
    blocks: &mut BlockManager,
    backend: &mut dyn Backend,
    child: &mut Sequence,
    parent_blocks: &[crate::kv::BlockId],
    computed: usize,
    block_size: usize,
) -> Result<(), EngineError> {
    let full = computed / block_size;
    let partial = !computed.is_multiple_of(block_size);
    if partial && blocks.available() == 0 {
        return Ok(());
    }
    for &b in &parent_blocks[..full] {
        blocks.acquire(b);
        child.blocks.push(b);
    }
    if partial && let Some(copy) = blocks.allocate() {
        child.blocks.push(copy);
        backend.copy_block(parent_blocks[full], copy)?;
    }
    child.computed = computed;
    child.registered = full;
    Ok(())
}

/// Samples the next token from `row`, appends it, and decides whether the sequence is finished.
pub(super) fn sample_and_check(seq: &mut Sequence, row: &[f32], eos: &[u32], max_context: usize) -> SeqOutput {
    let (token, logprob) = seq.sampler.sample(row);
    seq.push_token(token);
    let mut out = seq.output();
    out.token_ids.push(token);
    out.logprobs.extend(logprob);
    let is_eos = !seq.stop.ignore_eos && eos.contains(&token);
    let mut by_stop_string = false;
    let reason = if is_eos || seq.stop.stop_token_ids.contains(&token) {
        Some(FinishReason::Stop)
    } else {
        let delta = seq.text.push(token);
        out.text = delta.text;
        by_stop_string = delta.stopped;
        if delta.stopped {
            Some(FinishReason::Stop)
        } else if seq.generated() >= seq.stop.max_tokens || seq.tokens.len() >= max_context {
            Some(FinishReason::Length)
        } else {
            None
        }
    };
    if let Some(reason) = reason {
        if !by_stop_string {
            // Text held back for a stop-string match that never came is released at the end.
            out.text.push_str(&seq.text.finish());
        }
        out.finish = Some(Finish {
            reason,
            usage: seq.usage(),
        });
    }
    out
}

#[cfg(test)]
mod tests;
