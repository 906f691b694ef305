//! Tensor, pipeline and expert parallelism on the CPU backend with the real default model (and the tiny Llama and
//! Mixtral fixtures): ranks on threads here (each with its part of the model and its KV pool) over a real TCP
//! communicator on loopback, against the single-device model and the golden tokens from transformers.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cleave_comm::{Communicator, TcpCommunicator, TcpConfig};
use cleave_engine::parallel::{GroupFailure, ParallelBackend, TpRank, run_follower};
use cleave_engine::scheduler::SchedulerConfig;
use cleave_engine::{Backend, Engine, EngineError, LlamaModel, SeqChunk};
use common::{assert_greedy_matches, golden, greedy, greedy_on_model, load_model};

/// The default model has 9 query heads and 3 KV heads: 3 ranks is its only split above 1.
const WORLD: usize = 3;

/// A TCP group of `world` members on loopback, one communicator per rank.
fn group(world: usize, name: &str, op_timeout: Duration) -> Vec<Arc<TcpCommunicator>> {
    let listeners: Vec<TcpListener> = (0..world).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let config = TcpConfig {
        op_timeout,
        ..TcpConfig::default()
    };
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let (peers, config, name) = (peers.clone(), config.clone(), name.to_owned());
            std::thread::spawn(move || TcpCommunicator::connect(&listener, rank, &peers, &name, config).unwrap())
        })
        .collect();
    handles.into_iter().map(|h| Arc::new(h.join().unwrap())).collect()
}

fn dyn_group(world: usize, name: &str) -> Vec<Arc<dyn Communicator>> {
    let comms = group(world, name, Duration::from_secs(30));
    comms.into_iter().map(|c| c as Arc<dyn Communicator>).collect()
}

type Followers = Vec<JoinHandle<Result<(), EngineError>>>;

/// Followers on threads (each loads and shards the model itself); returns rank 0's communicator.
/// How a rank takes its part of the model.
type Split = fn(LlamaModel, Arc<dyn Communicator>) -> Result<LlamaModel, EngineError>;

fn tensor(model: LlamaModel, comm: Arc<dyn Communicator>) -> Result<LlamaModel, EngineError> {
    model.tensor_parallel(comm)
}

fn pipeline(model: LlamaModel, comm: Arc<dyn Communicator>) -> Result<LlamaModel, EngineError> {
    model.pipeline_parallel(comm, 3)
}

/// Tensor parallelism inside pipeline stages: ranks 0..T form stage 0, and so on.
fn tensor_in_stages<const T: usize>(model: LlamaModel, comm: Arc<dyn Communicator>) -> Result<LlamaModel, EngineError> {
    model.tensor_pipeline(comm, T, 2)
}

fn context(model: LlamaModel, comm: Arc<dyn Communicator>) -> Result<LlamaModel, EngineError> {
    Ok(model.context_parallel(comm))
}

fn start_followers(comms: Vec<Arc<dyn Communicator>>) -> (Arc<dyn Communicator>, Followers) {
    start_split_followers(comms, tensor)
}

fn start_split_followers(comms: Vec<Arc<dyn Communicator>>, split: Split) -> (Arc<dyn Communicator>, Followers) {
    let mut comms = comms.into_iter();
    let leader = comms.next().unwrap();
    let followers = comms
        .map(|comm| {
            std::thread::spawn(move || {
                let model = split(load_model().0, comm.clone())?;
                run_follower(model, comm)
            })
        })
        .collect();
    (leader, followers)
}

fn leader_backend(comm: Arc<dyn Communicator>, n_blocks: usize, on_failure: GroupFailure) -> ParallelBackend {
    split_leader(comm, n_blocks, on_failure, tensor)
}

fn split_leader(
    comm: Arc<dyn Communicator>,
    n_blocks: usize,
    on_failure: GroupFailure,
    split: Split,
) -> ParallelBackend {
    let model = split(load_model().0, comm.clone()).unwrap();
    ParallelBackend::new(model, comm, n_blocks, 16, Duration::from_millis(200), on_failure).unwrap()
}

/// A group of `world` ranks split by `split`: rank 0's backend and the followers.
fn split_group(world: usize, name: &str, split: Split, n_blocks: usize) -> (ParallelBackend, Followers) {
    let (leader, followers) = start_split_followers(dyn_group(world, name), split);
    (split_leader(leader, n_blocks, Arc::new(|_| {}), split), followers)
}

/// Every golden prompt through a scheduler on a 3-rank tensor-parallel group gives the golden greedy tokens, and
/// the first logits match the single-device model's to f32 summation-order noise.
#[test]
fn three_ranks_generate_the_golden_tokens_and_single_device_logits() {
    let (backend, followers) = split_group(WORLD, "tp-golden", tensor, 256);
    golden_through(backend, followers);
}

/// The same through a pipeline of 2 stages, each batch cut into 3 micro-batches (a prefill chunk into
/// pieces, a decode batch by sequence).
#[test]
fn pipeline_stages_generate_the_golden_tokens_and_single_device_logits() {
    // Three stages are covered by the remote-KV test and the f32 model; the golden run keeps CI short.
    let (backend, followers) = split_group(2, "pp-golden-2", pipeline, 256);
    golden_through(backend, followers);
}

/// The same through a 6-rank group: 2 pipeline stages of 3 tensor-parallel ranks each (TP inside a node, PP across
/// nodes), stage to stage between ranks of equal tensor rank.
#[test]
fn tensor_parallel_stages_of_a_pipeline_generate_the_golden_tokens() {
    let (backend, followers) = split_group(6, "tp-pp-golden", tensor_in_stages::<3>, 256);
    golden_through(backend, followers);
}

/// The same through a context-parallel group of 2 ranks: every chunk's tokens split across the ranks, ring
/// attention, every rank left holding the whole KV (later chunks and decode steps read it).
#[test]
fn context_parallel_ranks_generate_the_golden_tokens_and_single_device_logits() {
    // Three ranks (uneven parts) are covered by the KV test and the f32 model; the golden run keeps CI short.
    let (backend, followers) = split_group(2, "cp-golden-2", context, 256);
    golden_through(backend, followers);
}

/// A context-parallel prefill as a prefill worker runs it (a KV read after each layer): rank 0's reader holds every
/// block of every layer as the single device computes it, though rank 0 computed only its third of the tokens —
/// what lets a context-parallel prefill pool feed any decode worker.
#[test]
fn a_context_parallel_prefill_exposes_the_whole_kv_to_a_transfer() {
    let (mut backend, followers) = split_group(3, "cp-kv", context, 8);
    let mut single = cleave_engine::CpuBackend::new(load_model().0, 8, 16);
    let prompt: Vec<u32> = (0..40).map(|i| 100 + 13 * i).collect();
    let blocks = [0u32, 1, 2];
    let chunk = [SeqChunk {
        tokens: &prompt,
        start_pos: 0,
        blocks: &blocks,
        want_logits: false,
    }];
    let read = |backend: &mut dyn Backend| {
        let mut layers = Vec::new();
        backend
            .forward(&chunk, &mut |layer, kv| {
                for &b in &blocks {
                    let (mut k, mut v) = (Vec::new(), Vec::new());
                    kv.read_block_layer(layer, b, &mut k, &mut v);
                    layers.push((k, v));
                }
            })
            .unwrap();
        layers
    };
    let (want, got) = (read(&mut single), read(&mut backend));
    assert_eq!((want.len(), got.len()), (30 * 3, 30 * 3));
    for (i, ((wk, wv), (gk, gv))) in want.iter().zip(&got).enumerate() {
        assert_eq!((wk.len(), wv.len()), (gk.len(), gv.len()));
        let worst = wk
            .iter()
            .chain(wv)
            .zip(gk.iter().chain(gv))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-3, "layer {} block {}: KV differs by {worst}", i / 3, i % 3);
    }
    drop(backend);
    for follower in followers {
        follower.join().unwrap().unwrap();
    }
}

/// Rank 0's logits for each golden prompt against the single-device model, then the golden tokens through a
/// scheduler on the group; the followers end cleanly when the engine stops.
fn golden_through(mut backend: ParallelBackend, followers: Followers) {
    let (single, tokenizer) = load_model();
    let golden = golden();
    for p in &golden.prompts {
        let (want, _) = greedy_on_model(&single, &p.prompt_ids, 0, 16);
        let blocks: Vec<u32> = (0..p.prompt_ids.len().div_ceil(16) as u32).collect();
        let got = backend
            .forward_plain(&[SeqChunk {
                tokens: &p.prompt_ids,
                start_pos: 0,
                blocks: &blocks,
                want_logits: true,
            }])
            .unwrap();
        let range = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert_eq!(got.len(), want.len(), "{}", p.name);
        assert!(
            worst <= 1e-4 * range.max(1.0),
            "{}: logits differ by up to {worst}",
            p.name
        );
    }

    let engine = Engine::start_backend(Box::new(backend), tokenizer, SchedulerConfig::default()).unwrap();
    let streams: Vec<_> = golden
        .prompts
        .iter()
        .map(|p| {
            engine
                .submit(p.prompt_ids.clone(), &greedy(golden.new_tokens as u32), 0)
                .unwrap()
        })
        .collect();
    for (p, mut stream) in golden.prompts.iter().zip(streams) {
        let mut ids = Vec::new();
        while let Some(out) = stream.blocking_next() {
            ids.extend(out.unwrap().token_ids);
        }
        assert_greedy_matches(p, &ids);
    }
    drop(engine);
    for follower in followers {
        follower.join().unwrap().unwrap();
    }
}

/// Remote KV landing on a pipeline: every layer of a prompt's blocks, computed on one device, written through
/// rank 0 (each stage keeps its layers), then a decode step on both gives the same logits. A forward pass that
/// would read KV for a transfer is refused up front, and the group keeps working.
#[test]
fn a_pipeline_takes_remote_kv_and_refuses_to_read_it() {
    let (mut backend, followers) = split_group(3, "pp-kv", pipeline, 8);
    let mut single = cleave_engine::CpuBackend::new(load_model().0, 8, 16);
    let prompt: Vec<u32> = (0..40).map(|i| 100 + 13 * i).collect();
    let blocks = [0u32, 1, 2];
    let mut layers = Vec::new();
    single
        .forward(
            &[SeqChunk {
                tokens: &prompt,
                start_pos: 0,
                blocks: &blocks,
                want_logits: false,
            }],
            &mut |layer, kv| {
                for &b in &blocks {
                    let (mut k, mut v) = (Vec::new(), Vec::new());
                    kv.read_block_layer(layer, b, &mut k, &mut v);
                    layers.push((layer, b, k, v));
                }
            },
        )
        .unwrap();
    assert_eq!(layers.len(), 30 * 3);
    for (layer, block, k, v) in &layers {
        backend.write_block_layer(*layer, *block, k, v).unwrap();
    }
    let step = [SeqChunk {
        tokens: &[77],
        start_pos: 40,
        blocks: &blocks,
        want_logits: true,
    }];
    let want = single.forward_plain(&step).unwrap();
    let got = backend.forward_plain(&step).unwrap();
    let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "decode after remote KV differs by {worst}");

    let error = backend.forward(&step, &mut |_, _| {}).unwrap_err().to_string();
    assert!(error.contains("pipeline-parallel"), "{error}");
    assert!(
        backend.forward_plain(&step).is_ok(),
        "the group broke after a refused read"
    );
    assert_eq!(backend.kv_shape().n_layers, 30);
    drop(backend);
    for follower in followers {
        follower.join().unwrap().unwrap();
    }
}

/// A transfer's view of the KV during a tensor-parallel forward pass holds every KV head, as the single device
/// stores them; a block written whole (remote KV landing) reads back whole.
#[test]
fn gathered_kv_and_written_blocks_hold_every_head() {
    let (leader, followers) = start_followers(dyn_group(WORLD, "tp-kv"));
    let mut backend = leader_backend(leader, 8, Arc::new(|_| {}));
    let (single_model, _) = load_model();
    let mut single = cleave_engine::CpuBackend::new(single_model, 8, 16);
    let prompt: Vec<u32> = (0..40).map(|i| 100 + 13 * i).collect();
    let blocks = [0u32, 1, 2];
    let chunk = SeqChunk {
        tokens: &prompt,
        start_pos: 0,
        blocks: &blocks,
        want_logits: false,
    };
    let read = |backend: &mut dyn Backend| {
        let mut seen = Vec::new();
        backend
            .forward(&[chunk], &mut |layer, kv| {
                let (mut k, mut v) = (Vec::new(), Vec::new());
                for &b in &blocks {
                    kv.read_block_layer(layer, b, &mut k, &mut v);
                }
                seen.push((k, v));
            })
            .unwrap();
        seen
    };
    let (got, want) = (read(&mut backend), read(&mut single));
    assert_eq!(got.len(), want.len());
    for (layer, ((gk, gv), (wk, wv))) in got.iter().zip(&want).enumerate() {
        assert_eq!(gk.len(), wk.len(), "layer {layer}");
        let worst = gk
            .iter()
            .chain(gv)
            .zip(wk.iter().chain(wv))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "layer {layer}: KV differs by up to {worst}");
    }

    let floats = backend.kv_shape().block_floats();
    let keys: Vec<f32> = (0..floats).map(|i| i as f32 * 0.5).collect();
    let values: Vec<f32> = (0..floats).map(|i| -(i as f32)).collect();
    backend.write_block_layer(2, 5, &keys, &values).unwrap();
    backend.copy_block(5, 6).unwrap();
    let mut seen = None;
    backend
        .forward(
            &[SeqChunk {
                tokens: &[7],
                start_pos: 0,
                blocks: &[7, 6],
                want_logits: false,
            }],
            &mut |layer, kv| {
                if layer == 2 {
                    let (mut k, mut v) = (Vec::new(), Vec::new());
                    kv.read_block_layer(layer, 6, &mut k, &mut v);
                    seen = Some((k, v));
                }
            },
        )
        .unwrap();
    assert_eq!(seen, Some((keys, values)));
    assert!(backend.write_block_layer(0, 0, &[0.0; 3], &[0.0; 3]).is_err());
    drop(backend);
    for follower in followers {
        follower.join().unwrap().unwrap();
    }
}

/// A group size that does not divide the heads is refused, naming the sizes the model allows.
#[test]
fn a_size_that_does_not_divide_the_heads_is_refused() {
    let (model, _) = load_model();
    let error = TpRank::check(model.config(), 2).unwrap_err().to_string();
    assert!(
        error.contains("9 attention heads") && error.contains("allows 1, 3"),
        "{error}"
    );
    let comms = group(2, "tp-two", Duration::from_secs(5));
    let error = model
        .tensor_parallel(comms[0].clone() as Arc<dyn Communicator>)
        .unwrap_err()
        .to_string();
    assert!(error.contains("tensor_parallel"), "{error}");
}

/// A follower that dies fails the leader's next operation (not a hang) and the failure hook runs once; a leader
/// that dies while idle ends its followers with an error well before their operation timeout.
#[test]
fn a_dead_member_fails_the_group_promptly() {
    let comms = group(WORLD, "tp-death", Duration::from_secs(20));
    let victim = comms[2].clone();
    let failures = Arc::new(AtomicUsize::new(0));
    let counter = failures.clone();
    let on_failure: GroupFailure = Arc::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
    });
    let (leader, followers) = start_followers(comms.into_iter().map(|c| c as Arc<dyn Communicator>).collect());
    let mut backend = leader_backend(leader, 8, on_failure);
    victim.abort("rank 2 was killed");
    let started = Instant::now();
    let chunk = SeqChunk {
        tokens: &[1, 2, 3],
        start_pos: 0,
        blocks: &[0],
        want_logits: true,
    };
    let error = backend.forward_plain(&[chunk]).unwrap_err();
    assert!(matches!(error, EngineError::Group(_)), "{error}");
    assert!(backend.forward_plain(&[chunk]).is_err());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(failures.load(Ordering::SeqCst), 1);
    drop(backend);
    for follower in followers {
        assert!(follower.join().unwrap().is_err());
    }

    let comms = group(WORLD, "tp-leader-death", Duration::from_secs(20));
    let leader = comms[0].clone();
    let (_, followers) = start_followers(comms.into_iter().map(|c| c as Arc<dyn Communicator>).collect());
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    leader.abort("rank 0 was killed");
    for follower in followers {
        let error = follower.join().unwrap().unwrap_err();
        assert!(matches!(error, EngineError::Group(_)), "{error}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Batch-1 decode and a 1,024-token prefill on one device and on each kind of group over loopback TCP (ranks on
/// threads of this process), for docs/perf.md: what each kind's communication costs on this machine.
#[test]
#[ignore = "a benchmark: cargo test --release -p cleave-engine --test parallel -- --ignored --nocapture"]
fn cpu_parallel_benchmark() {
    let prompt: Vec<u32> = (0..1024).map(|i| 100 + 7 * i).collect();
    let blocks: Vec<u32> = (0..70).collect();
    let time = |backend: &mut dyn Backend, label: &str| {
        let chunk = |tokens, start_pos| SeqChunk {
            tokens,
            start_pos,
            blocks: &blocks,
            want_logits: true,
        };
        for run in ["", " (again)"] {
            let started = Instant::now();
            backend.forward_plain(&[chunk(&prompt, 0)]).unwrap();
            let prefill = started.elapsed();
            let steps = 30;
            let started = Instant::now();
            for i in 0..steps {
                backend.forward_plain(&[chunk(&[5], prompt.len() + i)]).unwrap();
            }
            let step = started.elapsed() / steps as u32;
            eprintln!(
                "{label}{run}: prefill {} tokens {:.0} ms ({:.0} tok/s); b1 decode {:.1} ms/step ({:.1} tok/s)",
                prompt.len(),
                prefill.as_secs_f64() * 1e3,
                prompt.len() as f64 / prefill.as_secs_f64(),
                step.as_secs_f64() * 1e3,
                1.0 / step.as_secs_f64()
            );
        }
    };
    time(&mut cleave_engine::CpuBackend::new(load_model().0, 80, 16), "1 device");
    let kinds: [(&str, usize, Split); 5] = [
        ("tensor 3", 3, tensor),
        ("pipeline 2 (2 micro-batches)", 2, |m, c| m.pipeline_parallel(c, 2)),
        ("context 2 (ring attention)", 2, context),
        ("context 3 (ring attention)", 3, context),
        ("tensor 3 × pipeline 2", 6, tensor_in_stages::<3>),
    ];
    for (label, world, split) in kinds {
        let (mut backend, followers) = split_group(world, &format!("bench-{world}-{label}"), split, 80);
        time(&mut backend, label);
        drop(backend);
        for follower in followers {
            follower.join().unwrap().unwrap();
        }
    }
}

/// Two ranks of an f32 safetensors model (the tiny Llama fixture: 4 heads, 2 KV heads, MLP 160) computing one
/// forward pass collectively, straight on the sharded models: rank 0's logits equal the whole model's.
#[test]
fn two_ranks_of_an_f32_model_match_the_whole_model() {
    let kv_heads = ranks_match_the_whole_model("tiny-llama", 2, tensor);
    assert_eq!(kv_heads, 1);
}

/// Two pipeline stages of two tensor-parallel ranks on the f32 tiny Llama, through chunked prefill and decode.
#[test]
fn tensor_parallel_stages_of_an_f32_model_match_the_whole_model() {
    assert_eq!(ranks_match_the_whole_model("tiny-llama", 4, tensor_in_stages::<2>), 1);
}

/// Context parallelism on the f32 tiny Llama, 2 and 3 ranks: ring attention equals the whole model's attention
/// through a chunked prefill (the second chunk reading the first from every rank's cache) and decode steps.
#[test]
fn context_parallel_ranks_of_an_f32_model_match_the_whole_model() {
    assert_eq!(ranks_match_the_whole_model("tiny-llama", 2, context), 2);
    assert_eq!(ranks_match_the_whole_model("tiny-llama", 3, context), 2);
}

fn expert(model: LlamaModel, comm: Arc<dyn Communicator>) -> Result<LlamaModel, EngineError> {
    model.expert_parallel(comm)
}

/// The tiny Mixtral (8 experts, top-2; 8 heads, 4 KV heads) split by experts over 2 and 4 ranks — tokens dispatched
/// to the experts' ranks and combined back with all-to-alls, attention split by heads — and by tensor parallelism
/// (every expert's width split) over 2 ranks: each matches the whole model through a prefill and decode steps.
#[test]
fn expert_and_tensor_parallel_mixtures_of_experts_match_the_whole_model() {
    assert_eq!(ranks_match_the_whole_model("tiny-mixtral", 2, expert), 2);
    assert_eq!(ranks_match_the_whole_model("tiny-mixtral", 4, expert), 1);
    assert_eq!(ranks_match_the_whole_model("tiny-mixtral", 2, tensor), 2);
    let dense = cleave_engine::load_model(cleave_engine::ModelFiles::HfDir(&fixture("tiny-llama")))
        .unwrap()
        .0;
    let comm = dyn_group(1, "ep-dense").remove(0);
    let err = dense.expert_parallel(comm).unwrap_err().to_string();
    assert!(err.contains("has no experts"), "{err}");
    let comms = dyn_group(3, "ep-3");
    let moe = cleave_engine::load_model(cleave_engine::ModelFiles::HfDir(&fixture("tiny-mixtral")))
        .unwrap()
        .0;
    let err = moe.expert_parallel(comms[0].clone()).unwrap_err().to_string();
    assert!(err.contains("3 ranks cannot split the model's 8 experts"), "{err}");
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A 21-token prefill in chunks of 13 and 8, then three decode steps.
fn prefill_and_decode() -> Vec<(usize, Vec<u32>)> {
    let prompt: Vec<u32> = (0..21).map(|i| 3 + (i * 11) % 250).collect();
    let (first, second) = prompt.split_at(13);
    vec![
        (0, first.to_vec()),
        (13, second.to_vec()),
        (21, vec![7]),
        (22, vec![90]),
        (23, vec![211]),
    ]
}

/// Each step's logits from `model` (none on a group's ranks above 0), in a fresh KV pool of 4 blocks of 8.
fn run_steps(model: &LlamaModel, steps: &[(usize, Vec<u32>)]) -> Vec<Vec<f32>> {
    let mut kv = cleave_engine::kv::KvCache::new(model.kv_shape(4, 8));
    let blocks = [0u32, 1, 2];
    steps
        .iter()
        .map(|(start_pos, tokens)| {
            let chunk = SeqChunk {
                tokens,
                start_pos: *start_pos,
                blocks: &blocks,
                want_logits: true,
            };
            model.forward(&[chunk], &mut kv).unwrap()
        })
        .collect()
}

/// Runs [`prefill_and_decode`] on `world` ranks of fixture `name` split by `split`, each on its thread, against
/// the whole model: rank 0's logits within 1e-4 every step, other ranks none. Returns the KV heads each rank holds.
fn ranks_match_the_whole_model(name: &str, world: usize, split: Split) -> usize {
    let load = || {
        cleave_engine::load_model(cleave_engine::ModelFiles::HfDir(&fixture(name)))
            .unwrap()
            .0
    };
    let want = run_steps(&load(), &prefill_and_decode());
    let label = format!("{name}-{world}");
    let models: Vec<LlamaModel> = dyn_group(world, &label)
        .into_iter()
        .map(|comm| split(load(), comm).unwrap())
        .collect();
    let kv_heads = models[0].kv_shape(4, 8).n_kv_heads;
    let ranks: Vec<_> = models
        .into_iter()
        .map(|model| std::thread::spawn(move || run_steps(&model, &prefill_and_decode())))
        .collect();
    let got: Vec<Vec<Vec<f32>>> = ranks.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(got[1].iter().all(Vec::is_empty), "only rank 0 computes logits");
    for (step, (want, got)) in want.iter().zip(&got[0]).enumerate() {
        assert_eq!(want.len(), got.len());
        let worst = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{label}: step {step} logits differ by up to {worst}");
    }
    kv_heads
}
