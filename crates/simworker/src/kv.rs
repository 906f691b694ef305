//! The simulated KV cache: block accounting, a prefix cache keyed by chained block hashes, LRU eviction, and the
//! numbered event log a router follows — the engine's semantics without any KV storage.
//!
//! Invariants: every block is free, private (referenced, no hash) or cached (has a hash; referenced, or idle and
//! evictable); `free + private + cached == total`. Only idle cached blocks are evicted, least recently released
//! first. Each publication emits `Stored`, each eviction `Removed`, with consecutive sequence numbers from 1; the
//! log keeps the newest `capacity` records. Every operation is O(log n) in the cached blocks.

use std::collections::{BTreeSet, HashMap, VecDeque};

use cleave_proto::v1;
use cleave_tokens::BlockHash;

/// A block a sequence holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeldBlock {
    Private,
    Cached(BlockHash),
}

#[derive(Debug, Clone, Copy)]
struct CachedBlock {
    refs: u32,
    released_at: u64,
}

/// A resume point no longer (or not yet) in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gap {
    pub oldest: u64,
    pub next: u64,
}

#[derive(Debug)]
pub(crate) struct SimKv {
    total: usize,
    private: usize,
    cached: HashMap<BlockHash, CachedBlock>,
    idle: BTreeSet<(u64, BlockHash)>,
    clock: u64,
    log: VecDeque<v1::KvEvent>,
    log_capacity: usize,
    next_seq: u64,
    /// Records appended since the owner last drained them for live subscribers.
    fresh: Vec<v1::KvEvent>,
}

impl SimKv {
    pub fn new(total: usize, log_capacity: usize) -> Self {
        SimKv {
            total,
            private: 0,
            cached: HashMap::new(),
            idle: BTreeSet::new(),
            clock: 0,
            log: VecDeque::with_capacity(log_capacity.min(4096)),
            log_capacity: log_capacity.max(1),
            next_seq: 1,
            fresh: Vec::new(),
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Blocks an allocation could obtain now: free plus evictable.
    pub fn available(&self) -> usize {
        self.total - self.private - self.cached.len() + self.idle.len()
    }

    /// Takes a reference on each block of the longest cached prefix of `hashes`; returns them.
    pub fn acquire_prefix(&mut self, hashes: &[BlockHash]) -> Vec<HeldBlock> {
        let mut held = Vec::new();
        for &hash in hashes {
            let Some(block) = self.cached.get_mut(&hash) else { break };
            if block.refs == 0 {
                self.idle.remove(&(block.released_at, hash));
            }
            block.refs += 1;
            held.push(HeldBlock::Cached(hash));
        }
        held
    }

    /// A fresh private block, evicting the least recently released idle cached block if none is free.
    pub fn allocate(&mut self) -> Option<HeldBlock> {
        if self.total - self.private - self.cached.len() == 0 {
            let (_, hash) = self.idle.pop_first()?;
            self.cached.remove(&hash);
            self.push_event(hash, true);
        }
        self.private += 1;
        Some(HeldBlock::Private)
    }

    /// Publishes a computed private block under `hash`. If that content is already cached the block stays private.
    pub fn register(&mut self, block: &mut HeldBlock, hash: BlockHash) {
        if *block != HeldBlock::Private || self.cached.contains_key(&hash) {
            return;
        }
        self.private -= 1;
        self.cached.insert(
            hash,
            CachedBlock {
                refs: 1,
                released_at: 0,
            },
        );
        *block = HeldBlock::Cached(hash);
        self.push_event(hash, false);
    }

    /// Drops the references of a sequence's blocks, tail first so its prefix stays cached longest.
    pub fn release_all(&mut self, blocks: &[HeldBlock]) {
        for block in blocks.iter().rev() {
            match *block {
                HeldBlock::Private => self.private -= 1,
                HeldBlock::Cached(hash) => {
                    if let Some(b) = self.cached.get_mut(&hash) {
                        b.refs -= 1;
                        if b.refs == 0 {
                            self.clock += 1;
                            b.released_at = self.clock;
                            self.idle.insert((self.clock, hash));
                        }
                    }
                }
            }
        }
    }

    pub fn cached_hashes(&self) -> Vec<u64> {
        self.cached.keys().map(|h| h.0).collect()
    }

    /// The sequence number the next event will get; a snapshot now is current up to (excluding) it.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Events with `seq >= from`, oldest first.
    pub fn events_since(&self, from: u64) -> Result<Vec<v1::KvEvent>, Gap> {
        let oldest = self.log.front().map_or(self.next_seq, |e| e.seq);
        if from < oldest || from > self.next_seq {
            return Err(Gap {
                oldest,
                next: self.next_seq,
            });
        }
        Ok(self.log.iter().skip((from - oldest) as usize).copied().collect())
    }

    /// Events appended since the last call, for live subscribers.
    pub fn drain_fresh(&mut self) -> Vec<v1::KvEvent> {
        std::mem::take(&mut self.fresh)
    }

    fn push_event(&mut self, hash: BlockHash, removed: bool) {
        let event = v1::KvEvent {
            seq: self.next_seq,
            block_hash: hash.0,
            removed,
        };
        self.next_seq += 1;
        if self.log.len() == self.log_capacity {
            self.log.pop_front();
        }
        self.log.push_back(event);
        self.fresh.push(event);
    }
}

#[cfg(test)]
mod tests;
