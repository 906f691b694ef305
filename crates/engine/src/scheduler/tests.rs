//! Scheduler decisions on the tiny fixture model (real forward passes, milliseconds each).

use std::collections::HashMap;
use std::path::PathBuf;

use super::*;
use crate::backend::CpuBackend;
use crate::loader::{ModelFiles, load_model};
use crate::model::LlamaModel;
use crate::sampling::{ModelLimits, SamplingSpec};

fn tiny() -> (LlamaModel, Arc<Tokenizer>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama");
    let (model, tokenizer) = load_model(ModelFiles::HfDir(&dir)).unwrap();
    (model, Arc::new(tokenizer))
}

fn request(id: RequestId, prompt_len: usize, max_tokens: u32, priority: i32) -> NewRequest {
    let prompt: Vec<u32> = (0..prompt_len as u32).map(|i| 3 + i % 200).collect();
    let spec = SamplingSpec {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    };
    let sampling = spec
        .validate(
            prompt.len(),
            ModelLimits {
                max_context: 128,
                vocab_size: 320,
            },
        )
        .unwrap();
    NewRequest {
        id,
        prompt,
        sampling,
        priority,
        kind: RequestKind::Generate,
    }
}

fn setup(config: SchedulerConfig, n_blocks: usize) -> (CpuBackend, Scheduler) {
    let (model, tokenizer) = tiny();
    let backend = CpuBackend::new(model, n_blocks, config.block_size);
    let scheduler = Scheduler::new(config, n_blocks, tokenizer, 128);
    (backend, scheduler)
}

fn config(block_size: usize, max_batch_tokens: usize) -> SchedulerConfig {
    SchedulerConfig {
        block_size,
        max_batch_tokens,
        max_running: 8,
        prefix_caching: true,
        hash_seed: 0,
    }
}

/// Steps until idle; returns every request's token ids and the number of steps.
fn drain(backend: &mut CpuBackend, s: &mut Scheduler) -> (HashMap<RequestId, Vec<u32>>, usize) {
    let mut out: HashMap<RequestId, Vec<u32>> = HashMap::new();
    let mut steps = 0;
    while s.has_work() {
        for o in s.step(backend).unwrap() {
            out.entry(o.request).or_default().extend(o.token_ids);
        }
        steps += 1;
        assert!(steps < 1000, "scheduler does not make progress");
    }
    (out, steps)
}

#[test]
fn token_budget_chunks_a_long_prompt() {
    let (_, mut s) = setup(config(4, 10), 64);
    s.add(request(1, 25, 4, 0)).unwrap();
    let plan = s.plan();
    assert_eq!(plan, vec![(0, 10)]);
    assert_eq!(s.running[0].blocks.len(), 3, "blocks cover the scheduled tokens only");
}

#[test]
fn decodes_go_first_then_prefill_fills_the_budget() {
    let (mut backend, mut s) = setup(config(4, 8), 64);
    s.add(request(1, 3, 10, 0)).unwrap();
    s.step(&mut backend).unwrap(); // prefill of request 1, first token sampled
    s.add(request(2, 20, 4, 0)).unwrap();
    let plan = s.plan();
    assert_eq!(plan, vec![(0, 1), (1, 7)]);
}

#[test]
fn waiting_requests_are_admitted_by_priority_then_arrival() {
    let (_, mut s) = setup(
        SchedulerConfig {
            max_running: 1,
            ..config(4, 64)
        },
        64,
    );
    s.add(request(1, 4, 4, 5)).unwrap();
    s.add(request(2, 4, 4, 0)).unwrap();
    s.add(request(3, 4, 4, 0)).unwrap();
    s.plan();
    assert_eq!(s.running[0].request, 2);
    let order: Vec<_> = s.waiting.iter().map(|q| q.request).collect();
    assert_eq!(order, vec![3, 1]);
}

#[test]
fn block_pressure_preempts_the_lowest_priority_newest_sequence_and_all_finish() {
    // 6 blocks of 4 tokens; three requests of 8 + 8 tokens need 4 blocks each.
    let (mut backend, mut s) = setup(config(4, 64), 6);
    s.add(request(1, 8, 8, 0)).unwrap();
    s.add(request(2, 8, 8, 0)).unwrap();
    s.add(request(3, 8, 8, 1)).unwrap();
    let (out, _) = drain(&mut backend, &mut s);
    assert!(s.stats().preemptions > 0);
    for id in 1..=3 {
        assert_eq!(out[&id].len(), 8, "request {id}");
    }
    // Same prompts give the same tokens whatever the interleaving.
    assert_eq!(out[&1], out[&2]);
    assert_eq!(s.stats().free_blocks, 6);
}

#[test]
fn abort_frees_blocks_of_running_and_waiting_sequences() {
    let (mut backend, mut s) = setup(
        SchedulerConfig {
            max_running: 1,
            ..config(4, 64)
        },
        16,
    );
    s.add(request(1, 10, 20, 0)).unwrap();
    s.add(request(2, 10, 20, 0)).unwrap();
    s.step(&mut backend).unwrap();
    assert!(s.stats().free_blocks < 16);
    assert!(s.abort(1));
    assert!(s.abort(2));
    assert!(!s.abort(3));
    assert!(!s.has_work());
    assert_eq!(s.stats().free_blocks, 16);
}

#[test]
fn a_request_larger_than_the_cache_is_refused() {
    let (_, mut s) = setup(config(4, 64), 4);
    assert!(matches!(
        s.add(request(1, 8, 12, 0)),
        Err(EngineError::ResourceExhausted(_))
    ));
    s.add(request(2, 8, 8, 0)).unwrap();
}

#[test]
fn full_blocks_are_published_and_reused_by_the_next_request() {
    let (mut backend, mut s) = setup(config(4, 64), 32);
    s.add(request(1, 13, 2, 0)).unwrap();
    let (first, _) = drain(&mut backend, &mut s);
    s.add(request(2, 13, 2, 0)).unwrap();
    s.plan();
    assert_eq!(s.running[0].cached_tokens, 12);
    assert_eq!(s.running[0].computed, 12);
    let (second, _) = drain(&mut backend, &mut s);
    assert_eq!(first[&1], second[&2]);
}
