//! Per-phase signals from the cluster's Prometheus metrics: a [`Snapshot`] folds the router and worker
//! expositions of one scrape into cumulative totals; a [`SignalWindow`] keeps the snapshots of the last window
//! and turns the first and last into [`Signals`] — quantiles from histogram bucket deltas, rates from counter
//! deltas, queue gauges as their latest value, peak and growth.
//!
//! Invariant: everything windowed is a difference of two cumulative snapshots, so a quantile covers exactly the
//! requests that finished inside the window; a counter that went down (a restarted router) counts from zero.
//! Cost: O(samples) per scrape to fold; O(buckets) per window to compute.

use std::collections::VecDeque;

use crate::exposition::Sample;

/// Metric names as exposed by `cleave-telemetry` (the `cleave_` prefix, the unit and the counter suffix included).
pub mod names {
    pub const TTFT: &str = "cleave_router_time_to_first_token_seconds";
    pub const ITL: &str = "cleave_router_inter_token_latency_seconds";
    pub const QUEUE_WAIT: &str = "cleave_router_queue_wait_seconds";
    pub const REQUESTS: &str = "cleave_router_requests_total";
    pub const PROMPT_TOKENS: &str = "cleave_router_prompt_tokens_total";
    pub const CACHED_TOKENS: &str = "cleave_router_cached_tokens_total";
    pub const GENERATED_TOKENS: &str = "cleave_router_generated_tokens_total";
    pub const QUEUED_REQUESTS: &str = "cleave_router_queued_requests";
    pub const QUEUED_PREFILL_TOKENS: &str = "cleave_worker_queued_prefill_tokens";
    pub const WAITING: &str = "cleave_worker_waiting_sequences";
    pub const RUNNING: &str = "cleave_worker_running_sequences";
    pub const KV_USED: &str = "cleave_worker_kv_blocks_used";
    pub const KV_FREE: &str = "cleave_worker_kv_blocks_free";
}

/// A cumulative histogram: `(upper bound, observations ≤ bound)` sorted by bound, the last one `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, f64)>,
}

impl Histogram {
    /// Adds one cumulative bucket (several sources with the same bounds sum up).
    pub fn add_bucket(&mut self, le: f64, count: f64) {
        match self.buckets.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, c)) => *c += count,
            None => {
                self.buckets.push((le, count));
                self.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            }
        }
    }

    /// Observations in total.
    pub fn count(&self) -> f64 {
        self.buckets.last().map_or(0.0, |(_, c)| *c)
    }

    /// The observations made after `earlier` (bucket by bucket; a reset counts from zero).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let reset = self.count() < earlier.count();
        let buckets = self
            .buckets
            .iter()
            .map(|&(le, count)| {
                let before = if reset {
                    0.0
                } else {
                    earlier.buckets.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c)
                };
                (le, (count - before).max(0.0))
            })
            .collect();
        Histogram { buckets }
    }

    /// The `q` quantile (0..=1) by linear interpolation inside its bucket, as Prometheus' `histogram_quantile`;
    /// `None` without observations. A quantile in the `+Inf` bucket is the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = count - lower.1;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * fraction);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

/// One phase's gauges summed over its workers at one scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseGauges {
    /// Workers that reported.
    pub workers: u32,
    pub queued_prefill_tokens: f64,
    pub waiting: f64,
    pub running: f64,
    pub kv_used: f64,
    pub kv_free: f64,
}

/// One scrape of the whole cluster, folded: cumulative router totals and the workers' gauges by phase (`both`
/// workers count as decode — they own sequences).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Seconds since an epoch the caller chooses (monotonic).
    pub at: f64,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub queue_wait: Histogram,
    pub requests: f64,
    pub prompt_tokens: f64,
    pub cached_tokens: f64,
    pub generated_tokens: f64,
    pub queued_requests: f64,
    pub prefill: PhaseGauges,
    pub decode: PhaseGauges,
}

impl Snapshot {
    /// Folds the samples of every exposition scraped at `at`.
    pub fn fold<'a>(at: f64, expositions: impl IntoIterator<Item = &'a [Sample]>) -> Snapshot {
        let mut snapshot = Snapshot {
            at,
            ..Snapshot::default()
        };
        for samples in expositions {
            let mut workers = std::collections::BTreeSet::new();
            for sample in samples {
                snapshot.add(sample, &mut workers);
            }
            for (_worker, role) in workers {
                snapshot.phase(&role).workers += 1;
            }
        }
        snapshot
    }

    fn phase(&mut self, role: &str) -> &mut PhaseGauges {
        if role == "prefill" {
            &mut self.prefill
        } else {
            &mut self.decode
        }
    }

    fn add(&mut self, s: &Sample, workers: &mut std::collections::BTreeSet<(String, String)>) {
        let bucket = |h: &mut Histogram| {
            if let Some(le) = crate::exposition::parse_value(s.label("le")) {
                h.add_bucket(le, s.value);
            }
        };
        match s.name.strip_suffix("_bucket") {
            Some(names::TTFT) => return bucket(&mut self.ttft),
            Some(names::ITL) => return bucket(&mut self.itl),
            Some(names::QUEUE_WAIT) => return bucket(&mut self.queue_wait),
            _ => {}
        }
        match s.name.as_str() {
            names::REQUESTS => self.requests += s.value,
            names::PROMPT_TOKENS => self.prompt_tokens += s.value,
            names::CACHED_TOKENS => self.cached_tokens += s.value,
            names::GENERATED_TOKENS => self.generated_tokens += s.value,
            names::QUEUED_REQUESTS => self.queued_requests += s.value,
            names::QUEUED_PREFILL_TOKENS | names::WAITING | names::RUNNING | names::KV_USED | names::KV_FREE => {
                workers.insert((s.label("worker").to_owned(), s.label("role").to_owned()));
                let phase = self.phase(s.label("role"));
                let field = match s.name.as_str() {
                    names::QUEUED_PREFILL_TOKENS => &mut phase.queued_prefill_tokens,
                    names::WAITING => &mut phase.waiting,
                    names::RUNNING => &mut phase.running,
                    names::KV_USED => &mut phase.kv_used,
                    _ => &mut phase.kv_free,
                };
                *field += s.value;
            }
            _ => {}
        }
    }
}

/// What the planner decides from: the last window of the cluster's behaviour.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Signals {
    /// Seconds between the window's first and last snapshot (0 with a single snapshot: no rates, no quantiles).
    pub window_secs: f64,
    /// Time to first token, seconds, over requests whose first token came inside the window.
    pub ttft_p50: Option<f64>,
    pub ttft_p90: Option<f64>,
    /// Inter-token latency, seconds.
    pub itl_p50: Option<f64>,
    pub itl_p90: Option<f64>,
    /// Queue wait (admission to first token), seconds.
    pub queue_wait_p90: Option<f64>,
    /// Requests finished per second.
    pub request_rate: f64,
    /// Prompt tokens routed per second that the prefix caches did not already hold (prefill work).
    pub prefill_tokens_per_s: f64,
    /// Tokens generated per second (decode work).
    pub decode_tokens_per_s: f64,
    /// Mean prompt and output lengths of the window's requests.
    pub mean_input_tokens: Option<f64>,
    pub mean_output_tokens: Option<f64>,
    /// Prompt tokens queued for prefill on every worker (prefill and decode), now, and their peak in the window.
    pub queued_prefill_tokens: f64,
    pub queued_prefill_tokens_peak: f64,
    /// The lowest queued prefill tokens in the window: above zero, prefill was saturated throughout.
    pub queued_prefill_tokens_low: f64,
    /// Queued prefill tokens now minus at the window's start: positive while the backlog grows.
    pub queued_prefill_tokens_growth: f64,
    /// Requests waiting for their first token at the routers, now.
    pub queued_requests: f64,
    /// KV blocks in use over all KV blocks of the decode (and both-role) workers, now.
    pub kv_utilization: Option<f64>,
    /// Sequences waiting to be scheduled on decode workers, now.
    pub decode_waiting: f64,
    /// Workers of each phase that reported metrics, now.
    pub prefill_workers_seen: u32,
    pub decode_workers_seen: u32,
}

/// The snapshots of the last `window_secs`.
#[derive(Debug, Clone)]
pub struct SignalWindow {
    window_secs: f64,
    snapshots: VecDeque<Snapshot>,
}

impl SignalWindow {
    pub fn new(window_secs: f64) -> Self {
        Self {
            window_secs,
            snapshots: VecDeque::new(),
        }
    }

    /// Adds a snapshot and forgets those older than the window (keeping one at or before its start).
    pub fn push(&mut self, snapshot: Snapshot) {
        let start = snapshot.at - self.window_secs;
        self.snapshots.push_back(snapshot);
        while self.snapshots.len() > 2 && self.snapshots.get(1).is_some_and(|s| s.at <= start) {
            self.snapshots.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.snapshots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty()
    }

    /// The window's signals; `None` before the first snapshot.
    pub fn signals(&self) -> Option<Signals> {
        let (first, last) = (self.snapshots.front()?, self.snapshots.back()?);
        Some(signals_between(first, last, self.snapshots.iter()))
    }
}

/// The signals between two cumulative snapshots; `all` (first to last) gives the queue's peak.
pub fn signals_between<'a>(
    first: &Snapshot,
    last: &Snapshot,
    all: impl Iterator<Item = &'a Snapshot> + Clone,
) -> Signals {
    let secs = last.at - first.at;
    let delta = |now: f64, then: f64| if now >= then { now - then } else { now };
    let rate = |now: f64, then: f64| if secs > 0.0 { delta(now, then) / secs } else { 0.0 };
    let (ttft, itl, wait) = (
        last.ttft.since(&first.ttft),
        last.itl.since(&first.itl),
        last.queue_wait.since(&first.queue_wait),
    );
    let requests = delta(last.requests, first.requests);
    let prompt = delta(last.prompt_tokens, first.prompt_tokens);
    let generated = delta(last.generated_tokens, first.generated_tokens);
    let cached = delta(last.cached_tokens, first.cached_tokens).min(prompt);
    let queued = |s: &Snapshot| s.prefill.queued_prefill_tokens + s.decode.queued_prefill_tokens;
    let kv_total = last.decode.kv_used + last.decode.kv_free;
    let per_request = |tokens: f64| (requests > 0.0).then(|| tokens / requests);
    Signals {
        window_secs: secs,
        ttft_p50: ttft.quantile(0.5),
        ttft_p90: ttft.quantile(0.9),
        itl_p50: itl.quantile(0.5),
        itl_p90: itl.quantile(0.9),
        queue_wait_p90: wait.quantile(0.9),
        request_rate: rate(last.requests, first.requests),
        prefill_tokens_per_s: if secs > 0.0 { (prompt - cached) / secs } else { 0.0 },
        decode_tokens_per_s: rate(last.generated_tokens, first.generated_tokens),
        mean_input_tokens: per_request(prompt),
        mean_output_tokens: per_request(generated),
        queued_prefill_tokens: queued(last),
        queued_prefill_tokens_peak: all.clone().map(queued).fold(0.0, f64::max),
        queued_prefill_tokens_low: all.map(queued).fold(f64::INFINITY, f64::min).min(queued(last)),
        queued_prefill_tokens_growth: queued(last) - queued(first),
        queued_requests: last.queued_requests,
        kv_utilization: (kv_total > 0.0).then(|| last.decode.kv_used / kv_total),
        decode_waiting: last.decode.waiting,
        prefill_workers_seen: last.prefill.workers,
        decode_workers_seen: last.decode.workers,
    }
}

#[cfg(test)]
mod tests;
