//! The Kubernetes executor: reads and patches the `scale` subresource of the prefill and decode workloads
//! (Deployments or StatefulSets) in one namespace, and writes each decision that changes something as a core/v1
//! Event on the workload it scaled (and, when a registry is given, to `placement/` in etcd).
//!
//! It is deliberately thin — three API calls (GET scale, PATCH scale, POST event) — so the tests, which answer
//! with a `tower-test` mock API server (no Kubernetes API server can run on our build machines), cover its whole
//! surface. The RBAC it needs: `get`/`patch` on `deployments/scale` (or `statefulsets/scale`) and `create` on
//! `events`, in its namespace. Invariant: `replicas` is the workloads' desired count (`spec.replicas`), which is
//! what the planner last asked for or what an operator set. Cost: two GETs per decision, one PATCH and one POST
//! per change.

use std::str::FromStr;

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

use super::Executor;
use super::placement::PlacementWriter;
use crate::decision::{Decision, Phase, Replicas};
use crate::error::PlannerError;

const MANAGER: &str = "cleave-planner";

/// The kinds of workload the planner scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
        }
    }
}

/// One workload: `NAME` (a Deployment), `deployment/NAME` or `statefulset/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
}

impl FromStr for Workload {
    type Err = PlannerError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = match s.split_once('/') {
            None => (WorkloadKind::Deployment, s),
            Some((kind, name)) => match kind.to_ascii_lowercase().as_str() {
                "deployment" | "deployments" | "deploy" => (WorkloadKind::Deployment, name),
                "statefulset" | "statefulsets" | "sts" => (WorkloadKind::StatefulSet, name),
                _ => return Err(PlannerError::InvalidWorkload(s.to_owned())),
            },
        };
        if name.is_empty() || name.contains('/') {
            return Err(PlannerError::InvalidWorkload(s.to_owned()));
        }
        Ok(Workload {
            kind,
            name: name.to_owned(),
        })
    }
}

/// Scales the prefill and decode workloads of one namespace.
#[derive(Clone)]
pub struct KubeExecutor {
    client: kube::Client,
    namespace: String,
    prefill: Workload,
    decode: Workload,
    instance: String,
    placement: Option<PlacementWriter>,
}

impl std::fmt::Debug for KubeExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeExecutor")
            .field("namespace", &self.namespace)
            .field("prefill", &self.prefill)
            .field("decode", &self.decode)
            .finish_non_exhaustive()
    }
}

impl KubeExecutor {
    /// `instance` names this planner in its Events (its pod name).
    pub fn new(client: kube::Client, namespace: &str, prefill: Workload, decode: Workload, instance: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            prefill,
            decode,
            instance: instance.to_owned(),
            placement: None,
        }
    }

    /// Connects with the in-cluster service account or the kubeconfig; `namespace` defaults to the client's
    /// (the pod's own namespace in a cluster).
    pub async fn connect(
        namespace: Option<&str>,
        prefill: Workload,
        decode: Workload,
        instance: &str,
    ) -> Result<Self, PlannerError> {
        let client = kube::Client::try_default().await.map_err(|source| PlannerError::Kube {
            context: "connecting to the Kubernetes API (in-cluster or kubeconfig)".to_owned(),
            source,
        })?;
        let namespace = namespace.map_or_else(|| client.default_namespace().to_owned(), str::to_owned);
        Ok(Self::new(client, &namespace, prefill, decode, instance))
    }

    /// Also writes every changing decision to `placement/` in the registry.
    pub fn with_placement(mut self, placement: PlacementWriter) -> Self {
        self.placement = Some(placement);
        self
    }

    fn workload(&self, phase: Phase) -> &Workload {
        match phase {
            Phase::Prefill => &self.prefill,
            Phase::Decode => &self.decode,
        }
    }

    async fn get_scale(&self, phase: Phase) -> Result<Scale, PlannerError> {
        let w = self.workload(phase);
        let result = match w.kind {
            WorkloadKind::Deployment => self.deployments().get_scale(&w.name).await,
            WorkloadKind::StatefulSet => self.statefulsets().get_scale(&w.name).await,
        };
        result.map_err(|source| self.error(format!("reading the scale of {} {}", w.kind.as_str(), w.name), source))
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn statefulsets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn error(&self, context: String, source: kube::Error) -> PlannerError {
        PlannerError::Kube {
            context: format!("{context} in namespace {}", self.namespace),
            source,
        }
    }

    fn event(&self, phase: Phase, decision: &Decision, summary: &str) -> Event {
        let d = decision.phase(phase);
        let w = self.workload(phase);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let reason = if d.target > d.current { "ScaledUp" } else { "ScaledDown" };
        Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", w.name)),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: Some(w.kind.as_str().to_owned()),
                name: Some(w.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectReference::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(format!(
                "{} replicas {} -> {} ({}); {summary}",
                phase.as_str(),
                d.current,
                d.target,
                d.reason.as_str()
            )),
            type_: Some("Normal".to_owned()),
            action: Some("Scale".to_owned()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(MANAGER.to_owned()),
                host: None,
            }),
            reporting_component: Some(MANAGER.to_owned()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

#[async_trait]
impl Executor for KubeExecutor {
    async fn replicas(&mut self) -> Result<Replicas, PlannerError> {
        let mut replicas = Replicas::default();
        for phase in Phase::ALL {
            let scale = self.get_scale(phase).await?;
            let desired = scale.spec.and_then(|s| s.replicas);
            let observed = scale.status.map(|s| s.replicas);
            let n = desired.or(observed).ok_or_else(|| PlannerError::NoReplicaCount {
                phase: phase.as_str(),
                name: self.workload(phase).name.clone(),
            })?;
            tracing::debug!(phase = phase.as_str(), desired = ?desired, observed = ?observed, "workload scale");
            let n = u32::try_from(n).unwrap_or(0);
            match phase {
                Phase::Prefill => replicas.prefill = n,
                Phase::Decode => replicas.decode = n,
            }
        }
        Ok(replicas)
    }

    async fn scale(&mut self, phase: Phase, replicas: u32) -> Result<(), PlannerError> {
        let w = self.workload(phase).clone();
        let patch = Patch::Merge(serde_json::json!({ "spec": { "replicas": replicas } }));
        let params = PatchParams {
            field_manager: Some(MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let result = match w.kind {
            WorkloadKind::Deployment => self.deployments().patch_scale(&w.name, &params, &patch).await,
            WorkloadKind::StatefulSet => self.statefulsets().patch_scale(&w.name, &params, &patch).await,
        };
        result.map_err(|source| self.error(format!("scaling {} {} to {replicas}", w.kind.as_str(), w.name), source))?;
        Ok(())
    }

    async fn record(&mut self, decision: &Decision, summary: &str) -> Result<(), PlannerError> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        for phase in Phase::ALL {
            if !decision.phase(phase).changes() {
                continue;
            }
            let event = self.event(phase, decision, summary);
            events
                .create(&PostParams::default(), &event)
                .await
                .map_err(|source| self.error("writing an Event".to_owned(), source))?;
        }
        if let Some(placement) = &self.placement {
            placement.write(decision).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
