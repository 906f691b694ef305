//! The engine's serving path — `Engine`, scheduler, KV cache — on the real default model: continuous batching,
//! chunked prefill, prefix caching, preemption, parallel samples, cancellation and stop conditions, each checked
//! against the transformers golden tokens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cleave_engine::sampling::SamplingSpec;
use cleave_engine::scheduler::{FinishReason, SchedulerConfig, SeqOutput};
use cleave_engine::{Engine, EngineConfig, EngineError, GenerationStream};
use common::*;

/// Bytes of one 16-token KV block of the default model (30 layers × 2 × 3 heads × 64 dims × 4 bytes × 16).
const BLOCK_BYTES: usize = 30 * 2 * 3 * 64 * 4 * 16;

fn engine(config: EngineConfig) -> Engine {
    let (model, tokenizer) = load_model();
    Engine::start(model, tokenizer, config).unwrap()
}

/// Reads a stream to the end: per choice index, (token ids, text, last output).
fn collect(stream: &mut GenerationStream) -> Vec<(Vec<u32>, String, SeqOutput)> {
    let mut choices: Vec<(Vec<u32>, String, Option<SeqOutput>)> = Vec::new();
    while let Some(out) = stream.blocking_next() {
        let out = out.unwrap();
        let i = out.index as usize;
        if choices.len() <= i {
            choices.resize_with(i + 1, || (Vec::new(), String::new(), None));
        }
        choices[i].0.extend(&out.token_ids);
        choices[i].1.push_str(&out.text);
        choices[i].2 = Some(out);
    }
    choices
        .into_iter()
        .map(|(ids, text, last)| (ids, text, last.unwrap()))
        .collect()
}

fn wait_until_idle(engine: &Engine) -> cleave_engine::scheduler::SchedulerStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = engine.blocking_stats().unwrap();
        if stats.running == 0 && stats.waiting == 0 {
            return stats;
        }
        assert!(Instant::now() < deadline, "engine still busy: {stats:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn concurrent_mixed_length_requests_each_match_running_alone() {
    let engine = engine(EngineConfig::default());
    let golden = golden();
    let mut streams: Vec<_> = golden
        .prompts
        .iter()
        .map(|p| {
            engine
                .submit(p.prompt_ids.clone(), &greedy(golden.new_tokens as u32), 0)
                .unwrap()
        })
        .collect();
    for (p, stream) in golden.prompts.iter().zip(&mut streams) {
        let choices = collect(stream);
        let (ids, _, last) = &choices[0];
        assert_greedy_matches(p, ids);
        let finish = last.finish.unwrap();
        assert_eq!(finish.reason, FinishReason::Length);
        assert_eq!(finish.usage.prompt_tokens, p.prompt_ids.len());
        assert_eq!(finish.usage.completion_tokens, golden.new_tokens);
    }
    let stats = wait_until_idle(&engine);
    assert_eq!(
        stats.free_blocks, stats.total_blocks,
        "every block is released or idle-cached"
    );
}

#[test]
fn chunked_prefill_matches_unchunked() {
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_batch_tokens: 32,
            prefix_caching: false,
            ..Default::default()
        },
        ..Default::default()
    };
    let engine = engine(config);
    let golden = golden();
    for name in ["long", "chat"] {
        let p = golden.prompts.iter().find(|p| p.name == name).unwrap();
        assert!(p.prompt_ids.len() > 32, "{name} needs several chunks");
        let mut stream = engine
            .submit(p.prompt_ids.clone(), &greedy(golden.new_tokens as u32), 0)
            .unwrap();
        assert_greedy_matches(p, &collect(&mut stream)[0].0);
    }
}

#[test]
fn prefix_cache_hit_reports_cached_tokens_and_gives_the_same_tokens() {
    let engine = engine(EngineConfig::default());
    let golden = golden();
    let p = golden.prompts.iter().find(|p| p.name == "long").unwrap();
    let run = |prompt: Vec<u32>| {
        let mut stream = engine.submit(prompt, &greedy(golden.new_tokens as u32), 0).unwrap();
        collect(&mut stream).remove(0)
    };
    let (cold_ids, _, cold) = run(p.prompt_ids.clone());
    assert_eq!(cold.finish.unwrap().usage.cached_tokens, 0);
    let (warm_ids, _, warm) = run(p.prompt_ids.clone());
    let cached = warm.finish.unwrap().usage.cached_tokens;
    assert_eq!(
        cached,
        (p.prompt_ids.len() - 1) / 16 * 16,
        "every full prompt block but the last token's is reused"
    );
    assert_eq!(warm_ids, cold_ids);
    assert_greedy_matches(p, &warm_ids);

    // A different question after the same document reuses the document's blocks.
    let mut other = p.prompt_ids[..p.prompt_ids.len() - 20].to_vec();
    other.extend(
        engine
            .tokenizer()
            .encode(" Which invention came first?", false)
            .unwrap(),
    );
    let (_, _, last) = run(other);
    assert!(last.finish.unwrap().usage.cached_tokens >= (p.prompt_ids.len() - 20) / 16 * 16 - 16);
    let stats = engine.blocking_stats().unwrap();
    assert!(stats.prefix_cache.hit_blocks > 0);
}

#[test]
fn preemption_under_block_pressure_recomputes_the_same_tokens() {
    // Room for 8 blocks; the four prompts below need 20 blocks to finish together, one at most needs 6.
    let config = EngineConfig {
        kv_cache_bytes: 8 * BLOCK_BYTES,
        ..Default::default()
    };
    let engine = engine(config);
    let golden = golden();
    let chosen: Vec<_> = golden
        .prompts
        .iter()
        .filter(|p| ["short", "code", "numbers", "chat"].contains(&p.name.as_str()))
        .collect();
    let mut streams: Vec<_> = chosen
        .iter()
        .map(|p| {
            engine
                .submit(p.prompt_ids.clone(), &greedy(golden.new_tokens as u32), 0)
                .unwrap()
        })
        .collect();
    for (p, stream) in chosen.iter().zip(&mut streams) {
        assert_greedy_matches(p, &collect(stream)[0].0);
    }
    let stats = wait_until_idle(&engine);
    assert!(stats.preemptions > 0, "the test must actually preempt: {stats:?}");
    assert_eq!(stats.free_blocks, stats.total_blocks);
}

#[test]
fn parallel_samples_share_the_prompt_and_reproduce_with_a_seed() {
    let engine = engine(EngineConfig::default());
    let golden = golden();
    let p = golden.prompts.iter().find(|p| p.name == "chat").unwrap();

    // Greedy samples are all the golden continuation.
    let spec = SamplingSpec {
        n: Some(3),
        ..greedy(golden.new_tokens as u32)
    };
    let choices = collect(&mut engine.submit(p.prompt_ids.clone(), &spec, 0).unwrap());
    assert_eq!(choices.len(), 3);
    for (ids, _, last) in &choices {
        assert_greedy_matches(p, ids);
        assert_eq!(last.finish.unwrap().usage.prompt_tokens, p.prompt_ids.len());
    }

    // Seeded sampling: samples differ from each other, and the whole request reproduces.
    let spec = SamplingSpec {
        n: Some(3),
        temperature: Some(1.0),
        seed: Some(11),
        max_tokens: Some(24),
        ignore_eos: true,
        ..Default::default()
    };
    let first: Vec<Vec<u32>> = collect(&mut engine.submit(p.prompt_ids.clone(), &spec, 0).unwrap())
        .into_iter()
        .map(|c| c.0)
        .collect();
    let second: Vec<Vec<u32>> = collect(&mut engine.submit(p.prompt_ids.clone(), &spec, 0).unwrap())
        .into_iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(first, second);
    assert!(
        first[0] != first[1] || first[1] != first[2],
        "three samples at temperature 1 all equal: {first:?}"
    );
    let stats = wait_until_idle(&engine);
    assert_eq!(stats.free_blocks, stats.total_blocks);
}

#[test]
fn dropping_a_stream_aborts_the_request_and_frees_its_blocks() {
    let engine = engine(EngineConfig::default());
    let golden = golden();
    let p = golden.prompts.iter().find(|p| p.name == "long").unwrap();
    let mut stream = engine.submit(p.prompt_ids.clone(), &greedy(2000), 0).unwrap();
    let first = stream.blocking_next().unwrap().unwrap();
    assert_eq!(first.token_ids.len(), 1);
    let busy = engine.blocking_stats().unwrap();
    assert!(busy.free_blocks < busy.total_blocks);
    drop(stream);
    let stats = wait_until_idle(&engine);
    assert_eq!(
        stats.free_blocks, stats.total_blocks,
        "all blocks back (free or idle-cached)"
    );
}

#[test]
fn explicit_abort_ends_the_stream_with_cancelled() {
    let engine = engine(EngineConfig::default());
    let prompt = engine
        .tokenizer()
        .encode("Count from one to a thousand:", false)
        .unwrap();
    let mut stream = engine.submit(prompt, &greedy(2000), 0).unwrap();
    stream.blocking_next().unwrap().unwrap();
    engine.abort(stream.id());
    let mut ended = None;
    while let Some(item) = stream.blocking_next() {
        if let Err(e) = item {
            ended = Some(e);
        }
    }
    assert!(matches!(ended, Some(EngineError::Cancelled)), "{ended:?}");
    wait_until_idle(&engine);
}

#[test]
fn stop_strings_cut_the_text_and_eos_ends_generation() {
    let engine = engine(EngineConfig::default());
    let golden = golden();
    let short = golden.prompts.iter().find(|p| p.name == "short").unwrap();
    // transformers continues " Paris.\n\nThe answer is: ..."
    let spec = SamplingSpec {
        stop: vec![".\n".into()],
        ..greedy(48)
    };
    let (_, text, last) = collect(&mut engine.submit(short.prompt_ids.clone(), &spec, 0).unwrap()).remove(0);
    assert_eq!(text, " Paris");
    assert_eq!(last.finish.unwrap().reason, FinishReason::Stop);

    // Without ignore_eos the chat answer ends at <|im_end|> (id 2), which is not part of the text.
    let chat = golden.prompts.iter().find(|p| p.name == "chat").unwrap();
    let spec = SamplingSpec {
        max_tokens: Some(48),
        temperature: Some(0.0),
        ..Default::default()
    };
    let (ids, text, last) = collect(&mut engine.submit(chat.prompt_ids.clone(), &spec, 0).unwrap()).remove(0);
    let eos_at = chat.output_ids.iter().position(|&t| t == 2).unwrap();
    assert_eq!(ids, chat.output_ids[..=eos_at]);
    assert_eq!(text, "The capital of France is Paris.");
    assert_eq!(last.finish.unwrap().reason, FinishReason::Stop);
}

#[test]
fn logprobs_describe_the_chosen_tokens() {
    let engine = engine(EngineConfig::default());
    let golden = golden();
    let p = golden.prompts.iter().find(|p| p.name == "numbers").unwrap();
    let spec = SamplingSpec {
        logprobs: Some(5),
        ..greedy(8)
    };
    let mut stream = engine.submit(p.prompt_ids.clone(), &spec, 0).unwrap();
    let mut n = 0;
    while let Some(out) = stream.blocking_next() {
        let out = out.unwrap();
        for (id, lp) in out.token_ids.iter().zip(&out.logprobs) {
            assert_eq!(lp.token_id, *id);
            assert_eq!(lp.top.len(), 5);
            assert_eq!(lp.top[0].0, *id, "greedy picks the most likely token");
            assert!(lp.logprob <= 0.0 && (lp.logprob - lp.top[0].1).abs() < 1e-6);
            n += 1;
        }
    }
    assert_eq!(n, 8);
}

#[test]
fn bad_requests_are_refused_with_the_field_named() {
    let engine = engine(EngineConfig {
        kv_cache_bytes: 8 * BLOCK_BYTES,
        ..Default::default()
    });
    let field = |r: Result<GenerationStream, EngineError>| match r {
        Err(EngineError::InvalidArgument { field, .. }) => field,
        other => panic!("expected invalid argument, got {other:?}"),
    };
    assert_eq!(field(engine.submit(vec![1, 49152], &greedy(4), 0)), "prompt");
    assert_eq!(field(engine.submit(vec![], &greedy(4), 0)), "prompt");
    assert_eq!(field(engine.submit(vec![1; 8192], &greedy(4), 0)), "prompt");
    assert_eq!(
        field(engine.submit(
            vec![1, 2],
            &SamplingSpec {
                top_p: Some(0.0),
                ..greedy(4)
            },
            0
        )),
        "top_p"
    );
    assert_eq!(field(engine.submit(vec![1, 2], &greedy(0), 0)), "max_tokens");
    // Valid, but larger than this engine's whole KV cache: refused on the stream, not hung.
    let mut stream = engine.submit(vec![1, 2], &greedy(1000), 0).unwrap();
    assert!(matches!(
        stream.blocking_next(),
        Some(Err(EngineError::ResourceExhausted(_)))
    ));
    // The engine still serves afterwards.
    let choices = collect(&mut engine.submit(vec![504, 3458, 282], &greedy(3), 0).unwrap());
    assert_eq!(choices[0].0.len(), 3);
}

#[test]
fn engine_handle_is_usable_across_threads() {
    let engine = Arc::new(engine(EngineConfig::default()));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let prompt = engine.tokenizer().encode(&format!("Fact number {i}:"), false).unwrap();
                collect(&mut engine.submit(prompt, &greedy(6), 0).unwrap())[0].0.len()
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_cache_events_and_snapshots_describe_the_cached_blocks() {
    let engine = engine(EngineConfig::default());
    let golden = golden();
    let p = golden.prompts.iter().find(|p| p.name == "code").unwrap();
    let mut live = engine.subscribe_kv_events();
    let mut stream = engine.submit(p.prompt_ids.clone(), &greedy(8), 0).unwrap();
    while let Some(out) = stream.next().await {
        out.unwrap();
    }
    // 18 prompt tokens + 8 generated: the first block (16 tokens) is computed and published; the second is not full
    // until token 32.
    let expected = cleave_tokens::block_hashes(&p.prompt_ids, 16, 0);
    assert_eq!(expected.len(), 1);
    let snapshot = engine.kv_snapshot().await.unwrap();
    assert_eq!(snapshot.hashes, expected);
    assert_eq!(snapshot.next_seq, 2);
    let replay = engine.kv_events_since(1).await.unwrap().unwrap();
    assert_eq!(replay.len(), 1);
    assert_eq!(
        replay[0].event,
        cleave_engine::kv::KvEvent::Stored { hash: expected[0] }
    );
    let pushed = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pushed, replay[0]);
    assert!(
        engine.kv_events_since(1000).await.unwrap().is_err(),
        "a future sequence number is a gap"
    );
}
