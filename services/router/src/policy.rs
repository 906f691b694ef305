//! The routing decision: `cost = load − overlap credit`, everything in prefill-token units, then whether the prompt
//! is prefilled where it decodes or on a separate prefill worker.
//!
//! A worker's cost for a request is the prefill work already queued on it, plus a per-sequence charge for the
//! decodes it is running or holding, plus the prompt tokens it would still have to compute after its cached prefix.
//! A cache-hot worker therefore wins only while its queue is short: the load terms grow as requests pile onto it,
//! and the next request goes elsewhere (the failure mode of pure cache-affinity routers).
//!
//! Disaggregation is conditional ([`plan_route`]): the decode worker D is chosen first; a prefill worker P is added
//! only when D would still compute at least `remote_prefill_min_tokens` prompt tokens (shipping a short prompt's
//! KV costs more than computing it) and some prefill worker has headroom, P chosen among those by the same cost.
//! Invariant: a plan always names a decode-capable D; P is set exactly when the reason is `Remote`. O(candidates).
//!
//! Admission ([`has_decode_headroom`]) runs before the choice: a decode worker whose queue is at its bound or whose
//! free KV blocks cannot hold the prompt is not a candidate, and when no candidate is left the router refuses the
//! request at once (`RESOURCE_EXHAUSTED`) instead of queueing it without bound.

use std::fmt;

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
    /// Prefill remotely only when the decode worker would compute at least this many prompt tokens itself.
    pub remote_prefill_min_tokens: usize,
    /// A prefill worker with this many prefill tokens queued (or more) takes no further remote prefills.
    pub prefill_max_queued_tokens: u64,
    /// A decode worker with this many requests waiting for their first token (or more) takes no new request
    /// (admission control).
    pub max_waiting_per_worker: u32,
    /// Admission also requires free KV blocks for the prompt on the decode worker.
    pub kv_headroom: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            block_size: 16,
            sequence_cost_tokens: 64.0,
            remote_prefill_min_tokens: 256,
            prefill_max_queued_tokens: 8192,
            max_waiting_per_worker: 64,
            kv_headroom: true,
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

/// Why a request is prefilled where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillReason {
    /// The decode worker has fewer than `remote_prefill_min_tokens` prompt tokens left to compute.
    ShortPrompt,
    /// Enough to compute, but no reachable prefill worker is below its queue limit with free blocks.
    NoPrefillHeadroom,
    /// A prefill worker computes the prompt and ships its KV to the decode worker.
    Remote,
}

impl PrefillReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PrefillReason::ShortPrompt => "local: short prompt",
            PrefillReason::NoPrefillHeadroom => "local: no prefill worker with headroom",
            PrefillReason::Remote => "remote",
        }
    }
}

impl fmt::Display for PrefillReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a request runs: its decode worker, and its prefill worker when prefill is remote.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutePlan {
    pub decode: Decision,
    /// Set exactly when `reason` is [`PrefillReason::Remote`].
    pub prefill: Option<Decision>,
    pub reason: PrefillReason,
}

impl RoutePlan {
    /// Prompt tokens the decode worker still needs computed (by itself or by the prefill worker).
    pub fn uncached_tokens(&self, prompt_tokens: usize) -> usize {
        prompt_tokens - self.decode.cached_tokens
    }
}

/// Whether a prefill worker may take another remote prefill.
pub fn has_prefill_headroom(load: &WorkerLoad, config: &PolicyConfig) -> bool {
    load.queued_prefill_tokens < config.prefill_max_queued_tokens && load.free_blocks > 0
}

/// KV blocks a prompt of `prompt_tokens` tokens occupies on its decode worker. Cached prefix blocks count too: a
/// reused block stops being evictable, so it leaves the worker's reported `free_blocks` all the same.
pub fn prompt_blocks(prompt_tokens: usize, config: &PolicyConfig) -> u32 {
    u32::try_from(prompt_tokens.div_ceil(config.block_size.max(1))).unwrap_or(u32::MAX)
}

/// Whether a decode worker may be sent another request now (admission control): fewer than
/// `max_waiting_per_worker` requests are `queued` on it (waiting for their first token), and, with
/// `kv_headroom`, its free-or-evictable KV blocks hold the whole prompt (a worker that has not reported a capacity,
/// `total_blocks == 0`, is judged by its queue alone). A prompt larger than the worker's whole cache is let through
/// so the worker refuses it with its own error rather than 429 forever.
pub fn has_decode_headroom(load: &WorkerLoad, queued: u32, prompt_tokens: usize, config: &PolicyConfig) -> bool {
    if queued >= config.max_waiting_per_worker {
        return false;
    }
    let needed = prompt_blocks(prompt_tokens, config);
    !config.kv_headroom || load.total_blocks == 0 || needed > load.total_blocks || load.free_blocks >= needed
}

/// Chooses D among `decode` (decode or both-role workers) by [`choose`], then P among the `prefill` workers with
/// headroom, by the same cost over their own cached prefixes, when D's uncached prompt is long enough.
/// `None` when there is no decode candidate.
pub fn plan_route(
    prompt_tokens: usize,
    decode: &[Candidate],
    prefill: &[Candidate],
    config: &PolicyConfig,
) -> Option<RoutePlan> {
    let d = choose(prompt_tokens, decode, config)?;
    let local = |reason| RoutePlan {
        decode: d,
        prefill: None,
        reason,
    };
    if prompt_tokens - d.cached_tokens < config.remote_prefill_min_tokens {
        return Some(local(PrefillReason::ShortPrompt));
    }
    let open: Vec<Candidate> = prefill
        .iter()
        .filter(|c| has_prefill_headroom(&c.load, config))
        .copied()
        .collect();
    Some(match choose(prompt_tokens, &open, config) {
        Some(p) => RoutePlan {
            decode: d,
            prefill: Some(p),
            reason: PrefillReason::Remote,
        },
        None => local(PrefillReason::NoPrefillHeadroom),
    })
}

#[cfg(test)]
mod tests;
