//! The planner's desired state in the control plane: `<prefix>placement/<model>/replicas` → JSON, written after
//! every decision that changes something, so operators and other components see what the planner wants.
//!
//! Invariant: the record is written unleased (it outlives a planner restart) and always holds the latest targets.
//! Cost: one registry put per change.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use cleave_cluster::registry::{KeyLayout, Registry};

use crate::decision::Decision;
use crate::error::PlannerError;

/// What `placement/<model>/replicas` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlacementRecord {
    pub model: String,
    pub prefill_replicas: u32,
    pub decode_replicas: u32,
    pub prefill_reason: String,
    pub decode_reason: String,
    /// Seconds since the Unix epoch.
    pub decided_at: u64,
}

impl PlacementRecord {
    pub fn new(model: &str, decision: &Decision) -> Self {
        Self {
            model: model.to_owned(),
            prefill_replicas: decision.prefill.target,
            decode_replicas: decision.decode.target,
            prefill_reason: decision.prefill.reason.as_str().to_owned(),
            decode_reason: decision.decode.reason.as_str().to_owned(),
            decided_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }

    /// The key it lives under.
    pub fn key(layout: &KeyLayout, model: &str) -> String {
        format!("{}placement/{}/replicas", layout.prefix(), model.replace('/', "_"))
    }
}

/// Writes decisions of one model to the registry.
#[derive(Debug, Clone)]
pub struct PlacementWriter {
    registry: Arc<dyn Registry>,
    layout: KeyLayout,
    model: String,
}

impl PlacementWriter {
    pub fn new(registry: Arc<dyn Registry>, layout: KeyLayout, model: &str) -> Self {
        Self {
            registry,
            layout,
            model: model.to_owned(),
        }
    }

    /// Writes `decision` as the model's placement.
    pub async fn write(&self, decision: &Decision) -> Result<(), PlannerError> {
        let record = PlacementRecord::new(&self.model, decision);
        let key = PlacementRecord::key(&self.layout, &self.model);
        self.registry.put(&key, &serde_json::to_string(&record)?).await?;
        Ok(())
    }
}
