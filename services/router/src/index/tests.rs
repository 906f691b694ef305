use cleave_tokens::block_hashes;

use super::*;

fn chain(tokens: std::ops::Range<u32>) -> Vec<BlockHash> {
    block_hashes(&tokens.collect::<Vec<_>>(), 4, 0)
}

#[test]
fn match_prefix_counts_leading_blocks_per_worker() {
    let mut index = PrefixIndex::new();
    let (a, b) = (index.add_worker(), index.add_worker());
    let hashes = chain(0..40); // 10 blocks
    index.load_snapshot(a, hashes[..6].iter().copied(), 1);
    index.load_snapshot(b, hashes[..2].iter().copied().chain(hashes[3..9].iter().copied()), 1);
    let mut out = Vec::new();
    index.match_prefix(&hashes, &mut out);
    out.sort_unstable();
    assert_eq!(
        out,
        vec![(a, 6), (b, 2)],
        "b has a hole at block 2, so only its first two blocks count"
    );
    index.match_prefix(&chain(100..120), &mut out);
    assert!(out.is_empty());
}

#[test]
fn events_apply_in_order_and_a_gap_is_reported() {
    let mut index = PrefixIndex::new();
    let w = index.add_worker();
    let h = chain(0..8);
    index.apply(w, 1, h[0], false).unwrap();
    index.apply(w, 2, h[1], false).unwrap();
    index.apply(w, 2, h[1], false).unwrap(); // replayed duplicate: ignored
    assert_eq!(index.worker_blocks(w), 2);
    index.apply(w, 3, h[0], true).unwrap();
    assert_eq!(index.worker_blocks(w), 1);
    assert_eq!(
        index.apply(w, 5, h[0], false),
        Err(EventGap {
            worker: w,
            expected: 4,
            got: 5
        })
    );
    let mut out = Vec::new();
    index.match_prefix(&h, &mut out);
    assert!(out.is_empty(), "block 0 was removed, so no prefix matches");
}

#[test]
fn removing_a_worker_forgets_its_blocks_only() {
    let mut index = PrefixIndex::new();
    let (a, b) = (index.add_worker(), index.add_worker());
    let h = chain(0..16);
    index.load_snapshot(a, h.iter().copied(), 1);
    index.load_snapshot(b, h[..2].iter().copied(), 1);
    index.remove_worker(a);
    assert_eq!(index.n_blocks(), 2);
    let mut out = Vec::new();
    index.match_prefix(&h, &mut out);
    assert_eq!(out, vec![(b, 2)]);
    index.apply(a, 9, h[3], false).unwrap(); // events from a removed worker are dropped
    assert_eq!(index.n_blocks(), 2);
}
