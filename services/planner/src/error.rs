//! The planner's errors, each with the category that decides whether the loop retries.

use cleave_cluster::registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum PlannerError {
    #[error("invalid planner configuration: {0}")]
    InvalidConfig(String),
    #[error("scraping {url}: {reason}")]
    Scrape { url: String, reason: String },
    #[error("the registry")]
    Registry(#[from] RegistryError),
    #[error("Kubernetes: {context}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("workload {0:?}: expected NAME, deployment/NAME or statefulset/NAME")]
    InvalidWorkload(String),
    #[error("the {phase} workload {name} reports no replica count")]
    NoReplicaCount { phase: &'static str, name: String },
    #[error("starting a {phase} worker ({program})")]
    Spawn {
        phase: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the planner's metrics")]
    Metrics(#[source] std::io::Error),
    #[error("encoding a placement record")]
    Json(#[from] serde_json::Error),
}
