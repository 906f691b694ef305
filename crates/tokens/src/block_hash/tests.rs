use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{BlockHash, BlockHasher, block_hashes};

fn tokens(n: u32) -> Vec<u32> {
    (0..n).map(|i| i.wrapping_mul(2_654_435_761) % 50_000).collect()
}

#[test]
fn hashes_follow_the_documented_formula() {
    let ids = [1u32, 2, 3, 4, 5, 6];
    let seed = 7;
    let first = xxh3_64_with_seed(&[1u8, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0], seed);
    let mut second_input = first.to_le_bytes().to_vec();
    for id in [4u32, 5, 6] {
        second_input.extend_from_slice(&id.to_le_bytes());
    }
    let second = xxh3_64_with_seed(&second_input, seed);
    assert_eq!(block_hashes(&ids, 3, seed), vec![BlockHash(first), BlockHash(second)]);
}

#[test]
fn deterministic() {
    let ids = tokens(100);
    assert_eq!(block_hashes(&ids, 16, 0), block_hashes(&ids, 16, 0));
}

#[test]
fn only_full_blocks_are_hashed() {
    assert_eq!(block_hashes(&tokens(47), 16, 0).len(), 2);
    assert_eq!(block_hashes(&tokens(48), 16, 0).len(), 3);
    assert!(block_hashes(&tokens(15), 16, 0).is_empty());
    assert!(block_hashes(&[], 16, 0).is_empty());
    // A partial block does not change the hashes of the full ones before it.
    assert_eq!(block_hashes(&tokens(47), 16, 0), block_hashes(&tokens(32), 16, 0));
}

#[test]
fn zero_block_size_hashes_nothing() {
    assert!(block_hashes(&tokens(10), 0, 0).is_empty());
    let mut hasher = BlockHasher::new(0, 0);
    assert_eq!(hasher.push(1), None);
    assert!(hasher.extend(&tokens(10)).is_empty());
}

#[test]
fn same_block_after_a_different_prefix_hashes_differently() {
    let block = [10u32, 11, 12, 13];
    let a = [[1u32, 2, 3, 4], block].concat();
    let b = [[5u32, 6, 7, 8], block].concat();
    let (ha, hb) = (block_hashes(&a, 4, 0), block_hashes(&b, 4, 0));
    assert_ne!(ha[1], hb[1]);
    // At the start the block hashes differently again than after a parent.
    assert_ne!(block_hashes(&block, 4, 0)[0], ha[1]);
}

#[test]
fn shared_prefixes_share_hashes() {
    let mut a = tokens(64);
    let mut b = a.clone();
    a.extend([1, 2, 3, 4, 5, 6, 7, 8]);
    b.extend([9, 9, 9, 9, 9, 9, 9, 9]);
    let (ha, hb) = (block_hashes(&a, 8, 3), block_hashes(&b, 8, 3));
    assert_eq!(ha[..8], hb[..8]);
    assert_ne!(ha[8], hb[8]);
}

#[test]
fn seed_separates_chains() {
    let ids = tokens(32);
    let (a, b) = (block_hashes(&ids, 16, 1), block_hashes(&ids, 16, 2));
    assert!(a.iter().zip(&b).all(|(x, y)| x != y));
}

#[test]
fn incremental_matches_batch_in_any_chunking() {
    let ids = tokens(203);
    let batch = block_hashes(&ids, 16, 42);
    for chunk in [1, 3, 7, 16, 17, 64, 203] {
        let mut hasher = BlockHasher::new(16, 42);
        let mut incremental = Vec::new();
        for piece in ids.chunks(chunk) {
            incremental.extend(hasher.extend(piece));
        }
        assert_eq!(incremental, batch, "chunk {chunk}");
        assert_eq!(hasher.pending(), &ids[192..]);
        assert_eq!(hasher.last(), batch.last().copied());
    }
    let mut hasher = BlockHasher::new(16, 42);
    let one_by_one: Vec<BlockHash> = ids.iter().filter_map(|&id| hasher.push(id)).collect();
    assert_eq!(one_by_one, batch);
}

#[test]
fn resume_continues_a_chain() {
    let ids = tokens(64);
    let batch = block_hashes(&ids, 16, 5);
    let mut resumed = BlockHasher::resume(Some(batch[1]), 16, 5);
    assert_eq!(resumed.extend(&ids[32..]), batch[2..]);
}
