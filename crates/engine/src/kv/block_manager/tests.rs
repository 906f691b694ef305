use cleave_tokens::BlockHash;

use super::*;
use crate::kv::KvEvent;

fn h(v: u64) -> BlockHash {
    BlockHash(v)
}

#[test]
fn allocate_until_exhausted_then_release_frees() {
    let mut m = BlockManager::new(3);
    let blocks: Vec<_> = (0..3).map(|_| m.allocate().unwrap()).collect();
    assert_eq!(blocks, vec![0, 1, 2]);
    assert_eq!(m.allocate(), None);
    m.release(1);
    assert_eq!(m.available(), 1);
    assert_eq!(m.allocate(), Some(1));
}

#[test]
fn cached_blocks_are_reused_then_evicted_lru() {
    let mut m = BlockManager::new(2);
    let a = m.allocate().unwrap();
    let b = m.allocate().unwrap();
    m.register(a, h(10));
    m.register(b, h(20));
    m.release(a);
    m.release(b);
    assert_eq!(m.cached_idle(), 2);
    assert_eq!(m.cached_prefix_len(&[h(10), h(20)]), 2);
    // Reuse takes a reference: the block leaves the idle set and cannot be evicted.
    assert_eq!(m.acquire_prefix(&[h(10), h(99)]), vec![a]);
    assert_eq!(m.ref_count(a), 1);
    // Only b is evictable now.
    assert_eq!(m.allocate(), Some(b));
    assert_eq!(m.cached_prefix_len(&[h(20)]), 0);
    assert_eq!(m.allocate(), None);
    m.release(a);
    assert_eq!(m.cached_prefix_len(&[h(10)]), 1);
}

#[test]
fn lru_order_follows_release_time() {
    let mut m = BlockManager::new(3);
    let ids: Vec<_> = (0..3).map(|_| m.allocate().unwrap()).collect();
    for (i, &b) in ids.iter().enumerate() {
        m.register(b, h(i as u64));
    }
    m.release(ids[2]);
    m.release(ids[0]);
    m.release(ids[1]);
    assert_eq!(m.allocate(), Some(ids[2]));
    assert_eq!(m.allocate(), Some(ids[0]));
    assert_eq!(m.allocate(), Some(ids[1]));
}

#[test]
fn duplicate_hash_keeps_first_block_and_frees_second() {
    let mut m = BlockManager::new(2);
    let a = m.allocate().unwrap();
    let b = m.allocate().unwrap();
    m.register(a, h(7));
    m.register(b, h(7));
    m.release(b);
    assert_eq!(m.cached_idle(), 0);
    assert_eq!(m.available(), 1);
    assert_eq!(m.cached_prefix_len(&[h(7)]), 1);
}

#[test]
fn shared_block_survives_until_last_release() {
    let mut m = BlockManager::new(1);
    let a = m.allocate().unwrap();
    m.acquire(a);
    m.release(a);
    assert_eq!(m.available(), 0);
    m.release(a);
    assert_eq!(m.available(), 1);
}

#[test]
fn stats_count_queries_and_hits() {
    let mut m = BlockManager::new(2);
    let a = m.allocate().unwrap();
    m.register(a, h(1));
    let got = m.acquire_prefix(&[h(1), h(2), h(3)]);
    assert_eq!(got.len(), 1);
    assert_eq!(
        m.stats(),
        PrefixCacheStats {
            queried_blocks: 3,
            hit_blocks: 1
        }
    );
}

#[test]
fn publication_and_eviction_emit_events() {
    let mut m = BlockManager::new(1);
    let a = m.allocate().unwrap();
    m.register(a, h(5));
    m.register(a, h(5)); // already published: no second event
    m.release(a);
    assert_eq!(m.allocate(), Some(a)); // evicts
    assert_eq!(
        m.drain_events(),
        vec![KvEvent::Stored { hash: h(5) }, KvEvent::Removed { hash: h(5) }]
    );
    assert!(m.drain_events().is_empty());
    assert!(m.cached_hashes().is_empty());
}
