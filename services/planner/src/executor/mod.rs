//! Executors apply the planner's decisions: one interface, two implementations — [`KubeExecutor`] scales the
//! prefill and decode workloads of a Kubernetes namespace, [`LocalExecutor`] starts and stops `cleave worker`
//! processes on this machine. The decision code does not know which one runs.
//!
//! Invariant: `replicas` reports what the executor has been told to run (a Kubernetes workload's desired
//! count, the local child processes alive), so a decision never double-counts replicas still starting.
//! Cost: one or two API calls (Kubernetes) or a process spawn/signal (local) per change.

mod kube;
mod local;
mod placement;

use async_trait::async_trait;

pub use self::kube::{KubeExecutor, Workload, WorkloadKind};
pub use local::{LocalExecutor, LocalWorkerConfig};
pub use placement::{PlacementRecord, PlacementWriter};

use crate::decision::{Decision, Phase, Replicas};
use crate::error::PlannerError;

/// Applies decisions to real replicas.
#[async_trait]
pub trait Executor: Send {
    /// The replicas of each phase the executor runs now.
    async fn replicas(&mut self) -> Result<Replicas, PlannerError>;

    /// Scales `phase` to `replicas`.
    async fn scale(&mut self, phase: Phase, replicas: u32) -> Result<(), PlannerError>;

    /// Records a decision that changed something (an Event, the placement record, a log line); `summary`
    /// describes the signals behind it.
    async fn record(&mut self, decision: &Decision, summary: &str) -> Result<(), PlannerError>;
}
