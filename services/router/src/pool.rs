//! The workers a router sends to: their clients, their latest load, and the prefix index their KV events feed.
//!
//! Each worker has two background tasks. One follows its load reports. The other loads a `KvSnapshot`, then follows
//! `SubscribeKvEvents` from the snapshot's sequence number; on a gap or a broken stream it starts over from a new
//! snapshot, so a router restarted or reconnected rebuilds its index without a broker. While a worker is
//! unreachable the router keeps its last known state but does not route to it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use cleave_tokens::BlockHash;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use crate::index::{PrefixIndex, WorkerIdx};
use crate::policy::{Candidate, Decision, PolicyConfig, WorkerLoad, choose};

const RETRY_DELAY: Duration = Duration::from_millis(250);
const LOAD_INTERVAL_MS: u32 = 50;

#[derive(Debug)]
struct Slot {
    idx: WorkerIdx,
    addr: String,
    client: WorkerClient<Channel>,
    load: Mutex<WorkerLoad>,
    /// Set while the load stream is up.
    reachable: AtomicBool,
}

/// A worker and the two tasks following it; dropping it stops them.
#[derive(Debug)]
struct Member {
    slot: Arc<Slot>,
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
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Route {
    pub worker: WorkerIdx,
    pub addr: String,
    pub client: WorkerClient<Channel>,
    pub decision: Decision,
}

impl WorkerPool {
    pub fn new(policy: PolicyConfig) -> WorkerPool {
        WorkerPool {
            members: RwLock::new(Vec::new()),
            index: Arc::new(Mutex::new(PrefixIndex::new())),
            policy,
        }
    }

    /// A pool over a fixed list of worker URLs.
    pub fn start(addrs: &[String], policy: PolicyConfig) -> WorkerPool {
        let pool = WorkerPool::new(policy);
        pool.set_workers(addrs);
        pool
    }

    /// Makes the pool follow exactly these worker URLs: new ones are connected (lazily) and followed, gone ones
    /// are dropped from routing and from the prefix index. An address that is not a valid URL is skipped with a
    /// warning (one bad registration must not freeze membership).
    pub fn set_workers(&self, addrs: &[String]) {
        let mut fresh = Vec::new();
        for addr in addrs {
            let known = self
                .members
                .read()
                .map(|m| m.iter().any(|m| &m.slot.addr == addr))
                .unwrap_or(false);
            if !known && !fresh.iter().any(|(a, _): &(String, Channel)| a == addr) {
                match Endpoint::from_shared(addr.clone()) {
                    Ok(endpoint) => {
                        fresh.push((
                            addr.clone(),
                            endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy(),
                        ));
                    }
                    Err(e) => tracing::warn!(worker = %addr, error = %e, "not a valid worker URL; skipped"),
                }
            }
        }
        let Ok(mut members) = self.members.write() else { return };
        let Ok(mut index) = self.index.lock() else { return };
        members.retain(|m| {
            let keep = addrs.contains(&m.slot.addr);
            if !keep {
                tracing::info!(worker = %m.slot.addr, "worker left the pool");
                index.remove_worker(m.slot.idx);
            }
            keep
        });
        for (addr, channel) in fresh {
            tracing::info!(worker = %addr, "worker joined the pool");
            let slot = Arc::new(Slot {
                idx: index.add_worker(),
                addr,
                client: WorkerClient::new(channel),
                load: Mutex::new(WorkerLoad::default()),
                reachable: AtomicBool::new(false),
            });
            let tasks = [
                tokio::spawn(follow_load(slot.clone())),
                tokio::spawn(follow_kv_events(slot.clone(), self.index.clone())),
            ];
            members.push(Member { slot, tasks });
        }
    }

    pub fn block_size(&self) -> usize {
        self.policy.block_size
    }

    /// Workers currently reachable.
    pub fn reachable(&self) -> usize {
        self.members.read().map_or(0, |m| {
            m.iter().filter(|m| m.slot.reachable.load(Ordering::Relaxed)).count()
        })
    }

    /// The cheapest reachable worker for a prompt with these block hashes, counting the request against its load
    /// at once so a burst spreads before the next load report arrives.
    pub fn route(&self, hashes: &[BlockHash], prompt_tokens: usize) -> Option<Route> {
        let mut matches = Vec::new();
        if let Ok(index) = self.index.lock() {
            index.match_prefix(hashes, &mut matches);
        }
        let members = self.members.read().ok()?;
        let candidates: Vec<Candidate> = members
            .iter()
            .map(|m| &m.slot)
            .filter(|s| s.reachable.load(Ordering::Relaxed))
            .map(|s| Candidate {
                worker: s.idx,
                load: s.load.lock().map(|l| *l).unwrap_or_default(),
                cached_blocks: matches.iter().find(|m| m.0 == s.idx).map_or(0, |m| m.1),
            })
            .collect();
        let decision = choose(prompt_tokens, &candidates, &self.policy)?;
        let slot = &members.iter().find(|m| m.slot.idx == decision.worker)?.slot;
        if let Ok(mut load) = slot.load.lock() {
            load.waiting += 1;
            load.queued_prefill_tokens += (prompt_tokens - decision.cached_tokens) as u64;
        }
        Some(Route {
            worker: slot.idx,
            addr: slot.addr.clone(),
            client: slot.client.clone(),
            decision,
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
