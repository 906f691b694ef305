//! The routing decision: `cost = load − overlap credit`, everything in prefill-token units.
//!
//! A worker's cost for a request is the prefill work already queued on it, plus a per-sequence charge for the
//! decodes it is running or holding, plus the prompt tokens it would still have to compute after its cached prefix.
//! A cache-hot worker therefore wins only while its queue is short: the load terms grow as requests pile onto it,
//! and the next request goes elsewhere (the failure mode of pure cache-affinity routers). O(candidates).

use crate::index::WorkerIdx;

/// A worker's most recent load report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerLoad {
    pub running: u32,
    pub waiting: u32,
    pub queued_prefill_tokens: u64,
    pub free_blocks: u32,
    pub total_blocks: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub block_size: usize,
    /// What one running or waiting sequence costs, in prefill tokens (a decode step slows every prefill a bit).
    pub sequence_cost_tokens: f64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            block_size: 16,
            sequence_cost_tokens: 64.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub worker: WorkerIdx,
    pub load: WorkerLoad,
    /// Leading prompt blocks the worker holds (from `PrefixIndex::match_prefix`).
    pub cached_blocks: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub worker: WorkerIdx,
    pub cost: f64,
    /// Prompt tokens the chosen worker can reuse (it always computes at least the last one).
    pub cached_tokens: usize,
}

/// The cheapest candidate for a prompt of `prompt_tokens` tokens; ties go to the less loaded, then lower index.
pub fn choose(prompt_tokens: usize, candidates: &[Candidate], config: &PolicyConfig) -> Option<Decision> {
    candidates
        .iter()
        .map(|c| {
            let cached_tokens = (c.cached_blocks * config.block_size).min(prompt_tokens.saturating_sub(1));
            let load = c.load.queued_prefill_tokens as f64
                + config.sequence_cost_tokens * f64::from(c.load.running + c.load.waiting);
            let cost = load + (prompt_tokens - cached_tokens) as f64;
            (
                Decision {
                    worker: c.worker,
                    cost,
                    cached_tokens,
                },
                c.load.running + c.load.waiting,
            )
        })
        .min_by(|(a, a_seqs), (b, b_seqs)| {
            a.cost
                .total_cmp(&b.cost)
                .then(a_seqs.cmp(b_seqs))
                .then(a.worker.cmp(&b.worker))
        })
        .map(|(d, _)| d)
}

#[cfg(test)]
mod tests;
