//! The typed worker records the router reads and workers register: `<prefix>workers/<id>` → JSON.
//!
//! Invariant: a record is validated (non-empty id without `/`, non-zero block size, at least one KV transport)
//! before it is written and when it is read back, so the router never routes to a record it cannot use.
//! Cost: one serde_json round trip per record.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::RegistryError;
use super::lease::LeaseGuard;
use super::{DEFAULT_PREFIX, Registry};

/// What a worker does in disaggregated serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerRole {
    Prefill,
    Decode,
    /// Aggregated serving: prefill and decode in one worker.
    Both,
}

/// How a worker's model is split across devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParallelLayout {
    pub tensor: u32,
    pub pipeline: u32,
    /// Expert-parallel ranks (a mixture-of-experts model's experts split across them); 1 in records written
    /// before expert parallelism.
    #[serde(default = "one")]
    pub expert: u32,
    /// Context-parallel ranks (every chunk's tokens split across them, ring attention); 1 in older records.
    #[serde(default = "one")]
    pub context: u32,
}

fn one() -> u32 {
    1
}

impl Default for ParallelLayout {
    fn default() -> Self {
        Self {
            tensor: 1,
            pipeline: 1,
            expert: 1,
            context: 1,
        }
    }
}

/// One worker as registered in the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub role: WorkerRole,
    pub model: String,
    /// Where the worker serves the internal Worker API (`host:port`).
    pub grpc_addr: String,
    /// Where the worker accepts KV-block transfers (`host:port`).
    pub kv_addr: String,
    /// KV transports the worker speaks, most preferred first (e.g. `tcp`, `nccl`, `cuda_ipc`); empty for a
    /// both-role worker that only serves requests end to end.
    pub kv_transports: Vec<String>,
    /// Tokens per KV block.
    pub block_size: u32,
    /// KV blocks the worker holds in total.
    pub capacity_blocks: u64,
    #[serde(default)]
    pub parallel: ParallelLayout,
    /// The parallel group this worker leads (its ranks' placement is under `<prefix>groups/<group>/members/`);
    /// empty for a worker on one device.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Where the worker serves Prometheus metrics (`host:port`, path `/metrics`); empty when it serves none.
    /// The planner scrapes it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub metrics_addr: String,
}

impl WorkerRecord {
    /// Checks the rules every stored record keeps; `key` names the record in the error.
    pub fn validate(&self, key: &str) -> Result<(), RegistryError> {
        let invalid = |field: &'static str, reason: &str| RegistryError::InvalidField {
            key: key.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        if self.id.is_empty() || self.id.contains('/') {
            return Err(invalid("id", "must be non-empty and contain no `/`"));
        }
        if self.model.is_empty() {
            return Err(invalid("model", "must be non-empty"));
        }
        if self.grpc_addr.is_empty() {
            return Err(invalid("grpc_addr", "must be non-empty"));
        }
        if self.role != WorkerRole::Both && self.kv_transports.is_empty() {
            return Err(invalid(
                "kv_transports",
                "a prefill or decode worker must name at least one KV transport",
            ));
        }
        if self.block_size == 0 {
            return Err(invalid("block_size", "must be at least 1"));
        }
        if self.parallel.tensor == 0 || self.parallel.pipeline == 0 || self.parallel.expert == 0 {
            return Err(invalid(
                "parallel",
                "tensor, pipeline and expert sizes must be at least 1",
            ));
        }
        Ok(())
    }

    /// Parses and validates the JSON stored at `key`.
    pub fn from_json(key: &str, value: &str) -> Result<Self, RegistryError> {
        let record: Self = serde_json::from_str(value).map_err(|source| RegistryError::InvalidRecord {
            key: key.to_owned(),
            kind: "worker record",
            source,
        })?;
        record.validate(key)?;
        Ok(record)
    }

    /// The JSON stored for this record.
    pub fn to_json(&self, key: &str) -> Result<String, RegistryError> {
        serde_json::to_string(self).map_err(|source| RegistryError::InvalidRecord {
            key: key.to_owned(),
            kind: "worker record",
            source,
        })
    }
}

/// Where cleave's keys live: `<prefix>workers/<id>`, and so on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

impl Default for KeyLayout {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl KeyLayout {
    /// A layout under `prefix`, which must start with `/`; a missing trailing `/` is added.
    pub fn new(prefix: &str) -> Result<Self, RegistryError> {
        if !prefix.starts_with('/') {
            return Err(RegistryError::InvalidKey {
                key: prefix.to_owned(),
                reason: "the prefix must start with `/`",
            });
        }
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self { prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix all worker records share.
    pub fn workers(&self) -> String {
        format!("{}workers/", self.prefix)
    }

    /// The key of worker `id`.
    pub fn worker(&self, id: &str) -> String {
        format!("{}workers/{id}", self.prefix)
    }
}

/// Registers `record` under its leased key; the key disappears when the guard drops or the worker dies.
pub async fn register_worker(
    registry: &dyn Registry,
    layout: &KeyLayout,
    record: &WorkerRecord,
    ttl: Duration,
) -> Result<LeaseGuard, RegistryError> {
    let key = layout.worker(&record.id);
    record.validate(&key)?;
    let value = record.to_json(&key)?;
    registry.register(&key, &value, ttl).await
}
