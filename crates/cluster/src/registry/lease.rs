//! Leased registrations: put a key under a lease and keep the lease alive from a task of its own.
//!
//! Invariant: while a `LeaseGuard` lives, its key is present in the registry, except while the registry is
//! unreachable; once reachable again the same lease is refreshed or, if it expired meanwhile, the key is
//! re-registered under a new lease with the same value. Dropping or revoking the guard revokes the lease,
//! which deletes the key. The loop is shared by every backend (`LeaseBackend`), so both behave the same.
//! Cost: one task per registration and one keep-alive round trip every TTL/3.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::error::RegistryError;
use super::watch::Backoff;

/// The answer to one keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    Alive,
    /// The lease is gone (expired or revoked by someone else): its key has been deleted.
    Expired,
}

/// What a backend offers the shared keep-alive loop.
#[async_trait]
pub(crate) trait LeaseBackend: Debug + Send + Sync + 'static {
    /// Grants a lease of `ttl_secs` and puts `key` = `value` under it; returns the lease id.
    async fn grant_and_put(&self, key: &str, value: &str, ttl_secs: i64) -> Result<i64, RegistryError>;
    /// Refreshes `lease` once.
    async fn keep_alive(&self, key: &str, lease: i64) -> Result<LeaseState, RegistryError>;
    /// Revokes `lease`, deleting its keys.
    async fn revoke(&self, key: &str, lease: i64) -> Result<(), RegistryError>;
}

/// The longest lease the registry accepts; anything longer is a misconfiguration, not a liveness lease.
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A TTL in whole seconds (rounded up, at least 1), or an error naming `key`.
pub(crate) fn ttl_seconds(key: &str, ttl: Duration) -> Result<i64, RegistryError> {
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(RegistryError::InvalidTtl {
            key: key.to_owned(),
            ttl,
        });
    }
    let whole = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(whole).map_err(|_| RegistryError::InvalidTtl {
        key: key.to_owned(),
        ttl,
    })
}

/// Registers `key` = `value` under a fresh lease and starts its keep-alive task.
pub(crate) async fn register(
    backend: Arc<dyn LeaseBackend>,
    key: &str,
    value: &str,
    ttl: Duration,
) -> Result<LeaseGuard, RegistryError> {
    let ttl_secs = ttl_seconds(key, ttl)?;
    let lease = backend.grant_and_put(key, value, ttl_secs).await?;
    let (lease_tx, lease_rx) = watch::channel(lease);
    let cancel = CancellationToken::new();
    let registration = Registration {
        backend,
        key: key.to_owned(),
        value: value.to_owned(),
        ttl_secs,
        interval: (ttl / 3).max(Duration::from_millis(100)),
        lease: lease_tx,
    };
    let task = tokio::spawn(registration.run(cancel.clone()));
    Ok(LeaseGuard {
        key: key.to_owned(),
        lease: lease_rx,
        cancel,
        task: Some(task),
    })
}

/// The state of one registration, owned by its keep-alive task.
#[derive(Debug)]
struct Registration {
    backend: Arc<dyn LeaseBackend>,
    key: String,
    value: String,
    ttl_secs: i64,
    interval: Duration,
    lease: watch::Sender<i64>,
}

impl Registration {
    async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new();
        let mut failing = false;
        let mut delay = self.interval;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
            let lease = *self.lease.borrow();
            // A keep-alive may wait out the call timeout while the registry is down; a revoke must not wait for it.
            // Re-registration is not interrupted: cut short, it could leave the key under a lease nobody revokes.
            let state = tokio::select! {
                () = cancel.cancelled() => break,
                state = self.backend.keep_alive(&self.key, lease) => state,
            };
            let outcome = match state {
                Ok(LeaseState::Alive) => Ok(()),
                Ok(LeaseState::Expired) => {
                    tracing::warn!(key = %self.key, lease, "lease expired; re-registering under a new lease");
                    self.reregister().await
                }
                Err(error) => Err(error),
            };
            match outcome {
                Ok(()) => {
                    if failing {
                        tracing::info!(key = %self.key, "registry reachable again; registration kept alive");
                    }
                    failing = false;
                    backoff.reset();
                    delay = self.interval;
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(key = %self.key, %error, "keep-alive failed; retrying until the registry is back");
                    }
                    failing = true;
                    delay = backoff.next_delay().min(self.interval);
                }
            }
        }
        let lease = *self.lease.borrow();
        if let Err(error) = self.backend.revoke(&self.key, lease).await {
            tracing::warn!(key = %self.key, lease, %error, "could not revoke lease; the key expires with its TTL");
        }
    }

    async fn reregister(&self) -> Result<(), RegistryError> {
        let lease = self
            .backend
            .grant_and_put(&self.key, &self.value, self.ttl_secs)
            .await?;
        self.lease.send_replace(lease);
        tracing::info!(key = %self.key, lease, "re-registered");
        Ok(())
    }
}

/// Keeps one key registered; dropping it deregisters (revokes the lease from the keep-alive task).
///
/// Drop only asks the task to revoke; a process about to exit should `revoke().await` so the revoke is sent
/// before the runtime stops, or the key lingers until its TTL runs out.
#[derive(Debug)]
pub struct LeaseGuard {
    key: String,
    lease: watch::Receiver<i64>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl LeaseGuard {
    /// The registered key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lease currently holding the key (changes when the key is re-registered).
    pub fn lease_id(&self) -> i64 {
        *self.lease.borrow()
    }

    /// Revokes the lease and waits until the registry confirmed it (or the attempt failed and was logged).
    pub async fn revoke(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::warn!(key = %self.key, %error, "keep-alive task ended abnormally during revoke");
        }
    }

    /// Stops keeping the lease alive without revoking it: the key stays until its TTL runs out, as if the
    /// process had died. For graceful handover and for tests of expiry.
    pub fn abandon(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        // The task revokes on cancellation; abandon() took the task, so it must not be cancelled into a revoke.
        if self.task.is_some() {
            self.cancel.cancel();
        }
    }
}
