//! Paged KV storage: per layer, one pool of fixed-size blocks for keys and one for values.
//!
//! Layout per layer: `[block][kv_head][slot][head_dim]`, so one head's slice of a block is contiguous — attention
//! gathers a head's keys with one `copy_from_slice` per block, and a transport can ship a whole block per layer as
//! one contiguous range. Ownership of blocks is the block manager's business; this type only stores values.

use super::BlockId;

#[derive(Debug)]
pub struct KvCache {
    n_layers: usize,
    n_blocks: usize,
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
}

/// The dimensions of one KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvShape {
    pub n_layers: usize,
    pub n_blocks: usize,
    pub block_size: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// Bytes one token's keys and values take across all layers.
    pub fn bytes_per_token(&self) -> usize {
        2 * self.n_layers * self.n_kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }
}

impl KvCache {
    pub fn new(shape: KvShape) -> Self {
        let per_layer = shape.n_blocks * shape.n_kv_heads * shape.block_size * shape.head_dim;
        KvCache {
            n_layers: shape.n_layers,
            n_blocks: shape.n_blocks,
            block_size: shape.block_size,
            n_kv_heads: shape.n_kv_heads,
            head_dim: shape.head_dim,
            keys: (0..shape.n_layers).map(|_| vec![0.0; per_layer]).collect(),
            values: (0..shape.n_layers).map(|_| vec![0.0; per_layer]).collect(),
        }
    }

    pub fn shape(&self) -> KvShape {
        KvShape {
            n_layers: self.n_layers,
            n_blocks: self.n_blocks,
            block_size: self.block_size,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn byte_len(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|v| v.len() * 4).sum()
    }

    fn offset(&self, block: BlockId, head: usize, slot: usize) -> usize {
        ((block as usize * self.n_kv_heads + head) * self.block_size + slot) * self.head_dim
    }

    /// Stores one token's keys and values (`[n_kv_heads * head_dim]` each) at `slot` of `block`.
    pub fn write(&mut self, layer: usize, block: BlockId, slot: usize, k: &[f32], v: &[f32]) {
        let hd = self.head_dim;
        for h in 0..self.n_kv_heads {
            let at = self.offset(block, h, slot);
            self.keys[layer][at..at + hd].copy_from_slice(&k[h * hd..(h + 1) * hd]);
            self.values[layer][at..at + hd].copy_from_slice(&v[h * hd..(h + 1) * hd]);
        }
    }

    /// Copies the first `n_tokens` positions of one head, following `blocks`, into contiguous `[n_tokens, head_dim]`.
    pub fn gather(&self, layer: usize, head: usize, blocks: &[BlockId], n_tokens: usize, k: &mut [f32], v: &mut [f32]) {
        let hd = self.head_dim;
        let mut t = 0;
        for &block in blocks {
            if t >= n_tokens {
                break;
            }
            let take = (n_tokens - t).min(self.block_size);
            let at = self.offset(block, head, 0);
            k[t * hd..(t + take) * hd].copy_from_slice(&self.keys[layer][at..at + take * hd]);
            v[t * hd..(t + take) * hd].copy_from_slice(&self.values[layer][at..at + take * hd]);
            t += take;
        }
    }

    /// One block's keys and values in one layer, each `block_floats()` long — what a KV transfer ships.
    pub fn block_layer(&self, layer: usize, block: BlockId) -> (&[f32], &[f32]) {
        let len = self.shape().block_floats();
        let at = block as usize * len;
        (&self.keys[layer][at..at + len], &self.values[layer][at..at + len])
    }

    /// Overwrites one block's keys and values in one layer (each `block_floats()` long) — a KV transfer landing.
    pub fn write_block_layer(&mut self, layer: usize, block: BlockId, k: &[f32], v: &[f32]) {
        let len = self.shape().block_floats();
        let at = block as usize * len;
        self.keys[layer][at..at + len].copy_from_slice(k);
        self.values[layer][at..at + len].copy_from_slice(v);
    }

    /// Copies a whole block (every layer) — copy-on-write when sequences forked from one prompt diverge.
    pub fn copy_block(&mut self, src: BlockId, dst: BlockId) {
        let len = self.n_kv_heads * self.block_size * self.head_dim;
        let (s, d) = (src as usize * len, dst as usize * len);
        for pool in self.keys.iter_mut().chain(self.values.iter_mut()) {
            pool.copy_within(s..s + len, d);
        }
    }
}
