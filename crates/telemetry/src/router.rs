//! The router's metrics: one set per router process, shared by its gRPC and HTTP APIs.
//!
//! Invariant: every request that reaches the request path is counted exactly once in
//! `cleave_router_requests_total`, under the outcome its client saw. Cost: atomic adds; cloning a
//! [`RouterMetrics`] clones `Arc`s.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::latency_buckets;

/// How a request ended, as its client saw it (gRPC status codes in snake case; the HTTP API maps the same).
pub type Outcome = &'static str;

/// Where a request's prompt was prefilled, and why (the router's `PrefillReason`).
pub type RoutingReason = &'static str;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: RoutingReason,
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

#[derive(Debug, Clone)]
pub struct RouterMetrics {
    time_to_first_token: Histogram,
    inter_token_latency: Histogram,
    request_duration: Histogram,
    queue_wait: Histogram,
    requests: Family<OutcomeLabels, Counter>,
    prompt_tokens: Counter,
    cached_tokens: Counter,
    generated_tokens: Counter,
    routing_decisions: Family<ReasonLabels, Counter>,
    queued_requests: Gauge,
}

impl Default for RouterMetrics {
    /// Metrics registered nowhere: they count, but no endpoint shows them.
    fn default() -> Self {
        RouterMetrics {
            time_to_first_token: latency_histogram(),
            inter_token_latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0005, 2.0, 15,
            )),
            request_duration: latency_histogram(),
            queue_wait: latency_histogram(),
            requests: Family::default(),
            prompt_tokens: Counter::default(),
            cached_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            routing_decisions: Family::default(),
            queued_requests: Gauge::default(),
        }
    }
}

impl RouterMetrics {
    /// Registers the router's metrics in `registry` (once per registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = RouterMetrics::default();
        let seconds = |registry: &mut Registry, name: &str, help: &str, h: &Histogram| {
            registry.register_with_unit(name, help, Unit::Seconds, h.clone());
        };
        seconds(
            registry,
            "router_time_to_first_token",
            "From a request's arrival at the router to its first generated token",
            &m.time_to_first_token,
        );
        seconds(
            registry,
            "router_inter_token_latency",
            "Between consecutive responses of a stream, per generated token",
            &m.inter_token_latency,
        );
        seconds(
            registry,
            "router_request_duration",
            "End-to-end: from a request's arrival to its stream's end, whatever the outcome",
            &m.request_duration,
        );
        seconds(
            registry,
            "router_queue_wait",
            "From admission to the first token: the time a request holds one of the router's queue slots \
             (routing, remote prefill and the worker's own queue)",
            &m.queue_wait,
        );
        registry.register("router_requests", "Requests by outcome", m.requests.clone());
        registry.register(
            "router_prompt_tokens",
            "Prompt tokens of routed requests",
            m.prompt_tokens.clone(),
        );
        registry.register(
            "router_cached_tokens",
            "Prompt tokens the decode worker reported served from its prefix cache",
            m.cached_tokens.clone(),
        );
        registry.register(
            "router_generated_tokens",
            "Tokens generated and streamed to clients",
            m.generated_tokens.clone(),
        );
        registry.register(
            "router_routing_decisions",
            "Routed requests by where their prompt was prefilled and why",
            m.routing_decisions.clone(),
        );
        registry.register(
            "router_queued_requests",
            "Requests admitted and waiting for their first token",
            m.queued_requests.clone(),
        );
        m
    }

    pub fn observe_time_to_first_token(&self, elapsed: Duration) {
        self.time_to_first_token.observe(elapsed.as_secs_f64());
    }

    /// `elapsed` since the previous response, which carried `tokens` tokens (each counts once).
    pub fn observe_inter_token(&self, elapsed: Duration, tokens: usize) {
        let per_token = elapsed.as_secs_f64() / tokens.max(1) as f64;
        for _ in 0..tokens {
            self.inter_token_latency.observe(per_token);
        }
    }

    pub fn observe_request_duration(&self, elapsed: Duration) {
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    pub fn observe_queue_wait(&self, elapsed: Duration) {
        self.queue_wait.observe(elapsed.as_secs_f64());
    }

    pub fn count_request(&self, outcome: Outcome) {
        self.requests.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn count_routed(&self, reason: RoutingReason, prompt_tokens: usize) {
        self.routing_decisions.get_or_create(&ReasonLabels { reason }).inc();
        self.prompt_tokens.inc_by(prompt_tokens as u64);
    }

    pub fn count_cached_tokens(&self, tokens: u64) {
        self.cached_tokens.inc_by(tokens);
    }

    pub fn count_generated_tokens(&self, tokens: u64) {
        self.generated_tokens.inc_by(tokens);
    }

    /// A request was admitted and waits for its first token.
    pub fn enter_queue(&self) {
        self.queued_requests.inc();
    }

    /// A request got its first response or ended.
    pub fn leave_queue(&self) {
        self.queued_requests.dec();
    }

    /// Requests counted under `outcome` so far (for tests and logs).
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests.get_or_create(&OutcomeLabels { outcome }).get()
    }
}
