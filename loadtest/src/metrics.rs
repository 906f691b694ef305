//! Per-request records and per-stage summaries: throughput, latency percentiles, errors by gRPC code, goodput.
//!
//! Definitions: TTFT = send → first token-carrying message; ITL = gaps between later token messages;
//! TPOT = (end-to-end − TTFT) / (output tokens − 1); goodput = requests/s that succeeded with TTFT ≤ SLO and
//! TPOT ≤ SLO (a one-token request has no TPOT and meets that half). Throughput divides by the stage's span, from
//! its first send to its last completion. Invariant: a failed request has `error` set and counts in no latency
//! percentile. Cost: sorting each latency series once per summary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::campaign::Slo;
use crate::workload::RequestSpec;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestRecord {
    pub id: u64,
    /// Seconds after the run started.
    pub sent_s: f64,
    pub session: Option<u64>,
    pub input_words: u32,
    pub max_tokens: u32,
    /// From the router's `usage`.
    pub prompt_tokens: Option<u32>,
    pub cached_tokens: Option<u32>,
    pub output_tokens: u32,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2e_ms: f64,
    #[serde(default)]
    pub itl_ms: Vec<f64>,
    /// The gRPC code's name when it failed.
    pub error: Option<String>,
    #[serde(default)]
    pub error_message: Option<String>,
}

impl RequestRecord {
    pub fn new(id: u64, spec: &RequestSpec, sent_s: f64) -> RequestRecord {
        RequestRecord {
            id,
            sent_s,
            session: spec.session,
            input_words: spec.input_words,
            max_tokens: spec.max_tokens,
            prompt_tokens: None,
            cached_tokens: None,
            output_tokens: 0,
            ttft_ms: None,
            tpot_ms: None,
            e2e_ms: 0.0,
            itl_ms: Vec::new(),
            error: None,
            error_message: None,
        }
    }

    pub fn finish(&mut self) {
        if let Some(ttft) = self.ttft_ms
            && self.output_tokens > 1
        {
            self.tpot_ms = Some((self.e2e_ms - ttft) / f64::from(self.output_tokens - 1));
        }
        if self.output_tokens == 0 {
            self.fail("DataLoss", "stream ended without a token");
        }
    }

    pub fn fail(&mut self, code: &str, message: &str) {
        self.error = Some(code.into());
        self.error_message = Some(message.into());
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    pub fn meets(&self, slo: &Slo) -> bool {
        self.ok() && self.ttft_ms.is_some_and(|t| t <= slo.ttft_ms) && self.tpot_ms.is_none_or(|t| t <= slo.tpot_ms)
    }

    pub fn done_s(&self) -> f64 {
        self.sent_s + self.e2e_ms / 1e3
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Percentiles {
        values.retain(|v| v.is_finite());
        if values.is_empty() {
            return Percentiles::default();
        }
        values.sort_by(f64::total_cmp);
        let at = |p: f64| values[((values.len() as f64 * p).ceil() as usize).clamp(1, values.len()) - 1];
        Percentiles {
            count: values.len(),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: values[values.len() - 1],
        }
    }
}

/// What happened around one injected fault.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultOutcome {
    pub process: String,
    pub action: String,
    /// Seconds after the run started.
    pub at_s: f64,
    /// Requests sent after the fault that failed, by code.
    pub errors: BTreeMap<String, usize>,
    /// From the fault to the first success sent after the last failure (0 with no failures); `None` when the stage
    /// ended still failing.
    pub recovery_s: Option<f64>,
    /// TTFT and end-to-end latency of successful requests sent between the fault and recovery (at least 1 s).
    pub ttft_during_ms: Percentiles,
    pub e2e_during_ms: Percentiles,
    /// The same before the fault, for comparison.
    pub ttft_before_ms: Percentiles,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageSummary {
    pub name: String,
    /// The stage's name in the campaign (swept stages share it).
    pub group: String,
    pub target: String,
    pub workload: String,
    pub arrival: String,
    pub offered_rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub start_s: f64,
    pub span_s: f64,
    pub requests: usize,
    pub succeeded: usize,
    pub errors: BTreeMap<String, usize>,
    pub request_rate: f64,
    pub input_tokens_per_s: f64,
    pub output_tokens_per_s: f64,
    pub goodput: f64,
    /// Share of all requests that met the SLO.
    pub slo_attainment: f64,
    pub ttft_ms: Percentiles,
    pub tpot_ms: Percentiles,
    pub itl_ms: Percentiles,
    pub e2e_ms: Percentiles,
    pub prompt_tokens: Percentiles,
    pub output_tokens: Percentiles,
    /// Cached prompt tokens / prompt tokens over the successful requests.
    pub cache_hit_ratio: f64,
    /// The generator's CPU seconds over the stage and its share of the cores it may use.
    pub generator_cpu_s: f64,
    pub generator_cpu_share: f64,
    pub faults: Vec<FaultOutcome>,
}

impl StageSummary {
    /// Fills the measured fields from this stage's records (its identity fields are left as they are).
    pub fn measure(&mut self, records: &[RequestRecord], slo: &Slo) {
        self.requests = records.len();
        let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.ok()).collect();
        self.succeeded = ok.len();
        self.errors = BTreeMap::new();
        for r in records {
            if let Some(code) = &r.error {
                *self.errors.entry(code.clone()).or_default() += 1;
            }
        }
        let first = records.iter().map(|r| r.sent_s).fold(f64::INFINITY, f64::min);
        let last = records
            .iter()
            .map(RequestRecord::done_s)
            .fold(f64::NEG_INFINITY, f64::max);
        self.start_s = if first.is_finite() { first } else { 0.0 };
        self.span_s = (last - first).max(1e-9);
        if records.is_empty() {
            self.span_s = 0.0;
        }
        let per_s = |x: f64| if self.span_s > 0.0 { x / self.span_s } else { 0.0 };
        let prompt: u64 = ok
            .iter()
            .map(|r| u64::from(r.prompt_tokens.unwrap_or(r.input_words)))
            .sum();
        let cached: u64 = ok.iter().map(|r| u64::from(r.cached_tokens.unwrap_or(0))).sum();
        let output: u64 = ok.iter().map(|r| u64::from(r.output_tokens)).sum();
        self.request_rate = per_s(ok.len() as f64);
        self.input_tokens_per_s = per_s(prompt as f64);
        self.output_tokens_per_s = per_s(output as f64);
        let good = records.iter().filter(|r| r.meets(slo)).count();
        self.goodput = per_s(good as f64);
        self.slo_attainment = if records.is_empty() {
            0.0
        } else {
            good as f64 / records.len() as f64
        };
        self.ttft_ms = Percentiles::of(ok.iter().filter_map(|r| r.ttft_ms).collect());
        self.tpot_ms = Percentiles::of(ok.iter().filter_map(|r| r.tpot_ms).collect());
        self.itl_ms = Percentiles::of(ok.iter().flat_map(|r| r.itl_ms.iter().copied()).collect());
        self.e2e_ms = Percentiles::of(ok.iter().map(|r| r.e2e_ms).collect());
        self.prompt_tokens = Percentiles::of(ok.iter().filter_map(|r| r.prompt_tokens.map(f64::from)).collect());
        self.output_tokens = Percentiles::of(ok.iter().map(|r| f64::from(r.output_tokens)).collect());
        self.cache_hit_ratio = if prompt > 0 { cached as f64 / prompt as f64 } else { 0.0 };
    }
}

/// Errors, recovery and latency around a fault at `at_s` (run time), from the stage's records.
pub fn fault_outcome(records: &[RequestRecord], process: &str, action: &str, at_s: f64) -> FaultOutcome {
    let after: Vec<&RequestRecord> = records.iter().filter(|r| r.done_s() >= at_s).collect();
    let mut errors = BTreeMap::new();
    for r in &after {
        if let Some(code) = &r.error {
            *errors.entry(code.clone()).or_insert(0) += 1;
        }
    }
    let last_failure = after
        .iter()
        .filter(|r| !r.ok())
        .map(|r| r.sent_s)
        .fold(f64::NEG_INFINITY, f64::max);
    let recovery_s = if last_failure.is_finite() {
        after
            .iter()
            .filter(|r| r.ok() && r.sent_s > last_failure)
            .map(|r| r.done_s() - at_s)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
    } else {
        Some(0.0)
    };
    let window_end = at_s + recovery_s.unwrap_or(f64::INFINITY).max(1.0);
    let during: Vec<&RequestRecord> = records
        .iter()
        .filter(|r| r.ok() && r.done_s() >= at_s && r.sent_s <= window_end)
        .collect();
    FaultOutcome {
        process: process.into(),
        action: action.into(),
        at_s,
        errors,
        recovery_s,
        ttft_during_ms: Percentiles::of(during.iter().filter_map(|r| r.ttft_ms).collect()),
        e2e_during_ms: Percentiles::of(during.iter().map(|r| r.e2e_ms).collect()),
        ttft_before_ms: Percentiles::of(
            records
                .iter()
                .filter(|r| r.ok() && r.done_s() < at_s)
                .filter_map(|r| r.ttft_ms)
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
