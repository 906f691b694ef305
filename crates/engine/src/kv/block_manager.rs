//! Block ownership: reference counts, the prefix cache keyed by chained block hashes, and LRU eviction.
//!
//! Invariants: a block is in exactly one of three states — free (in `free`, no hash), referenced (`ref_count > 0`),
//! or cached-idle (`ref_count == 0`, has a hash, in `idle`). Only cached-idle blocks are evicted, least recently
//! released first, and a hash maps to at most one block. Every operation is O(log n) or better.

use std::collections::{BTreeSet, HashMap};

use cleave_tokens::BlockHash;

use super::BlockId;
use super::events::KvEvent;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Full prompt blocks looked up.
    pub queried_blocks: u64,
    /// Of those, blocks found cached.
    pub hit_blocks: u64,
}

#[derive(Debug)]
pub struct BlockManager {
    ref_counts: Vec<u32>,
    hashes: Vec<Option<BlockHash>>,
    /// When each idle block was released; orders `idle`.
    released_at: Vec<u64>,
    free: Vec<BlockId>,
    idle: BTreeSet<(u64, BlockId)>,
    by_hash: HashMap<BlockHash, BlockId>,
    clock: u64,
    stats: PrefixCacheStats,
    /// Publications and evictions since the owner last drained them.
    events: Vec<KvEvent>,
}

impl BlockManager {
    pub fn new(n_blocks: usize) -> Self {
        BlockManager {
            ref_counts: vec![0; n_blocks],
            hashes: vec![None; n_blocks],
            released_at: vec![0; n_blocks],
            // Popped from the back: hand out low ids first, which keeps tests readable.
            free: (0..n_blocks as BlockId).rev().collect(),
            idle: BTreeSet::new(),
            by_hash: HashMap::new(),
            clock: 0,
            stats: PrefixCacheStats::default(),
            events: Vec::new(),
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks that an allocation could obtain now (free plus evictable).
    pub fn available(&self) -> usize {
        self.free.len() + self.idle.len()
    }

    /// Blocks holding cached prefixes that nobody references.
    pub fn cached_idle(&self) -> usize {
        self.idle.len()
    }

    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }

    /// A fresh, exclusively owned block, evicting the least recently used idle cached block if none is free.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.idle.pop_first()?;
                if let Some(hash) = self.hashes[b as usize].take() {
                    self.by_hash.remove(&hash);
                    self.events.push(KvEvent::Removed { hash });
                }
                b
            }
        };
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// The cached blocks matching the longest prefix of `hashes`, each acquired (reference taken) for the caller.
    pub fn acquire_prefix(&mut self, hashes: &[BlockHash]) -> Vec<BlockId> {
        let mut blocks = Vec::new();
        for h in hashes {
            match self.by_hash.get(h) {
                Some(&b) => {
                    self.acquire(b);
                    blocks.push(b);
                }
                None => break,
            }
        }
        self.stats.queried_blocks += hashes.len() as u64;
        self.stats.hit_blocks += blocks.len() as u64;
        blocks
    }

    /// How many leading blocks of `hashes` are cached, without taking references (for routing and scoring).
    pub fn cached_prefix_len(&self, hashes: &[BlockHash]) -> usize {
        hashes.iter().take_while(|h| self.by_hash.contains_key(h)).count()
    }

    /// Takes another reference to a block already referenced or cached.
    pub fn acquire(&mut self, block: BlockId) {
        let i = block as usize;
        if self.ref_counts[i] == 0 {
            self.idle.remove(&(self.released_at[i], block));
        }
        self.ref_counts[i] += 1;
    }

    /// Drops one reference. The last release parks a hashed block as idle-cached, or frees an unhashed one.
    pub fn release(&mut self, block: BlockId) {
        let i = block as usize;
        debug_assert!(self.ref_counts[i] > 0, "release of unreferenced block {block}");
        self.ref_counts[i] = self.ref_counts[i].saturating_sub(1);
        if self.ref_counts[i] == 0 {
            if self.hashes[i].is_some() {
                self.clock += 1;
                self.released_at[i] = self.clock;
                self.idle.insert((self.clock, block));
            } else {
                self.free.push(block);
            }
        }
    }

    pub fn release_all(&mut self, blocks: &[BlockId]) {
        // Release tail first so that, of one sequence's blocks, the prefix stays cached longest.
        for &b in blocks.iter().rev() {
            self.release(b);
        }
    }

    /// Publishes a full, computed block under its chained hash so later requests can reuse it. If the same content
    /// is already cached under another block, this block stays private and is freed normally on release.
    pub fn register(&mut self, block: BlockId, hash: BlockHash) {
        if self.hashes[block as usize].is_some() || self.by_hash.contains_key(&hash) {
            return;
        }
        self.hashes[block as usize] = Some(hash);
        self.by_hash.insert(hash, block);
        self.events.push(KvEvent::Stored { hash });
    }

    /// Takes the events recorded since the last call, oldest first.
    pub fn drain_events(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    /// Every hash in the prefix cache (referenced or idle).
    pub fn cached_hashes(&self) -> Vec<BlockHash> {
        self.by_hash.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests;
