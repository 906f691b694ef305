//! The router's prefix index: block hash → workers holding that block, per worker the hashes it holds.
//!
//! Invariants: `holders[h]` contains `w` exactly when `held[w]` contains `h`; each worker's events are applied in
//! sequence order, and a missing sequence number is reported (`EventGap`) so the caller resynchronises from a
//! snapshot instead of silently diverging. Matching a prompt costs O(matched blocks × holders per block); applying an
//! event is O(holders per block).

use std::collections::{HashMap, HashSet};

use cleave_tokens::BlockHash;

/// Dense index of a worker in the prefix index (assigned by `add_worker`).
pub type WorkerIdx = u32;

/// A worker's event stream skipped sequence numbers: resynchronise it from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("worker {worker}: expected KV event {expected}, got {got}; take a snapshot")]
pub struct EventGap {
    pub worker: WorkerIdx,
    pub expected: u64,
    pub got: u64,
}

#[derive(Debug, Default)]
struct WorkerEntry {
    held: HashSet<BlockHash>,
    /// The next event sequence number expected from this worker (0: none applied yet, accept any).
    next_seq: u64,
    live: bool,
}

#[derive(Debug, Default)]
pub struct PrefixIndex {
    holders: HashMap<BlockHash, Vec<WorkerIdx>>,
    workers: Vec<WorkerEntry>,
}

impl PrefixIndex {
    pub fn new() -> Self {
        PrefixIndex::default()
    }

    /// A new worker slot (indices of removed workers are not reused, so stale events cannot hit a newcomer).
    pub fn add_worker(&mut self) -> WorkerIdx {
        self.workers.push(WorkerEntry {
            live: true,
            ..WorkerEntry::default()
        });
        (self.workers.len() - 1) as WorkerIdx
    }

    /// Forgets everything a worker held (it left, or its stream must be rebuilt).
    pub fn clear_worker(&mut self, w: WorkerIdx) {
        let Some(entry) = self.workers.get_mut(w as usize) else {
            return;
        };
        for h in entry.held.drain() {
            if let Some(list) = self.holders.get_mut(&h) {
                list.retain(|&x| x != w);
                if list.is_empty() {
                    self.holders.remove(&h);
                }
            }
        }
        entry.next_seq = 0;
    }

    pub fn remove_worker(&mut self, w: WorkerIdx) {
        self.clear_worker(w);
        if let Some(entry) = self.workers.get_mut(w as usize) {
            entry.live = false;
        }
    }

    /// Replaces a worker's contents with a snapshot current up to (excluding) `next_seq`.
    pub fn load_snapshot(&mut self, w: WorkerIdx, hashes: impl IntoIterator<Item = BlockHash>, next_seq: u64) {
        self.clear_worker(w);
        for h in hashes {
            self.insert(w, h);
        }
        if let Some(entry) = self.workers.get_mut(w as usize) {
            entry.next_seq = next_seq;
        }
    }

    /// Applies one event. Events older than expected are ignored (a replay overlap); a skipped number is an error.
    pub fn apply(&mut self, w: WorkerIdx, seq: u64, hash: BlockHash, removed: bool) -> Result<(), EventGap> {
        let Some(entry) = self.workers.get_mut(w as usize) else {
            return Ok(());
        };
        if !entry.live {
            return Ok(());
        }
        if entry.next_seq != 0 {
            if seq < entry.next_seq {
                return Ok(());
            }
            if seq > entry.next_seq {
                return Err(EventGap {
                    worker: w,
                    expected: entry.next_seq,
                    got: seq,
                });
            }
        }
        entry.next_seq = seq + 1;
        if removed {
            self.remove(w, hash)
        } else {
            self.insert(w, hash)
        }
        Ok(())
    }

    fn insert(&mut self, w: WorkerIdx, h: BlockHash) {
        let Some(entry) = self.workers.get_mut(w as usize) else {
            return;
        };
        if entry.held.insert(h) {
            self.holders.entry(h).or_default().push(w);
        }
    }

    fn remove(&mut self, w: WorkerIdx, h: BlockHash) {
        let Some(entry) = self.workers.get_mut(w as usize) else {
            return;
        };
        if entry.held.remove(&h)
            && let Some(list) = self.holders.get_mut(&h)
        {
            list.retain(|&x| x != w);
            if list.is_empty() {
                self.holders.remove(&h);
            }
        }
    }

    /// For each worker holding at least the first block, how many leading blocks of `hashes` it holds.
    /// `out` is cleared and filled with `(worker, matched_blocks)`.
    pub fn match_prefix(&self, hashes: &[BlockHash], out: &mut Vec<(WorkerIdx, usize)>) {
        out.clear();
        let Some(first) = hashes.first().and_then(|h| self.holders.get(h)) else {
            return;
        };
        out.extend(first.iter().map(|&w| (w, 1)));
        for (i, h) in hashes.iter().enumerate().skip(1) {
            let Some(holders) = self.holders.get(h) else { break };
            let mut advanced = false;
            for entry in out.iter_mut().filter(|e| e.1 == i) {
                if holders.contains(&entry.0) {
                    entry.1 = i + 1;
                    advanced = true;
                }
            }
            if !advanced {
                break;
            }
        }
    }

    /// Blocks indexed (distinct hashes).
    pub fn n_blocks(&self) -> usize {
        self.holders.len()
    }

    pub fn worker_blocks(&self, w: WorkerIdx) -> usize {
        self.workers.get(w as usize).map_or(0, |e| e.held.len())
    }
}

#[cfg(test)]
mod tests;
