//! The prefill side of CUDA-IPC transfers: which decode workers' KV pools this worker has mapped, and which ones
//! it could not map (those get TCP from then on).
//!
//! Invariant: a pool is mapped once and reused by every transfer to it; at most [`MAX_MAPPED`] stay mapped, the
//! least recently used going first, so a decode worker that restarted (new pool, new descriptor) does not keep its
//! old memory alive here for long. Cost: a mapping takes device address space, no device memory of this worker.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use cleave_engine::{Engine, EngineError, PeerKv};
use tokio::sync::OnceCell;

/// Pools mapped at once.
pub const MAX_MAPPED: usize = 16;

#[derive(Debug, Default)]
struct Mapped {
    /// (descriptor, mapping), most recently used last.
    pools: Vec<(Arc<[u8]>, PeerKv)>,
    /// KV addresses whose pool could not be mapped.
    refused: HashSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PeerPools {
    mapped: Arc<Mutex<Mapped>>,
    /// Whether this worker's engine can write into another pool at all (a CUDA device of its own, whole model).
    capable: Arc<OnceCell<bool>>,
}

impl PeerPools {
    /// Whether `engine` can write KV into a peer's pool on this host.
    pub async fn capable(&self, engine: &Engine) -> bool {
        *self
            .capable
            .get_or_init(|| async { matches!(engine.export_kv_pool().await, Ok(Some(_))) })
            .await
    }

    /// Whether mapping the pool behind `kv_addr` failed before.
    pub fn refused(&self, kv_addr: &str) -> bool {
        self.mapped.lock().is_ok_and(|m| m.refused.contains(kv_addr))
    }

    /// The mapping of the pool `descriptor` describes, mapped now if it is new. A failure is remembered for
    /// `kv_addr`, which is then sent KV over TCP.
    pub async fn open(&self, engine: &Engine, kv_addr: &str, descriptor: &[u8]) -> Result<PeerKv, EngineError> {
        if let Ok(mut m) = self.mapped.lock()
            && let Some(at) = m.pools.iter().position(|(d, _)| **d == *descriptor)
        {
            let entry = m.pools.remove(at);
            let pool = entry.1.clone();
            m.pools.push(entry);
            return Ok(pool);
        }
        let opened = engine.open_peer_kv(descriptor.to_vec()).await;
        let Ok(mut m) = self.mapped.lock() else {
            return opened;
        };
        match &opened {
            Ok(pool) => {
                if m.pools.len() >= MAX_MAPPED {
                    m.pools.remove(0);
                }
                m.pools.push((descriptor.into(), pool.clone()));
            }
            Err(_) => {
                m.refused.insert(kv_addr.to_owned());
            }
        }
        opened
    }
}
