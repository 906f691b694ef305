//! cleave's telemetry: Prometheus metrics (what each component measures, and the `/metrics` endpoint that serves
//! them) and OpenTelemetry traces ([`trace`]: the process's subscriber, OTLP export, W3C context in gRPC metadata).
//!
//! - [`RouterMetrics`]: the request path's latencies (time to first token, inter-token latency, end-to-end, queue
//!   wait), requests by outcome, token counts and routing decisions.
//! - [`WorkerMetrics`]: engine gauges sampled on each scrape (sequences, KV blocks, prefix cache, preemptions,
//!   remote prefills), KV transfer bytes and latency, and the etcd lease state.
//! - [`Telemetry`]: one process's registry holding both sets; [`serve_metrics`] answers `GET /metrics` from it in
//!   the OpenMetrics or the classic Prometheus text format.
//!
//! Every name starts with `cleave_`, durations are histograms in seconds and counters end in `_total` (the
//! encoder adds the suffixes from the registered name, unit and type). Invariant: a registry is filled once at
//! start-up and only read afterwards. Cost: an update is an atomic add (a histogram observation also a bucket
//! search); a scrape encodes every family, O(metrics × label sets).

mod router;
mod server;
pub mod trace;
mod worker;

pub use prometheus_client::registry::Registry;
pub use router::{Outcome, RouterMetrics, RoutingReason};
pub use server::{
    CONTENT_TYPE, TEXT_CONTENT_TYPE, Telemetry, metrics_router, render, serve_metrics, to_prometheus_text,
};
pub use worker::{KvDirection, KvTransferMetrics, WorkerLabels, WorkerMetrics, WorkerSample, WorkerSampler};

/// An empty registry whose metrics are all named `cleave_…`.
pub fn registry() -> Registry {
    Registry::with_prefix("cleave")
}

/// Histogram buckets for request latencies: 1 ms to ~65 s, doubling.
pub(crate) fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

#[cfg(test)]
mod tests;
