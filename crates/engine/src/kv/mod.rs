//! The paged KV cache: block storage, and the block manager that owns allocation, sharing and prefix reuse.

mod block_manager;
mod cache;

pub use block_manager::{BlockManager, PrefixCacheStats};
pub use cache::{KvCache, KvShape};

/// Index of a block in every layer's pool.
pub type BlockId = u32;
