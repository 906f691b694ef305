//! Chained hashes of fixed-size token blocks: the keys of the engine's prefix cache and the router's
//! prefix index.
//!
//! A prompt is cut into blocks of `block_size` tokens; only full blocks are hashed. Block `i`'s hash covers
//! its parent's hash and its own token ids:
//!
//! ```text
//! h_0 = xxh3_64_with_seed(le(tokens_0), seed)
//! h_i = xxh3_64_with_seed(le(h_{i-1}) ++ le(tokens_i), seed)     (i > 0; le = little-endian bytes, u64/u32)
//! ```
//!
//! so equal hashes mean (up to 64-bit collisions) equal *prefixes*, not just equal blocks, and the same
//! block after a different prefix hashes differently. The seed separates models, adapters or anything
//! else that makes equal tokens mean different KV.
//! Invariant: [`block_hashes`] and a [`BlockHasher`] fed the same tokens in any chunking give the same
//! hashes; both are pure functions of (tokens, block_size, seed), stable across processes and machines.
//! Cost: one xxh3 pass over 4 bytes per token (+8 per block): gigabytes per second.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The hash of a full block of tokens and, through its parent, of every block before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

/// The hashes of every full block of `tokens`, in order; a trailing partial block gets none, and a
/// `block_size` of 0 gives none.
pub fn block_hashes(tokens: &[u32], block_size: usize, seed: u64) -> Vec<BlockHash> {
    let mut hasher = BlockHasher::new(block_size, seed);
    hasher.extend(tokens)
}

/// Hashes blocks as their tokens arrive (prompt chunks, then generated tokens), extending one chain.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    block_size: usize,
    seed: u64,
    parent: Option<BlockHash>,
    /// Tokens of the block being filled (fewer than `block_size`).
    pending: Vec<u32>,
    /// Reused input buffer: parent bytes then token bytes.
    bytes: Vec<u8>,
}

impl BlockHasher {
    /// A hasher at the start of a sequence. A `block_size` of 0 never completes a block.
    pub fn new(block_size: usize, seed: u64) -> Self {
        Self::resume(None, block_size, seed)
    }

    /// A hasher continuing a chain whose last full block hashed to `parent` (`None`: the start).
    pub fn resume(parent: Option<BlockHash>, block_size: usize, seed: u64) -> Self {
        Self {
            block_size,
            seed,
            parent,
            pending: Vec::with_capacity(block_size),
            bytes: Vec::with_capacity(8 + 4 * block_size),
        }
    }

    /// Adds one token; returns the block's hash if it completes a block.
    pub fn push(&mut self, token: u32) -> Option<BlockHash> {
        if self.block_size == 0 {
            return None;
        }
        self.pending.push(token);
        if self.pending.len() < self.block_size {
            return None;
        }
        let hash = self.hash_block();
        self.pending.clear();
        Some(hash)
    }

    /// Adds `tokens`; returns the hashes of the blocks they complete, in order.
    pub fn extend(&mut self, tokens: &[u32]) -> Vec<BlockHash> {
        if self.block_size == 0 {
            return Vec::new();
        }
        let mut hashes = Vec::with_capacity((self.pending.len() + tokens.len()) / self.block_size);
        let mut rest = tokens;
        while !rest.is_empty() {
            let take = (self.block_size - self.pending.len()).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            self.pending.extend_from_slice(chunk);
            rest = tail;
            if self.pending.len() == self.block_size {
                hashes.push(self.hash_block());
                self.pending.clear();
            }
        }
        hashes
    }

    /// The hash of the last full block (`None` before the first).
    pub fn last(&self) -> Option<BlockHash> {
        self.parent
    }

    /// Tokens waiting for their block to fill.
    pub fn pending(&self) -> &[u32] {
        &self.pending
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Hashes the full `pending` block onto the chain.
    fn hash_block(&mut self) -> BlockHash {
        self.bytes.clear();
        if let Some(BlockHash(parent)) = self.parent {
            self.bytes.extend_from_slice(&parent.to_le_bytes());
        }
        for token in &self.pending {
            self.bytes.extend_from_slice(&token.to_le_bytes());
        }
        let hash = BlockHash(xxh3_64_with_seed(&self.bytes, self.seed));
        self.parent = Some(hash);
        hash
    }
}

#[cfg(test)]
mod tests;
