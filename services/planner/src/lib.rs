//! cleave's planner: a per-phase autoscaler that sizes the prefill and decode worker pools against their own
//! latency targets (TTFT for prefill, inter-token latency for decode) within a shared GPU budget.
//!
//! # Design
//!
//! Every interval the planner runs one round ([`Planner::tick`]):
//!
//! 1. **Signals** ([`scrape`], [`signals`], [`exposition`]): `GET /metrics` from the routers (`--router-metrics`)
//!    and from every worker whose registry record names a `metrics_addr`. The Prometheus text is folded into a
//!    cumulative [`Snapshot`]; a [`SignalWindow`] keeps the last window of snapshots and derives [`Signals`]:
//!    TTFT, ITL and queue-wait p50/p90 from histogram bucket *deltas* (only requests inside the window count),
//!    request rate, prefill and decode tokens/s and mean input/output lengths from counter deltas, queued prefill
//!    tokens (now, peak and growth over the window), requests queued at the routers, decode KV utilisation.
//! 2. **Decision** ([`decision::decide`]): a pure function of the signals, the configuration, the replicas
//!    running now and a small state (last scale times, headroom streaks, learned capacity). A throughput model
//!    (tokens/s one replica sustains, from a profile or learned from saturated windows) sizes each phase for the
//!    load seen; a fast correction loop scales up when the SLOs are missed *or queues grow* — requests waiting at
//!    the router with no first token, or a prefill backlog that would take longer than the TTFT SLO to drain —
//!    so the planner reacts to queueing before TTFT histograms (which only see requests that got a token) do.
//!    Long prompts raise prefill, not decode; an ITL breach or full KV cache raises decode. Scale-down is one
//!    replica at a time after sustained headroom (hysteresis) and a cool-down; min/max bounds and the GPU budget
//!    (`gpus-per-prefill`/`gpus-per-decode` against `gpu-budget`) bound every target.
//! 3. **Execution** ([`executor`]): one [`Executor`] interface. [`KubeExecutor`] patches the `scale`
//!    subresource of the prefill/decode Deployments or StatefulSets, reads their scale back, and records each
//!    change as a Kubernetes Event and in etcd under `placement/`. [`LocalExecutor`] starts and stops
//!    `cleave worker --role prefill|decode` processes on this machine (SIGTERM to drain, all killed on drop).
//!
//! The planner serves its own metrics ([`PlannerMetrics`]): desired and current replicas per phase, decisions
//! by reason, the signals it decided from.
//!
//! # Testing
//!
//! The decision is tested against simulated traces (ramps, bursts, a long-prompt shift, ITL breaches, idle
//! periods, the GPU budget, hysteresis); signals against real exposition text rendered by `cleave-telemetry`. No
//! Kubernetes API server can run on our build machines, so the Kubernetes executor is tested with kube-rs's own
//! pattern: a `tower-test` mock service behind `kube::Client::new` answering with real API object shapes (the
//! Scale subresource, Events), asserting every request it makes; the executor is kept thin so the mock covers
//! its whole surface. The local executor is tested end to end against a CPU cluster of real processes.

mod config;
pub mod decision;
mod error;
pub mod executor;
pub mod exposition;
mod metrics;
mod planner;
pub mod scrape;
pub mod signals;

pub use decision::{
    Decision, Phase, PhaseDecision, PhaseLimits, PhaseState, PlannerConfig, PlannerState, Reason, Replicas, decide,
};
pub use error::PlannerError;
pub use executor::{
    Executor, KubeExecutor, LocalExecutor, LocalWorkerConfig, PlacementRecord, PlacementWriter, Workload,
};
pub use metrics::PlannerMetrics;
pub use planner::{Planner, summary};
pub use scrape::{Scraper, WorkerDiscovery};
pub use signals::{SignalWindow, Signals, Snapshot};
/// The loop stops when this is cancelled.
pub use tokio_util::sync::CancellationToken;
