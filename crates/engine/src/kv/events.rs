//! Prefix-cache events: which block hashes a worker holds, as a numbered stream a router can follow and resume.
//!
//! Every block published to the prefix cache emits `Stored`, every cached block evicted emits `Removed`. Records
//! carry consecutive sequence numbers. The log keeps the most recent `capacity` records, so a subscriber that
//! reconnects can resume from its last sequence number; one that fell further behind gets `Gap` and rebuilds from
//! a snapshot (the set of hashes held, with the sequence number it is current to). Appending is O(1).

use std::collections::VecDeque;

use cleave_tokens::BlockHash;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvEvent {
    Stored { hash: BlockHash },
    Removed { hash: BlockHash },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvEventRecord {
    pub seq: u64,
    pub event: KvEvent,
}

/// The requested sequence number is no longer (or not yet) in the log: take a snapshot instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Oldest sequence number still held.
    pub oldest: u64,
    /// The next sequence number to be assigned.
    pub next: u64,
}

#[derive(Debug)]
pub struct KvEventLog {
    records: VecDeque<KvEventRecord>,
    next_seq: u64,
    capacity: usize,
}

impl KvEventLog {
    pub fn new(capacity: usize) -> Self {
        KvEventLog {
            records: VecDeque::with_capacity(capacity.min(4096)),
            next_seq: 1,
            capacity: capacity.max(1),
        }
    }

    /// The sequence number the next record will get; a snapshot taken now is current up to `next_seq() - 1`.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn push(&mut self, event: KvEvent) -> KvEventRecord {
        let record = KvEventRecord {
            seq: self.next_seq,
            event,
        };
        self.next_seq += 1;
        if self.records.len() == self.capacity {
            self.records.pop_front();
        }
        self.records.push_back(record);
        record
    }

    /// Records with `seq >= from`, oldest first.
    pub fn since(&self, from: u64) -> Result<Vec<KvEventRecord>, Gap> {
        let oldest = self.records.front().map_or(self.next_seq, |r| r.seq);
        if from < oldest || from > self.next_seq {
            return Err(Gap {
                oldest,
                next: self.next_seq,
            });
        }
        Ok(self.records.iter().skip((from - oldest) as usize).copied().collect())
    }
}

#[cfg(test)]
mod tests;
