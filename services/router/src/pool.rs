//! The workers a router sends to: their roles, clients, latest load, and the prefix index their KV events feed.
//!
//! Each worker has two background tasks. One follows its load reports. The other loads a `KvSnapshot`, then follows
//! `SubscribeKvEvents` from the snapshot's sequence number; on a gap or a broken stream it starts over from a new
//! snapshot, so a router restarted or reconnected rebuilds its index without a broker. While a worker is
//! unreachable the router keeps its last known state but does not route to it. Prefill workers are followed the same
//! way (their caches decide which of them prefills a prompt); only decode and both-role workers are sent requests.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cleave_cluster::registry::WorkerRole;
use cleave_cluster::tls::{ClusterTls, peer_endpoint};
use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_tokens::BlockHash;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::index::{PrefixIndex, WorkerIdx};
use crate::policy::{Candidate, PolicyConfig, RoutePlan, WorkerLoad, has_decode_headroom, plan_route, prompt_blocks};

const RETRY_DELAY: Duration = Duration::from_millis(250);
const LOAD_INTERVAL_MS: u32 = 50;

#[derive(Debug)]
struct Slot {
    idx: WorkerIdx,
    addr: String,
    client: WorkerClient<Channel>,
    load: Mutex<WorkerLoad>,
    /// `waiting` as last reported (`load.waiting` also counts what was routed here since).
    reported_waiting: AtomicU32,
    /// Requests this router sent here that have not had their first token yet (exact, never stale).
    pending: Arc<AtomicU32>,
    /// Set while the load stream is up.
    reachable: AtomicBool,
}

/// One request routed to a worker and still waiting for its first token; dropping it (at the first token, or when
/// the request ends) takes it off the worker's pending count.
#[derive(Debug)]
pub struct PendingFirstToken {
    pending: Arc<AtomicU32>,
}

impl Drop for PendingFirstToken {
    fn drop(&mut self) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A worker's URL and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEndpoint {
    /// gRPC URL, e.g. `http://127.0.0.1:50061`.
    pub addr: String,
    pub role: WorkerRole,
    /// For a parallel group serving as one replica: its name in `groups/` and its split, e.g.
    /// `w1-1795… (tensor 3 × pipeline 2)`; empty for one device.
    pub group: String,
}

impl WorkerEndpoint {
    pub fn new(addr: impl Into<String>, role: WorkerRole) -> Self {
        WorkerEndpoint {
            addr: addr.into(),
            role,
            group: String::new(),
        }
    }

    /// This endpoint as the replica a parallel group forms (see `group`).
    pub fn in_group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// A worker that prefills and decodes (aggregated serving).
    pub fn both(addr: impl Into<String>) -> Self {
        WorkerEndpoint::new(addr, WorkerRole::Both)
    }
}

/// A worker and the two tasks following it; dropping it stops them.
#[derive(Debug)]
struct Member {
    slot: Arc<Slot>,
    role: WorkerRole,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Member {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Debug)]
pub struct WorkerPool {
    members: RwLock<Vec<Member>>,
    index: Arc<Mutex<PrefixIndex>>,
    policy: PolicyConfig,
    /// The cluster's mutual TLS for connections to workers; plain text when `None`.
    tls: Option<ClusterTls>,
}

/// Why a request has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("no decode worker is reachable")]
    NoWorker,
    /// Every reachable decode worker is at its waiting-queue bound or lacks free KV blocks for the prompt.
    #[error("all {workers} reachable decode worker(s) are at their queue bound or out of KV blocks")]
    Saturated { workers: usize },
}

/// Where a request goes: its decode worker D (called by the router) and, when prefill is remote, the URL of its
/// prefill worker P (called by D).
#[derive(Debug)]
pub struct Route {
    pub worker: WorkerIdx,
    pub addr: String,
    pub client: WorkerClient<Channel>,
    /// D, optional P, their costs and cached tokens, and why prefill runs where it does.
    pub plan: RoutePlan,
    /// P's gRPC URL; set exactly when `plan.prefill` is.
    pub prefill_addr: Option<String>,
    /// Counts the request against D until its first token: hold it until then.
    pub pending: PendingFirstToken,
}

impl WorkerPool {
    pub fn new(policy: PolicyConfig) -> WorkerPool {
        WorkerPool {
            members: RwLock::new(Vec::new()),
            index: Arc::new(Mutex::new(PrefixIndex::new())),
            policy,
            tls: None,
        }
    }

    /// Dials workers over the cluster's mutual TLS (set before adding workers).
    pub fn with_cluster_tls(mut self, tls: Option<ClusterTls>) -> WorkerPool {
        self.tls = tls;
        self
    }

    /// A pool over a fixed list of workers.
    pub fn start(workers: &[WorkerEndpoint], policy: PolicyConfig) -> WorkerPool {
        let pool = WorkerPool::new(policy);
        pool.set_workers(workers);
        pool
    }

    /// Makes the pool follow exactly these workers: new ones are connected (lazily) and followed, gone ones are
    /// dropped from routing and from the prefix index, and a known worker whose role changed keeps its state under
    /// the new role. An address listed twice keeps its first role. An address that is not a valid URL is skipped
    /// with a warning (one bad registration must not freeze membership).
    pub fn set_workers(&self, workers: &[WorkerEndpoint]) {
        let mut wanted: Vec<&WorkerEndpoint> = Vec::with_capacity(workers.len());
        for w in workers {
            if !wanted.iter().any(|k| k.addr == w.addr) {
                wanted.push(w);
            }
        }
        let mut fresh = Vec::new();
        for w in &wanted {
            let known = self
                .members
                .read()
                .map(|m| m.iter().any(|m| m.slot.addr == w.addr))
                .unwrap_or(false);
            if !known {
                match peer_endpoint(self.tls.as_ref(), &w.addr) {
                    Ok(endpoint) => {
                        fresh.push((
                            (*w).clone(),
                            endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy(),
                        ));
                    }
                    Err(e) => tracing::warn!(worker = %w.addr, error = %e, "not a valid worker URL; skipped"),
                }
            }
        }
        let Ok(mut members) = self.members.write() else { return };
        let Ok(mut index) = self.index.lock() else { return };
        members.retain_mut(|m| match wanted.iter().find(|w| w.addr == m.slot.addr) {
            Some(w) => {
                if w.role != m.role {
                    tracing::info!(worker = %w.addr, from = ?m.role, to = ?w.role, "worker changed role");
                    m.role = w.role;
                }
                true
            }
            None => {
                tracing::info!(worker = %m.slot.addr, "worker left the pool");
                index.remove_worker(m.slot.idx);
                false
            }
        });
        for (endpoint, channel) in fresh {
            tracing::info!(worker = %endpoint.addr, role = ?endpoint.role, group = %endpoint.group, "worker joined the pool");
            let slot = Arc::new(Slot {
                idx: index.add_worker(),
                addr: endpoint.addr,
                client: WorkerClient::new(channel),
                load: Mutex::new(WorkerLoad::default()),
                reported_waiting: AtomicU32::new(0),
                pending: Arc::default(),
                reachable: AtomicBool::new(false),
            });
            let tasks = [
                tokio::spawn(follow_load(slot.clone())),
                tokio::spawn(follow_kv_events(slot.clone(), self.index.clone())),
            ];
            members.push(Member {
                slot,
                role: endpoint.role,
                tasks,
            });
        }
    }

    pub fn block_size(&self) -> usize {
        self.policy.block_size
    }

    /// Workers currently reachable.
    pub fn reachable(&self) -> usize {
        self.reachable_where(|_| true)
    }

    /// Workers currently reachable whose role passes `filter`.
    pub fn reachable_where(&self, filter: impl Fn(WorkerRole) -> bool) -> usize {
        self.members.read().map_or(0, |m| {
            m.iter()
                .filter(|m| filter(m.role) && m.slot.reachable.load(Ordering::Relaxed))
                .count()
        })
    }

    /// The cheapest reachable decode (or both-role) worker with headroom for a prompt with these block hashes and,
    /// when remote prefill pays, the cheapest prefill worker with headroom (see [`plan_route`]). Decode workers whose
    /// queue is at its bound or whose free KV blocks cannot hold the prompt are left out ([`has_decode_headroom`]);
    /// when that leaves none, the answer is [`RouteError::Saturated`]. The request is counted against the chosen
    /// workers' load at once, so a burst spreads (and meets the bounds) before the next load reports arrive: D gets
    /// a waiting sequence, the prompt's blocks off its free blocks (and the prefill tokens when it prefills itself),
    /// P the prefill tokens it will compute.
    pub fn route(&self, hashes: &[BlockHash], prompt_tokens: usize) -> Result<Route, RouteError> {
        let mut matches = Vec::new();
        if let Ok(index) = self.index.lock() {
            index.match_prefix(hashes, &mut matches);
        }
        let members = self.members.read().map_err(|_| RouteError::NoWorker)?;
        let candidate = |m: &Member| Candidate {
            worker: m.slot.idx,
            load: m.slot.load.lock().map(|l| *l).unwrap_or_default(),
            cached_blocks: matches.iter().find(|c| c.0 == m.slot.idx).map_or(0, |c| c.1),
        };
        let reachable = || members.iter().filter(|m| m.slot.reachable.load(Ordering::Relaxed));
        let reachable_decode: Vec<Candidate> = reachable()
            .filter(|m| matches!(m.role, WorkerRole::Decode | WorkerRole::Both))
            .map(candidate)
            .collect();
        if reachable_decode.is_empty() {
            return Err(RouteError::NoWorker);
        }
        // The queue a new request would join: what the worker last reported waiting, or what this router has sent
        // it that has no first token yet, whichever is more (the report sees other routers; the count is current).
        let queued = |w: WorkerIdx| {
            members.iter().find(|m| m.slot.idx == w).map_or(0, |m| {
                let pending = m.slot.pending.load(Ordering::Acquire);
                m.slot.reported_waiting.load(Ordering::Relaxed).max(pending)
            })
        };
        let decode: Vec<Candidate> = reachable_decode
            .iter()
            .filter(|c| has_decode_headroom(&c.load, queued(c.worker), prompt_tokens, &self.policy))
            .copied()
            .collect();
        let prefill: Vec<Candidate> = reachable()
            .filter(|m| m.role == WorkerRole::Prefill)
            .map(candidate)
            .collect();
        let saturated = RouteError::Saturated {
            workers: reachable_decode.len(),
        };
        let plan = plan_route(prompt_tokens, &decode, &prefill, &self.policy).ok_or(saturated)?;
        let slot_of = |w: WorkerIdx| members.iter().find(|m| m.slot.idx == w).map(|m| &m.slot);
        let d = slot_of(plan.decode.worker).ok_or(RouteError::NoWorker)?;
        let p = plan.prefill.and_then(|p| slot_of(p.worker).map(|slot| (slot, p)));
        if let Ok(mut load) = d.load.lock() {
            load.waiting += 1;
            load.free_blocks = load
                .free_blocks
                .saturating_sub(prompt_blocks(prompt_tokens, &self.policy));
            if p.is_none() {
                load.queued_prefill_tokens += plan.uncached_tokens(prompt_tokens) as u64;
            }
        }
        if let Some((slot, decision)) = p
            && let Ok(mut load) = slot.load.lock()
        {
            load.waiting += 1;
            load.queued_prefill_tokens += (prompt_tokens - decision.cached_tokens) as u64;
        }
        d.pending.fetch_add(1, Ordering::AcqRel);
        Ok(Route {
            pending: PendingFirstToken {
                pending: d.pending.clone(),
            },
            worker: d.idx,
            addr: d.addr.clone(),
            client: d.client.clone(),
            plan,
            prefill_addr: p.map(|(slot, _)| slot.addr.clone()),
        })
    }
}

async fn follow_load(slot: Arc<Slot>) {
    loop {
        let mut client = slot.client.clone();
        match client
            .subscribe_load(v1::SubscribeLoadRequest {
                interval_ms: LOAD_INTERVAL_MS,
            })
            .await
        {
            Ok(response) => {
                let mut stream = response.into_inner();
                while let Ok(Some(report)) = stream.message().await {
                    slot.reported_waiting.store(report.waiting, Ordering::Relaxed);
                    if let Ok(mut load) = slot.load.lock() {
                        *load = WorkerLoad {
                            running: report.running,
                            waiting: report.waiting,
                            queued_prefill_tokens: report.queued_prefill_tokens,
                            free_blocks: report.free_blocks,
                            total_blocks: report.total_blocks,
                        };
                    }
                    slot.reachable.store(true, Ordering::Relaxed);
                }
            }
            Err(status) => tracing::debug!(worker = %slot.addr, %status, "load subscription failed"),
        }
        slot.reachable.store(false, Ordering::Relaxed);
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

async fn follow_kv_events(slot: Arc<Slot>, index: Arc<Mutex<PrefixIndex>>) {
    loop {
        if let Err(status) = sync_kv_events(&slot, &index).await {
            tracing::debug!(worker = %slot.addr, %status, "KV event stream ended; resynchronising");
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

/// One snapshot-then-follow pass; returns when the stream breaks or skips a sequence number.
async fn sync_kv_events(slot: &Slot, index: &Mutex<PrefixIndex>) -> Result<(), tonic::Status> {
    let mut client = slot.client.clone();
    // Subscribe from the snapshot's sequence number; events racing the snapshot are replayed and deduplicated.
    let snapshot = client.kv_snapshot(v1::KvSnapshotRequest {}).await?.into_inner();
    if let Ok(mut index) = index.lock() {
        index.load_snapshot(
            slot.idx,
            snapshot.block_hashes.iter().map(|&h| BlockHash(h)),
            snapshot.next_seq,
        );
    }
    let mut stream = client
        .subscribe_kv_events(v1::SubscribeKvEventsRequest {
            from_seq: snapshot.next_seq,
        })
        .await?
        .into_inner();
    while let Some(batch) = stream.message().await? {
        let Ok(mut index) = index.lock() else { return Ok(()) };
        for e in batch.events {
            if let Err(gap) = index.apply(slot.idx, e.seq, BlockHash(e.block_hash), e.removed) {
                return Err(tonic::Status::out_of_range(gap.to_string()));
            }
        }
    }
    Ok(())
}
