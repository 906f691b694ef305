//! `Registry` in process, for single-machine clusters (`cleave up`) and tests: etcd's semantics — one revision
//! per write, leases whose expiry deletes their keys in one revision, watches replayed from a revision — without
//! a server.
//!
//! Invariant: all state sits in one `Store` behind one mutex; every write bumps the revision by one, records one
//! history entry per changed key, and is delivered to matching watchers before the lock is released, so watchers
//! see writes in revision order. History keeps the last `HISTORY_LIMIT` events; a watch from an older revision
//! gets a `Resync` — the same contract as etcd's compaction.
//! Cost: writes O(log n + watchers); a prefix listing O(log n + matches); a reaper task wakes every 100 ms.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::error::RegistryError;
use super::lease::{self, LeaseBackend, LeaseGuard, LeaseState};
use super::watch::{WatchEvent, WatchStream};
use super::{PrefixListing, Registry, check_key};

/// How many past events a watch can be replayed from.
const HISTORY_LIMIT: usize = 10_000;
/// How often expired leases are collected; expiry is late by at most this much.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// An in-process registry. Cheap to clone: clones share one store. Must be created inside a tokio runtime.
#[derive(Debug, Clone)]
pub struct EmbeddedRegistry {
    store: Arc<Store>,
}

#[derive(Debug)]
struct Store {
    state: Mutex<State>,
}

#[derive(Debug)]
struct Entry {
    value: String,
    lease: Option<i64>,
}

#[derive(Debug)]
struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

#[derive(Debug)]
struct Watcher {
    prefix: String,
    /// Events before this revision are not for this watcher (it asked to start later).
    from_revision: i64,
    events: mpsc::UnboundedSender<WatchEvent>,
}

#[derive(Debug)]
struct State {
    revision: i64,
    entries: BTreeMap<String, Entry>,
    leases: HashMap<i64, Lease>,
    next_lease: i64,
    history: VecDeque<WatchEvent>,
    /// The highest revision whose events were dropped from `history`.
    compacted: i64,
    watchers: Vec<Watcher>,
}

impl Default for EmbeddedRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl EmbeddedRegistry {
    /// An empty registry at revision 1 (etcd's starting revision), with its lease reaper running.
    pub fn new() -> Self {
        let state = State {
            revision: 1,
            entries: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease: 1,
            history: VecDeque::new(),
            compacted: 0,
            watchers: Vec::new(),
        };
        let store = Arc::new(Store {
            state: Mutex::new(state),
        });
        tokio::spawn(reap_expired_leases(Arc::downgrade(&store)));
        Self { store }
    }
}

/// Expires leases until the store is dropped.
async fn reap_expired_leases(store: Weak<Store>) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else { return };
        let mut state = store.lock();
        let now = Instant::now();
        let expired: Vec<i64> = state
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            state.drop_lease(id);
        }
    }
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock panics on reachable states (channel sends and map updates do not), so a poisoned
        // lock can only follow a bug elsewhere on the same thread; the state itself is still whole.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    /// Applies one batch of changes at a single new revision and delivers it to watchers.
    fn commit(&mut self, changes: Vec<(String, Option<Entry>)>) -> i64 {
        if changes.is_empty() {
            return self.revision;
        }
        self.revision += 1;
        let revision = self.revision;
        for (key, change) in changes {
            if let Some(old) = self.entries.get(&key).and_then(|entry| entry.lease)
                && let Some(lease) = self.leases.get_mut(&old)
            {
                lease.keys.remove(&key);
            }
            let event = match change {
                Some(entry) => {
                    if let Some(lease) = entry.lease.and_then(|id| self.leases.get_mut(&id)) {
                        lease.keys.insert(key.clone());
                    }
                    let event = WatchEvent::Put {
                        key: key.clone(),
                        value: entry.value.clone(),
                        mod_revision: revision,
                    };
                    self.entries.insert(key, entry);
                    event
                }
                None => {
                    self.entries.remove(&key);
                    WatchEvent::Delete {
                        key,
                        mod_revision: revision,
                    }
                }
            };
            // Closed watchers go on any write, not only on a matching one, so dropped watches never pile up.
            self.watchers.retain(|watcher| {
                if watcher.events.is_closed() {
                    return false;
                }
                if !matches_prefix(&event, &watcher.prefix) || revision < watcher.from_revision {
                    return true;
                }
                watcher.events.send(event.clone()).is_ok()
            });
            self.history.push_back(event);
        }
        while self.history.len() > HISTORY_LIMIT {
            if let Some(old) = self.history.pop_front() {
                self.compacted = self.compacted.max(old.revision());
            }
        }
        revision
    }

    /// Removes lease `id` and deletes its keys in one revision.
    fn drop_lease(&mut self, id: i64) {
        if let Some(lease) = self.leases.remove(&id) {
            let changes = lease.keys.into_iter().map(|key| (key, None)).collect();
            self.commit(changes);
        }
    }

    fn listing(&self, prefix: &str) -> PrefixListing {
        let entries = self
            .entries
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, entry)| (key.clone(), entry.value.clone()))
            .collect();
        PrefixListing {
            entries,
            revision: self.revision,
        }
    }
}

fn matches_prefix(event: &WatchEvent, prefix: &str) -> bool {
    match event {
        WatchEvent::Put { key, .. } | WatchEvent::Delete { key, .. } => key.starts_with(prefix),
        WatchEvent::Resync { .. } => true,
    }
}

#[async_trait]
impl Registry for EmbeddedRegistry {
    async fn put(&self, key: &str, value: &str) -> Result<i64, RegistryError> {
        check_key(key)?;
        let entry = Entry {
            value: value.to_owned(),
            lease: None,
        };
        Ok(self.store.lock().commit(vec![(key.to_owned(), Some(entry))]))
    }

    async fn delete(&self, key: &str) -> Result<i64, RegistryError> {
        check_key(key)?;
        let mut state = self.store.lock();
        if !state.entries.contains_key(key) {
            return Ok(state.revision);
        }
        Ok(state.commit(vec![(key.to_owned(), None)]))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<PrefixListing, RegistryError> {
        check_key(prefix)?;
        Ok(self.store.lock().listing(prefix))
    }

    async fn watch_prefix(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, RegistryError> {
        check_key(prefix)?;
        let (events, receiver) = mpsc::unbounded_channel();
        let mut state = self.store.lock();
        if from_revision > 0 && from_revision <= state.compacted {
            let listing = state.listing(prefix);
            let _ = events.send(WatchEvent::Resync {
                entries: listing.entries,
                revision: listing.revision,
            });
        } else if from_revision > 0 {
            for event in state.history.iter().filter(|event| event.revision() >= from_revision) {
                if matches_prefix(event, prefix) {
                    let _ = events.send(event.clone());
                }
            }
        }
        state.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            from_revision,
            events,
        });
        Ok(WatchStream::new(receiver))
    }

    async fn register(&self, key: &str, value: &str, ttl: Duration) -> Result<LeaseGuard, RegistryError> {
        check_key(key)?;
        lease::register(self.store.clone(), key, value, ttl).await
    }
}

#[async_trait]
impl LeaseBackend for Store {
    async fn grant_and_put(&self, key: &str, value: &str, ttl_secs: i64) -> Result<i64, RegistryError> {
        let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(1));
        let mut state = self.lock();
        let id = state.next_lease;
        state.next_lease += 1;
        state.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
                keys: BTreeSet::new(),
            },
        );
        state.commit(vec![(
            key.to_owned(),
            Some(Entry {
                value: value.to_owned(),
                lease: Some(id),
            }),
        )]);
        Ok(id)
    }

    async fn keep_alive(&self, _key: &str, lease: i64) -> Result<LeaseState, RegistryError> {
        let mut state = self.lock();
        match state.leases.get_mut(&lease) {
            Some(lease) => {
                lease.deadline = Instant::now() + lease.ttl;
                Ok(LeaseState::Alive)
            }
            None => Ok(LeaseState::Expired),
        }
    }

    async fn revoke(&self, _key: &str, lease: i64) -> Result<(), RegistryError> {
        self.lock().drop_lease(lease);
        Ok(())
    }
}
