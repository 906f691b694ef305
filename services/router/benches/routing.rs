//! Routing decision time with 64 workers and ~1M indexed blocks: prompt → block hashes → prefix match → choice.
//! Run: `cargo bench -p cleave-router --bench routing`. Prints p50/p99/max over the decisions.

#![allow(clippy::print_stdout, clippy::expect_used)] // a benchmark binary: its output is the point

use std::time::Instant;

use cleave_router::PrefixIndex;
use cleave_router::policy::{Candidate, PolicyConfig, WorkerLoad, choose};
use cleave_tokens::block_hashes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const WORKERS: usize = 64;
const DOCUMENTS: u32 = 4096;
const BLOCKS_PER_DOCUMENT: u32 = 256;
const BLOCK_SIZE: usize = 16;
const DECISIONS: usize = 20_000;

fn document_tokens(doc: u32, blocks: u32) -> Vec<u32> {
    (0..blocks * BLOCK_SIZE as u32)
        .map(|i| doc.wrapping_mul(7919).wrapping_add(i) % 49_152)
        .collect()
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut index = PrefixIndex::new();
    let workers: Vec<_> = (0..WORKERS).map(|_| index.add_worker()).collect();
    let t = Instant::now();
    let mut seq = vec![0u64; WORKERS];
    for doc in 0..DOCUMENTS {
        let hashes = block_hashes(&document_tokens(doc, BLOCKS_PER_DOCUMENT), BLOCK_SIZE, 0);
        // Each document is cached on one worker, a quarter of them on a second as well.
        let copies = if rng.random_range(0..4) == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let w = rng.random_range(0..WORKERS);
            for &h in &hashes {
                seq[w] += 1;
                index.apply(workers[w], seq[w], h, false).expect("in order");
            }
        }
    }
    println!(
        "indexed {} distinct blocks on {WORKERS} workers in {:.2?}",
        index.n_blocks(),
        t.elapsed()
    );

    let loads: Vec<WorkerLoad> = (0..WORKERS)
        .map(|_| WorkerLoad {
            running: rng.random_range(0..32),
            waiting: rng.random_range(0..4),
            queued_prefill_tokens: rng.random_range(0..4096),
            free_blocks: 1000,
            total_blocks: 4096,
        })
        .collect();
    let config = PolicyConfig::default();
    let mut matches = Vec::new();
    let mut candidates = Vec::with_capacity(WORKERS);
    let mut times = Vec::with_capacity(DECISIONS);
    let mut chosen_cached = 0usize;
    for _ in 0..DECISIONS {
        // A 2,048-token prompt: a cached document prefix of 32–128 blocks, then new text.
        let doc = rng.random_range(0..DOCUMENTS);
        let shared = rng.random_range(32..=128u32);
        let mut prompt = document_tokens(doc, shared);
        prompt.extend((0..(128 - shared) * BLOCK_SIZE as u32).map(|_| rng.random_range(0..49_152u32)));
        let t = Instant::now();
        let hashes = block_hashes(&prompt, BLOCK_SIZE, 0);
        index.match_prefix(&hashes, &mut matches);
        candidates.clear();
        candidates.extend((0..WORKERS).map(|w| Candidate {
            worker: workers[w],
            load: loads[w],
            cached_blocks: 0,
        }));
        for &(w, blocks) in &matches {
            candidates[w as usize].cached_blocks = blocks;
        }
        let decision = choose(prompt.len(), &candidates, &config).expect("workers exist");
        times.push(t.elapsed());
        chosen_cached += decision.cached_tokens;
    }
    times.sort_unstable();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{DECISIONS} decisions (2,048-token prompts): p50 {:.1?}  p99 {:.1?}  max {:.1?}; mean cached tokens of the chosen worker {}",
        pct(0.50),
        pct(0.99),
        times[times.len() - 1],
        chosen_cached / DECISIONS
    );
}
