//! The control-plane registry: leased registrations, prefix listings and resumable prefix watches, over etcd
//! (`EtcdRegistry`) or in process (`EmbeddedRegistry`, for `cleave up`), behind one `Registry` trait.
//!
//! Invariant: both implementations share one behaviour — revisions grow by one per write, a lease deletes its
//! keys when revoked or expired, a watch from revision R delivers every change at R or later exactly once (or a
//! `Resync` when that history was compacted) and survives connection loss. The typed layer (`workers`, `view`)
//! sits on the trait only, so it runs unchanged on either.
//! Cost: every call is one etcd round trip (or one short critical section embedded); each registration and each
//! watch owns one task.

mod embedded;
mod error;
mod etcd;
mod lease;
mod view;
mod watch;
mod workers;

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

pub use embedded::EmbeddedRegistry;
pub use error::{ErrorCategory, RegistryError};
pub use etcd::{EtcdConfig, EtcdRegistry};
pub use lease::LeaseGuard;
pub use view::{RegistryView, WorkerSnapshot};
pub use watch::{WatchEvent, WatchStream};
pub use workers::{KeyLayout, ParallelLayout, WorkerRecord, WorkerRole, register_worker};

/// The key prefix every cleave key lives under unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "/cleave/v1/";

/// A consistent listing of a prefix: its entries (sorted by key) and the revision they were read at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrefixListing {
    pub entries: Vec<(String, String)>,
    pub revision: i64,
}

/// A key-value registry with leases and watches; see the module docs for the shared behaviour.
#[async_trait]
pub trait Registry: Debug + Send + Sync {
    /// Puts `key` = `value` (no lease); returns the revision of the write.
    async fn put(&self, key: &str, value: &str) -> Result<i64, RegistryError>;

    /// Deletes `key`; returns the revision after the call (unchanged if the key was absent).
    async fn delete(&self, key: &str) -> Result<i64, RegistryError>;

    /// Lists every key under `prefix` with the revision the listing is consistent at.
    async fn get_prefix(&self, prefix: &str) -> Result<PrefixListing, RegistryError>;

    /// Watches `prefix` from `from_revision` (inclusive; 0 means "from now"). The stream reconnects by itself,
    /// resuming after the last revision it delivered.
    async fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, RegistryError>;

    /// Puts `key` = `value` under a lease of `ttl` (whole seconds, rounded up) kept alive every `ttl`/3 until
    /// the returned guard is dropped or revoked.
    async fn register(&self, key: &str, value: &str, ttl: Duration) -> Result<LeaseGuard, RegistryError>;
}

/// Rejects keys no backend should store: empty, or not starting with `/` (every cleave key is absolute).
pub(crate) fn check_key(key: &str) -> Result<(), RegistryError> {
    if key.is_empty() {
        return Err(RegistryError::InvalidKey {
            key: key.to_owned(),
            reason: "empty key",
        });
    }
    if !key.starts_with('/') {
        return Err(RegistryError::InvalidKey {
            key: key.to_owned(),
            reason: "keys must start with `/`",
        });
    }
    Ok(())
}
