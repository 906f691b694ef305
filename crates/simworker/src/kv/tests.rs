use cleave_tokens::{BlockHash, block_hashes};

use super::{Gap, HeldBlock, SimKv};

fn hashes(n_blocks: usize, salt: u32) -> Vec<BlockHash> {
    let tokens: Vec<u32> = (0..n_blocks as u32 * 4).map(|t| t + salt * 1000).collect();
    block_hashes(&tokens, 4, 0)
}

/// Allocates and publishes `hashes` as one sequence's blocks.
fn store(kv: &mut SimKv, hashes: &[BlockHash]) -> Vec<HeldBlock> {
    let mut blocks: Vec<HeldBlock> = (0..hashes.len()).map(|_| kv.allocate().unwrap()).collect();
    for (b, &h) in blocks.iter_mut().zip(hashes) {
        kv.register(b, h);
    }
    blocks
}

#[test]
fn published_blocks_are_found_as_a_prefix_and_counted_once() {
    let mut kv = SimKv::new(8, 100);
    let h = hashes(3, 0);
    let blocks = store(&mut kv, &h);
    assert_eq!(kv.available(), 5);
    kv.release_all(&blocks);
    assert_eq!(kv.available(), 8, "idle cached blocks are evictable, so available");
    let again = kv.acquire_prefix(&hashes(4, 0));
    assert_eq!(again.len(), 3);
    assert_eq!(kv.available(), 5);
    assert!(
        kv.acquire_prefix(&hashes(2, 1)).is_empty(),
        "another prefix shares nothing"
    );
    let events = kv.drain_fresh();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(events.iter().all(|e| !e.removed));
}

#[test]
fn eviction_takes_the_least_recently_released_idle_block_and_emits_removed() {
    let mut kv = SimKv::new(2, 100);
    let (a, b) = (hashes(1, 1), hashes(1, 2));
    let held_a = store(&mut kv, &a);
    let held_b = store(&mut kv, &b);
    kv.release_all(&held_a);
    kv.release_all(&held_b);
    kv.drain_fresh();
    let fresh = kv.allocate().unwrap();
    assert_eq!(fresh, HeldBlock::Private);
    let events = kv.drain_fresh();
    assert_eq!(events.len(), 1);
    assert!(events[0].removed);
    assert_eq!(events[0].block_hash, a[0].0, "a was released first");
    assert_eq!(kv.acquire_prefix(&b).len(), 1);
    assert!(
        kv.allocate().is_none(),
        "b is referenced again, the other block is private"
    );
}

#[test]
fn the_same_content_published_twice_stays_private_the_second_time() {
    let mut kv = SimKv::new(4, 100);
    let h = hashes(1, 0);
    let first = store(&mut kv, &h);
    let second = store(&mut kv, &h);
    assert_eq!(second, [HeldBlock::Private]);
    kv.release_all(&second);
    kv.release_all(&first);
    assert_eq!(kv.cached_hashes(), [h[0].0]);
    assert_eq!(kv.available(), 4);
}

#[test]
fn the_log_resumes_from_any_held_sequence_number_and_reports_a_gap_otherwise() {
    let mut kv = SimKv::new(16, 3);
    store(&mut kv, &hashes(5, 0));
    assert_eq!(kv.next_seq(), 6);
    let tail = kv.events_since(4).unwrap();
    assert_eq!(tail.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert!(
        kv.events_since(6).unwrap().is_empty(),
        "resuming at the next number is empty, not a gap"
    );
    assert_eq!(kv.events_since(2), Err(Gap { oldest: 3, next: 6 }));
    assert_eq!(kv.events_since(7), Err(Gap { oldest: 3, next: 6 }));
}
