//! The paged KV cache: block storage, and the block manager that owns allocation, sharing and prefix reuse.

mod block_manager;
mod cache;
mod events;

pub use block_manager::{BlockManager, PrefixCacheStats};
pub use cache::{KvCache, KvShape};
pub use events::{Gap, KvEvent, KvEventLog, KvEventRecord};

/// Index of a block in every layer's pool.
pub type BlockId = u32;
