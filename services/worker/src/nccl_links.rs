//! NCCL links between this worker and its prefill or decode peers, for KV transfers between GPUs that CUDA IPC
//! cannot join (other hosts). A link is a two-rank NCCL communicator (`cleave_engine::cuda::NcclLink`): the prefill
//! side makes it lazily for a decode worker (its KV address) the first time it sends there, names it, and sends the
//! name in the transfer's Hello; both sides then meet through the registry (`<prefix>groups/<name>/`, the prefill
//! side publishing the NCCL unique id) and join the communicator.
//!
//! Invariants: a link carries one transfer at a time — the prefill side leases it ([`NcclLinks::lease`]) and takes
//! it back only after a transfer that ended cleanly; a link on which anything failed is aborted on both sides and
//! forgotten (the next transfer makes a new one). At most [`LINKS_PER_PEER`] links per decode worker exist; a
//! transfer finding them all busy waits for one; each side keeps at most [`MAX_KEPT_LINKS`] links beyond those in
//! use, closing the least recently used (the other side finds out at its next transfer on it, which fails over to
//! a new link or, on the receiving side, is refused). Cost: each link holds its communicator's buffers and its staging
//! buffers on the GPU of each side (`PeerKv::device_bytes`, logged when made); making one takes a registry
//! rendezvous and NCCL's own connection set-up (tens of milliseconds).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cleave_cluster::registry::Registry;
use cleave_comm::{GroupSpec, Rendezvous};
use cleave_engine::{Engine, KvLinkEndpoint, PeerKv};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The transport's name, as workers advertise it.
pub const NCCL: &str = "nccl";

/// Links one prefill worker keeps to one decode worker (concurrent transfers to it).
pub const LINKS_PER_PEER: usize = 4;

/// Links kept open per side beyond those in use: idle ones on the sending side, joined ones on the receiving side
/// (the least recently used go first; each holds device memory).
pub const MAX_KEPT_LINKS: usize = 32;

/// How long both sides wait for each other in the rendezvous.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(20);

/// How long NCCL may take to connect a link once both sides met.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

struct Enabled {
    registry: Arc<dyn Registry>,
    prefix: String,
    endpoint: KvLinkEndpoint,
}

#[derive(Default)]
struct Inner {
    enabled: OnceLock<Enabled>,
    /// Sending side: idle links and the decode KV address each goes to, least recently used first; and per
    /// address, the permits bounding how many links exist.
    idle: Mutex<Vec<(String, PeerKv)>>,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Receiving side: links by name, least recently used first.
    joined: Mutex<Vec<(String, PeerKv)>>,
    made: AtomicU64,
}

/// This worker's NCCL links; cheap to clone (shared).
#[derive(Clone, Default)]
pub struct NcclLinks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NcclLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclLinks")
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl NcclLinks {
    /// Enables NCCL links when `engine` can have them (a GPU holding the whole model, NCCL installed); they meet
    /// through `registry` under `prefix`. Returns whether they are enabled.
    pub async fn enable(&self, engine: &Engine, registry: Arc<dyn Registry>, prefix: &str) -> bool {
        let Some(endpoint) = engine.kv_link_endpoint().await else {
            return false;
        };
        let _ = self.inner.enabled.set(Enabled {
            registry,
            prefix: prefix.to_owned(),
            endpoint,
        });
        true
    }

    pub fn enabled(&self) -> bool {
        self.inner.enabled.get().is_some()
    }

    fn permits(&self, kv_addr: &str) -> Arc<Semaphore> {
        let mut permits = lock(&self.inner.permits);
        permits
            .entry(kv_addr.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(LINKS_PER_PEER)))
            .clone()
    }

    /// A link to the decode worker at `kv_addr` for one transfer: an idle one, else a name for a new one (which
    /// the caller joins with [`NcclLinks::join_as_sender`] once the Hello carrying it is on its way).
    pub async fn lease(&self, kv_addr: &str) -> Result<(Option<PeerKv>, LeaseSlot), String> {
        if !self.enabled() {
            return Err("NCCL links are not enabled on this worker".to_owned());
        }
        let permit = self
            .permits(kv_addr)
            .acquire_owned()
            .await
            .map_err(|_| "the link permits closed".to_owned())?;
        let idle = {
            let mut idle = lock(&self.inner.idle);
            idle.retain(|(_, link)| !link.is_aborted());
            let newest = idle.iter().rposition(|(addr, _)| addr == kv_addr);
            newest.map(|at| idle.remove(at).1)
        };
        let name = match &idle {
            Some(link) => link.link_name().unwrap_or_default().to_owned(),
            None => format!(
                "kvlink-{:x}-{:x}-{}",
                std::process::id(),
                started_nanos(),
                self.inner.made.fetch_add(1, Ordering::Relaxed)
            ),
        };
        Ok((
            idle,
            LeaseSlot {
                name,
                kv_addr: kv_addr.to_owned(),
                _permit: permit,
            },
        ))
    }

    /// Joins the new link `name` as its sending side: publishes a fresh NCCL id under the link's group, waits for
    /// the receiver there, then connects.
    pub async fn join_as_sender(&self, name: &str) -> Result<PeerKv, String> {
        let enabled = self
            .inner
            .enabled
            .get()
            .ok_or("NCCL links are not enabled on this worker")?;
        let endpoint = enabled.endpoint.clone();
        let id = endpoint.new_link_id().map_err(|e| e.to_string())?;
        self.join(enabled, name, 0, Some(id)).await
    }

    /// The receiving side of link `name`, joined before (a live one).
    pub fn joined(&self, name: &str) -> Option<PeerKv> {
        let mut joined = lock(&self.inner.joined);
        joined.retain(|(_, link)| !link.is_aborted());
        let at = joined.iter().position(|(n, _)| n == name)?;
        let entry = joined.remove(at);
        let link = entry.1.clone();
        joined.push(entry);
        Some(link)
    }

    /// The receiving side of link `name` (named in a transfer's Hello): the one joined before, or joined now.
    pub async fn receiver(&self, name: &str) -> Result<PeerKv, String> {
        let enabled = self
            .inner
            .enabled
            .get()
            .ok_or("NCCL links are not enabled on this worker")?;
        if let Some(link) = self.joined(name) {
            return Ok(link);
        }
        let link = self.join(enabled, name, 1, None).await?;
        let mut joined = lock(&self.inner.joined);
        keep_newest(&mut joined, (name.to_owned(), link.clone()));
        Ok(link)
    }

    async fn join(&self, enabled: &Enabled, name: &str, rank: usize, id: Option<Vec<u8>>) -> Result<PeerKv, String> {
        let mut spec = GroupSpec::new(name, 2, rank).with_prefix(enabled.prefix.clone());
        if let Some(id) = id {
            spec = spec.with_unique_id(id);
        }
        let role = if rank == 0 {
            "prefill (sends)"
        } else {
            "decode (receives)"
        };
        spec = spec.with_placement(format!("KV link {role}"));
        let membership = Rendezvous::join(enabled.registry.as_ref(), &spec, host(), RENDEZVOUS_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let unique_id = membership
            .unique_id
            .clone()
            .ok_or_else(|| format!("link {name}: the sender published no NCCL id"))?;
        let (endpoint, link_name) = (enabled.endpoint.clone(), name.to_owned());
        // NCCL's own join blocks until both sides are in; a side that died after the rendezvous would hold it
        // forever, so the wait is bounded (the thread is left to NCCL; a link it makes late is dropped, closing it).
        let joining = tokio::task::spawn_blocking(move || endpoint.connect(&link_name, &unique_id, rank == 0));
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, joining).await;
        membership.leave().await;
        let link = connected
            .map_err(|_| format!("link {name}: NCCL did not connect within {CONNECT_TIMEOUT:?} (the other side left)"))?
            .map_err(|e| format!("link {name}: joining failed: {e}"))?
            .map_err(|e| e.to_string())?;
        tracing::info!(link = name, role, device_bytes = link.device_bytes(), "NCCL KV link up");
        Ok(link)
    }

    /// Returns a link whose transfer ended cleanly to the idle pool.
    pub fn give_back(&self, slot: LeaseSlot, link: PeerKv) {
        if link.is_aborted() {
            return;
        }
        let mut idle = lock(&self.inner.idle);
        keep_newest(&mut idle, (slot.kv_addr, link));
    }
}

/// The right to one of a decode worker's links for one transfer, and the link's name. Give the link back with
/// [`NcclLinks::give_back`] after a clean transfer; dropping the slot instead forgets the link.
#[derive(Debug)]
pub struct LeaseSlot {
    pub name: String,
    kv_addr: String,
    /// Counts the link among the peer's [`LINKS_PER_PEER`] while leased.
    _permit: OwnedSemaphorePermit,
}

/// Locks a table of links; a poisoned lock still guards a consistent table (nothing panics while holding one).
fn lock<T>(table: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Appends `entry` (most recently used last), closing the least recently used links beyond [`MAX_KEPT_LINKS`].
fn keep_newest(links: &mut Vec<(String, PeerKv)>, entry: (String, PeerKv)) {
    links.retain(|(_, link)| !link.is_aborted());
    links.push(entry);
    let excess = links.len().saturating_sub(MAX_KEPT_LINKS);
    for (_, link) in links.drain(..excess) {
        link.abort("more links than a worker keeps; the least recently used goes");
    }
}

fn started_nanos() -> u128 {
    static STARTED: OnceLock<u128> = OnceLock::new();
    *STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    })
}

/// What this side announces in the rendezvous (its host, for operators reading `groups/`).
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned())
    })
}
