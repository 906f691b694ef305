//! `RegistryView`: the live set of workers, kept by one task that lists `workers/` once and then follows a watch.
//!
//! Invariant: readers always get a complete snapshot consistent at some revision; while the registry is
//! unreachable the last snapshot stays (the watch resumes by itself and catches up without losing events).
//! Records that fail to parse are logged and left out, never served.
//! Cost: one task; each change clones the map of workers (small: one entry per worker) into a new snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Registry;
use super::watch::{Backoff, WatchEvent};
use super::workers::{KeyLayout, WorkerRecord};

/// The workers known at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Workers by id.
    pub workers: BTreeMap<String, WorkerRecord>,
    /// The registry revision this snapshot reflects.
    pub revision: i64,
    /// False until the first listing succeeded.
    pub synced: bool,
}

/// A live, read-mostly view of the registered workers. Dropping it stops its task.
#[derive(Debug)]
pub struct RegistryView {
    snapshots: watch::Receiver<Arc<WorkerSnapshot>>,
    task: JoinHandle<()>,
}

impl RegistryView {
    /// Starts following the workers under `layout`.
    pub fn start(registry: Arc<dyn Registry>, layout: &KeyLayout) -> Self {
        let (publish, snapshots) = watch::channel(Arc::new(WorkerSnapshot::default()));
        let task = tokio::spawn(follow_workers(registry, layout.workers(), publish));
        Self { snapshots, task }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<WorkerSnapshot> {
        self.snapshots.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot (for callers that react to changes).
    pub fn subscribe(&self) -> watch::Receiver<Arc<WorkerSnapshot>> {
        self.snapshots.clone()
    }

    /// Waits until a snapshot satisfies `ready`, up to `timeout`; returns that snapshot, or `None` on timeout.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&WorkerSnapshot) -> bool,
    ) -> Option<Arc<WorkerSnapshot>> {
        let mut snapshots = self.snapshots.clone();
        let wait = snapshots.wait_for(|snapshot| ready(snapshot));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(snapshot)) => Some(snapshot.clone()),
            Ok(Err(_)) | Err(_) => None,
        }
    }
}

impl Drop for RegistryView {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow_workers(registry: Arc<dyn Registry>, prefix: String, publish: watch::Sender<Arc<WorkerSnapshot>>) {
    let mut backoff = Backoff::new();
    let listing = loop {
        match registry.get_prefix(&prefix).await {
            Ok(listing) => break listing,
            Err(error) => {
                tracing::warn!(%prefix, %error, "cannot list workers yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let mut snapshot = WorkerSnapshot {
        workers: BTreeMap::new(),
        revision: listing.revision,
        synced: true,
    };
    replace_all(&mut snapshot, &prefix, listing.entries);
    publish.send_replace(Arc::new(snapshot.clone()));

    let mut events = loop {
        match registry.watch_prefix(&prefix, snapshot.revision + 1).await {
            Ok(events) => break events,
            Err(error) => {
                tracing::warn!(%prefix, %error, "cannot watch workers yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    while let Some(event) = events.recv().await {
        match event {
            WatchEvent::Put {
                key,
                value,
                mod_revision,
            } => {
                apply_put(&mut snapshot, &prefix, &key, &value);
                snapshot.revision = mod_revision;
            }
            WatchEvent::Delete { key, mod_revision } => {
                if let Some(id) = key.strip_prefix(prefix.as_str()) {
                    snapshot.workers.remove(id);
                }
                snapshot.revision = mod_revision;
            }
            WatchEvent::Resync { entries, revision } => {
                snapshot.workers.clear();
                replace_all(&mut snapshot, &prefix, entries);
                snapshot.revision = revision;
            }
        }
        publish.send_replace(Arc::new(snapshot.clone()));
    }
    tracing::info!(%prefix, "registry gone; worker view frozen at its last snapshot");
}

fn replace_all(snapshot: &mut WorkerSnapshot, prefix: &str, entries: Vec<(String, String)>) {
    for (key, value) in entries {
        apply_put(snapshot, prefix, &key, &value);
    }
}

fn apply_put(snapshot: &mut WorkerSnapshot, prefix: &str, key: &str, value: &str) {
    let Some(id) = key.strip_prefix(prefix) else { return };
    match WorkerRecord::from_json(key, value) {
        Ok(record) if record.id == id => {
            snapshot.workers.insert(id.to_owned(), record);
        }
        Ok(record) => {
            tracing::warn!(key, record_id = %record.id, "worker record id does not match its key; ignored");
            snapshot.workers.remove(id);
        }
        Err(error) => {
            tracing::warn!(%error, "ignoring invalid worker record");
            snapshot.workers.remove(id);
        }
    }
}
