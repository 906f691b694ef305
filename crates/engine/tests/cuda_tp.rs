//! Tensor parallelism on the CUDA backend over NCCL: one process, one thread per GPU, each rank a `CudaBackend`
//! holding its shard — directly, and as a parallel group's members (leader and follower over a loopback TCP
//! communicator, the NCCL id sent through it) under a real engine. Skips (passing, with a message) without a CUDA driver, NCCL or two GPUs; `scripts/gpu-check`
//! runs it on the GPU machine. The benchmark (`tp_decode_benchmark`, ignored by default) prints batch-1 decode of
//! the Llama-3.1-8B shape at each group size the machine allows, for docs/perf.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use cleave_comm::{NcclCommunicator, nccl_available};
use cleave_engine::backend::Backend;
use cleave_engine::cuda::{CudaBackend, CudaOptions, cuda_available, synthetic_config};
use cleave_engine::parallel::TpRank;
use cleave_engine::{ModelFiles, SeqChunk, load_model};
use cudarc::driver::CudaContext;

fn gpus() -> usize {
    if !cuda_available() || !nccl_available() {
        return 0;
    }
    CudaContext::device_count().map_or(0, |n| n as usize)
}

fn skip(world: usize) -> bool {
    let n = gpus();
    if n < world {
        eprintln!("skipped: {world} GPUs with CUDA and NCCL wanted, {n} here");
        return true;
    }
    false
}

fn options(ordinal: usize, kv_cache_bytes: usize, block_size: usize) -> CudaOptions<'static> {
    CudaOptions {
        ordinal,
        kv_cache_bytes,
        block_size,
        kernel_cache: None,
    }
}

/// Runs `work(rank, backend)` on one thread per rank, each backend joined to one NCCL group.
fn on_ranks<T: Send + 'static>(
    world: usize,
    make: impl Fn(usize) -> CudaBackend + Send + Sync + 'static,
    work: impl Fn(usize, &mut CudaBackend) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let id = NcclCommunicator::new_unique_id().unwrap();
    let (make, work) = (Arc::new(make), Arc::new(work));
    let handles: Vec<_> = (0..world)
        .map(|rank| {
            let (make, work, id) = (make.clone(), work.clone(), id.clone());
            std::thread::spawn(move || {
                let mut backend = make(rank);
                if world > 1 {
                    backend.join_group(rank, world, &id).unwrap();
                }
                work(rank, &mut backend)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn chunk<'a>(tokens: &'a [u32], start_pos: usize, blocks: &'a [u32]) -> [SeqChunk<'a>; 1] {
    [SeqChunk {
        tokens,
        start_pos,
        blocks,
        want_logits: true,
    }]
}

fn tiny_llama() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama")
}

/// Prefill two sequences, then decode steps through the CUDA-graph path: rank 0's logits at TP 2 equal one GPU's
/// to bf16 summation-order noise.
#[test]
fn two_ranks_match_one_gpu_through_prefill_and_graph_decode() {
    if skip(2) {
        return;
    }
    let a: Vec<u32> = (0..23).map(|i| 3 + (i * 11) % 250).collect();
    let b: Vec<u32> = (0..9).map(|i| 7 + (i * 5) % 250).collect();
    let run = move |_rank: usize, backend: &mut CudaBackend| {
        let (ta, tb): (Vec<u32>, Vec<u32>) = ((0..8).collect(), (20..24).collect());
        let mut out = Vec::new();
        out.push(
            backend
                .forward_plain(&[
                    SeqChunk {
                        tokens: &a,
                        start_pos: 0,
                        blocks: &ta,
                        want_logits: true,
                    },
                    SeqChunk {
                        tokens: &b,
                        start_pos: 0,
                        blocks: &tb,
                        want_logits: true,
                    },
                ])
                .unwrap(),
        );
        for step in 0..4u32 {
            let (na, nb) = ([10 + step], [20 + step]);
            let chunks = [
                SeqChunk {
                    tokens: &na,
                    start_pos: 23 + step as usize,
                    blocks: &ta,
                    want_logits: true,
                },
                SeqChunk {
                    tokens: &nb,
                    start_pos: 9 + step as usize,
                    blocks: &tb,
                    want_logits: true,
                },
            ];
            out.push(backend.forward_plain(&chunks).unwrap());
        }
        out
    };
    let single = on_ranks(
        1,
        |_| {
            let (model, _) = load_model(ModelFiles::HfDir(&tiny_llama())).unwrap();
            CudaBackend::from_model(model, &options(0, 16 << 20, 4)).unwrap()
        },
        run.clone(),
    )
    .remove(0);
    let split = on_ranks(
        2,
        |rank| {
            let (model, _) = load_model(ModelFiles::HfDir(&tiny_llama())).unwrap();
            CudaBackend::from_model_shard(model, &options(rank, 16 << 20, 4), TpRank { rank, world: 2 }).unwrap()
        },
        run,
    )
    .remove(0);
    for (step, (want, got)) in single.iter().zip(&split).enumerate() {
        close(&format!("TP 2, step {step}"), want, got);
    }
}

/// A two-GPU group as `cleave worker --device cuda --tensor-parallel 2` forms it: rank 0 a `ParallelBackend`
/// leading, rank 1 `run_member` following over loopback TCP, NCCL joined through the group's protocol. Remote KV
/// computed on one GPU lands whole and is split by KV head (a decode step after it matches one GPU's), a KV read
/// for a transfer gathers every head from both GPUs, and an engine on the group generates one GPU's greedy tokens.
#[test]
fn a_gpu_group_under_an_engine_matches_one_gpu() {
    if skip(2) {
        return;
    }
    use cleave_engine::device::{GpuPart, cuda_rank};
    use cleave_engine::parallel::{ParallelBackend, run_member};
    use cleave_engine::{Engine, EngineConfig};
    let shard = |rank| GpuPart::Tensor(TpRank { rank, world: 2 });
    let config = EngineConfig {
        kv_cache_bytes: 16 << 20,
        ..EngineConfig::default()
    };
    let load = || load_model(ModelFiles::HfDir(&tiny_llama())).unwrap();
    let comms = tcp_pair();
    let follower = {
        let (comm, config) = (comms[1].clone(), config.clone());
        std::thread::spawn(move || {
            let model = load().0;
            let local = TpRank::local_config(model.config(), 2);
            run_member(&local, comm, |_, _| cuda_rank(model, shard(1), 1, &config, None))
        })
    };
    let (model, tokenizer) = load();
    let tokenizer = Arc::new(tokenizer);
    let leader = cuda_rank(model, shard(0), 0, &config, None).unwrap();
    let mut group = ParallelBackend::lead(
        leader,
        comms[0].clone(),
        std::time::Duration::from_millis(200),
        Arc::new(|_| {}),
    )
    .unwrap();
    let mut single = CudaBackend::from_model(load().0, &options(0, 16 << 20, 16)).unwrap();

    let prompt = remote_prompt();
    let (want, got) = decode_after_remote_kv(&mut single, &mut group);
    close("decode after remote KV", &want, &got);

    // KV read for a transfer (a prefill worker's export): each layer gathered from both GPUs over NCCL reads back
    // with every KV head, as one GPU computes it.
    let (want, got) = (read_kv(&mut single, &[3, 4, 5]), read_kv(&mut group, &[3, 4, 5]));
    same_kv("KV gathered from 2 GPUs", &want, &got);

    // An engine on the group against an engine on one GPU, greedy.
    let prompts: Vec<Vec<u32>> = vec![prompt.clone(), (0..17).map(|i| 11 + (i * 13) % 250).collect()];
    let generate = |engine: &Engine| greedy_tokens(engine, &prompts);
    let on_group = Engine::start_backend(Box::new(group), tokenizer.clone(), config.scheduler.clone()).unwrap();
    let got = generate(&on_group);
    drop(on_group);
    follower.join().unwrap().unwrap();
    let on_one = Engine::start_backend(Box::new(single), tokenizer, config.scheduler.clone()).unwrap();
    let want = generate(&on_one);
    assert_eq!(got, want, "greedy tokens of the GPU group and of one GPU");
}

/// A GPU group of `world` ranks holding `part`s of the fixture `model`, led here as `cleave worker --device cuda`
/// leads one — rank 0 a `ParallelBackend`, ranks 1.. `run_member` following in child processes running this `test`
/// (rank r on GPU r mod the GPUs; where ranks outnumber the GPUs each child poses as a host of its own with
/// `NCCL_HOSTID`, so NCCL lets ranks share a GPU), the ranks meeting over loopback TCP and joining NCCL through the
/// group's protocol — then checked against one GPU: a two-sequence prefill and four decode steps give its logits, KV
/// computed on one GPU lands layer by layer where the group keeps it (a decode step after it matches), and an engine
/// on the group generates one GPU's greedy tokens. `between` runs on the group and the single GPU after the remote
/// KV, before the engines.
fn group_in_processes_matches_one_gpu(
    test: &str,
    model: &str,
    world: usize,
    part: fn(usize) -> cleave_engine::device::GpuPart,
    between: impl FnOnce(&mut dyn Backend, &mut CudaBackend),
) {
    use cleave_engine::device::cuda_rank;
    use cleave_engine::parallel::{ParallelBackend, run_member};
    use cleave_engine::{Engine, EngineConfig};
    let config = EngineConfig {
        kv_cache_bytes: 16 << 20,
        ..EngineConfig::default()
    };
    let dir = tiny_llama().with_file_name(model);
    let load = || load_model(ModelFiles::HfDir(&dir)).unwrap();
    if let Ok(child) = std::env::var("CLEAVE_GROUP_CHILD") {
        let (rank, peers) = child.split_once(';').unwrap();
        let rank: usize = rank.parse().unwrap();
        let peers: Vec<String> = peers.split(',').map(str::to_owned).collect();
        let listener = std::net::TcpListener::bind(&peers[rank]).unwrap();
        let comm = cleave_comm::TcpCommunicator::connect(&listener, rank, &peers, "gpu-group", Default::default());
        let model = load().0;
        let agreed = part(rank).agreed_config(model.config());
        run_member(&agreed, Arc::new(comm.unwrap()), |_, _| {
            cuda_rank(model, part(rank), rank % gpus(), &config, None)
        })
        .unwrap();
        return;
    }
    // The other ranks' ports: picked free here, bound again by the children.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let spare: Vec<_> = (1..world)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<String> = std::iter::once(&listener)
        .chain(&spare)
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    drop(spare);
    let children: Vec<_> = (1..world)
        .map(|rank| {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child
                .args(["--exact", test, "--nocapture", "--test-threads=1"])
                .env("CLEAVE_GROUP_CHILD", format!("{rank};{}", peers.join(",")));
            if gpus() < world {
                child.env("NCCL_HOSTID", format!("cleave-group-rank-{rank}"));
            }
            child.spawn().unwrap()
        })
        .collect();
    let comm = cleave_comm::TcpCommunicator::connect(&listener, 0, &peers, "gpu-group", Default::default());
    let comm: Arc<dyn cleave_comm::Communicator> = Arc::new(comm.unwrap());
    let (model, tokenizer) = load();
    let leader = cuda_rank(model, part(0), 0, &config, None).unwrap();
    let mut group =
        ParallelBackend::lead(leader, comm, std::time::Duration::from_millis(200), Arc::new(|_| {})).unwrap();
    let mut single = CudaBackend::from_model(load().0, &options(0, 16 << 20, 16)).unwrap();

    // Two sequences prefilled in one batch (cut between the ranks), then decoded together.
    let a: Vec<u32> = (0..23).map(|i| 3 + (i * 11) % 250).collect();
    let b: Vec<u32> = (0..9).map(|i| 7 + (i * 5) % 250).collect();
    let (ta, tb): (Vec<u32>, Vec<u32>) = ((10..12).collect(), (20..21).collect());
    fn seq<'a>(tokens: &'a [u32], start_pos: usize, blocks: &'a [u32]) -> SeqChunk<'a> {
        chunk(tokens, start_pos, blocks)[0]
    }
    let prefill = [seq(&a, 0, &ta), seq(&b, 0, &tb)];
    let want = single.forward_plain(&prefill).unwrap();
    close("prefill", &want, &group.forward_plain(&prefill).unwrap());
    for step in 0..4u32 {
        let (na, nb) = ([10 + step], [20 + step]);
        let chunks = [seq(&na, 23 + step as usize, &ta), seq(&nb, 9 + step as usize, &tb)];
        let want = single.forward_plain(&chunks).unwrap();
        close(
            &format!("decode step {step}"),
            &want,
            &group.forward_plain(&chunks).unwrap(),
        );
    }
    let (want, got) = decode_after_remote_kv(&mut single, &mut group);
    close("decode after remote KV", &want, &got);
    between(&mut group, &mut single);

    let tokenizer = Arc::new(tokenizer);
    let prompts: Vec<Vec<u32>> = vec![remote_prompt(), (0..17).map(|i| 11 + (i * 13) % 250).collect()];
    let on_group = Engine::start_backend(Box::new(group), tokenizer.clone(), config.scheduler.clone()).unwrap();
    let got = greedy_tokens(&on_group, &prompts);
    drop(on_group);
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a follower's process failed");
    }
    let on_one = Engine::start_backend(Box::new(single), tokenizer, config.scheduler.clone()).unwrap();
    assert_eq!(
        got,
        greedy_tokens(&on_one, &prompts),
        "greedy tokens of the GPU group and of one GPU"
    );
}

/// Two pipeline stages (layer 0 on rank 0, layer 1 on rank 1; two micro-batches, so the prefill batch's chunks are
/// cut between pieces) against one GPU (see `group_in_processes_matches_one_gpu`); a pass that would read KV for a
/// transfer is refused naming `kv_transfer`.
#[test]
fn a_gpu_pipeline_under_an_engine_matches_one_gpu() {
    use cleave_engine::device::GpuPart;
    use cleave_engine::model::PipelineStage;
    if skip(1) {
        return;
    }
    group_in_processes_matches_one_gpu(
        "a_gpu_pipeline_under_an_engine_matches_one_gpu",
        "tiny-llama",
        2,
        |rank| GpuPart::Pipeline(PipelineStage::new(2, 2, rank, 2).unwrap()),
        |group, _| {
            let refused = group.forward(&chunk(&remote_prompt(), 0, &[3, 4, 5]).map(quiet), &mut |_, _| {});
            assert!(refused.unwrap_err().to_string().contains("kv_transfer"));
        },
    );
}

/// Two context-parallel ranks (each prefill chunk cut at block boundaries between them, decode steps on rank 0,
/// each layer's new KV exchanged) against one GPU (see `group_in_processes_matches_one_gpu`); a KV read for a
/// transfer on the group returns one GPU's keys and values, every layer whole on rank 0.
#[test]
fn a_gpu_context_parallel_group_under_an_engine_matches_one_gpu() {
    use cleave_engine::device::GpuPart;
    if skip(1) {
        return;
    }
    group_in_processes_matches_one_gpu(
        "a_gpu_context_parallel_group_under_an_engine_matches_one_gpu",
        "tiny-llama",
        2,
        |rank| GpuPart::Context(TpRank { rank, world: 2 }),
        |group, single| {
            let (want, got) = (read_kv(single, &[3, 4, 5]), read_kv(group, &[3, 4, 5]));
            same_kv("KV read from 2 context-parallel ranks", &want, &got);
        },
    );
}

/// Fails unless `got` (a group's logits) equals `want` (one GPU's) to bf16 summation-order noise.
fn close(what: &str, want: &[f32], got: &[f32]) {
    assert_eq!(want.len(), got.len(), "{what}: logits rows");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    let worst = want.iter().zip(got).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    eprintln!("{what}: group vs one GPU, max |Δlogit| {worst:.4} of {scale:.2}");
    assert!(
        worst <= 0.03 * scale,
        "{what}: logits differ by {worst} (scale {scale})"
    );
}

fn quiet(c: SeqChunk<'_>) -> SeqChunk<'_> {
    SeqChunk {
        want_logits: false,
        ..c
    }
}

/// The prompt whose KV `decode_after_remote_kv` moves.
fn remote_prompt() -> Vec<u32> {
    (0..40).map(|i| 3 + (i * 7) % 250).collect()
}

/// Remote KV: `remote_prompt` computed on one GPU, every layer of its 3 blocks written into `group`; the logits of
/// a decode step after it on one GPU and on the group.
fn decode_after_remote_kv(single: &mut CudaBackend, group: &mut dyn Backend) -> (Vec<f32>, Vec<f32>) {
    let (prompt, blocks) = (remote_prompt(), [0u32, 1, 2]);
    let mut layers = Vec::new();
    single
        .forward(&chunk(&prompt, 0, &blocks).map(quiet), &mut |layer, kv| {
            for &b in &blocks {
                let (mut k, mut v) = (Vec::new(), Vec::new());
                kv.read_block_layer(layer, b, &mut k, &mut v);
                layers.push((layer, b, k, v));
            }
        })
        .unwrap();
    for (layer, block, k, v) in &layers {
        group.write_block_layer(*layer, *block, k, v).unwrap();
    }
    let want = single.forward_plain(&chunk(&[9], 40, &blocks)).unwrap();
    (want, group.forward_plain(&chunk(&[9], 40, &blocks)).unwrap())
}

/// Greedy tokens (12 each) an engine generates for `prompts`, all submitted at once.
fn greedy_tokens(engine: &cleave_engine::Engine, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(p.clone(), &common::greedy(12), 0).unwrap())
        .collect();
    streams
        .into_iter()
        .map(|mut s| {
            let mut ids = Vec::new();
            while let Some(out) = s.blocking_next() {
                ids.extend(out.unwrap().token_ids);
            }
            ids
        })
        .collect()
}

/// The keys and values of `remote_prompt` in `blocks`, read layer by layer during its prefill (as a prefill
/// worker's export reads them).
fn read_kv(backend: &mut dyn Backend, blocks: &[u32]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut out = Vec::new();
    let prompt = remote_prompt();
    backend
        .forward(&chunk(&prompt, 0, blocks).map(quiet), &mut |layer, kv| {
            for &b in blocks {
                let (mut k, mut v) = (Vec::new(), Vec::new());
                kv.read_block_layer(layer, b, &mut k, &mut v);
                out.push((k, v));
            }
        })
        .unwrap();
    out
}

/// Fails unless two KV reads agree to bf16 noise.
fn same_kv(what: &str, want: &[(Vec<f32>, Vec<f32>)], got: &[(Vec<f32>, Vec<f32>)]) {
    assert_eq!(want.len(), got.len());
    let mut worst = 0.0f32;
    for ((wk, wv), (gk, gv)) in want.iter().zip(got) {
        assert_eq!((wk.len(), wv.len()), (gk.len(), gv.len()));
        worst = wk
            .iter()
            .chain(wv)
            .zip(gk.iter().chain(gv))
            .map(|(a, b)| (a - b).abs())
            .fold(worst, f32::max);
    }
    eprintln!("{what} vs one GPU: max |Δ| {worst:.4}");
    assert!(worst < 0.05, "{what}: KV differs by {worst}");
}

/// The group sizes a benchmark runs: `var` (e.g. "2,4") or `default`.
fn group_sizes(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var).map_or_else(
        |_| default.to_vec(),
        |w| w.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    )
}

/// Two host communicators connected over loopback TCP.
fn tcp_pair() -> Vec<Arc<dyn cleave_comm::Communicator>> {
    let listeners: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().to_string()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(rank, listener)| {
            let peers = peers.clone();
            std::thread::spawn(move || {
                let config = cleave_comm::TcpConfig::default();
                cleave_comm::TcpCommunicator::connect(&listener, rank, &peers, "gpu-group", config).unwrap()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| Arc::new(h.join().unwrap()) as Arc<dyn cleave_comm::Communicator>)
        .collect()
}

/// Batch-1 decode of the Llama-3.1-8B shape (random weights; CLEAVE_TP_SHAPE picks another) at 1, 2 and 4 GPUs,
/// CUDA graphs on: step time and
/// the share of the per-GPU memory-bandwidth roofline (the bytes each rank reads per step over the device's copy
/// bandwidth).
#[test]
#[ignore = "a benchmark: scripts/gpu-check runs it"]
fn tp_decode_benchmark() {
    if skip(1) {
        return;
    }
    let shape = std::env::var("CLEAVE_TP_SHAPE").unwrap_or_else(|_| "llama-3.1-8b".to_owned());
    let config = synthetic_config(&shape).unwrap();
    let gpus = gpus();
    // CLEAVE_TP_WORLDS (e.g. "2,4") picks the group sizes, for shapes one GPU cannot hold.
    let worlds = group_sizes("CLEAVE_TP_WORLDS", &[1, 2, 4, 8]);
    for world in worlds.into_iter().filter(|w| *w <= gpus) {
        if TpRank::check(&config, world).is_err() {
            continue;
        }
        let local = TpRank::local_config(&config, world);
        let barrier = Arc::new(Barrier::new(world));
        let results = on_ranks(
            world,
            move |rank| CudaBackend::synthetic(local.clone(), 7 + rank as u64, &options(rank, 2 << 30, 16)).unwrap(),
            move |_rank, backend| {
                let blocks: Vec<u32> = (0..16).collect();
                let prompt: Vec<u32> = (0..128).map(|i| 100 + i).collect();
                backend.forward_plain(&chunk(&prompt, 0, &blocks)).unwrap();
                let mut pos = prompt.len();
                for _ in 0..16 {
                    backend.forward_plain(&chunk(&[5], pos, &blocks)).unwrap();
                    pos += 1;
                }
                let bandwidth = backend.copy_bandwidth(1 << 30, 10).unwrap();
                barrier.wait();
                let steps = 100;
                let started = Instant::now();
                for _ in 0..steps {
                    backend.forward_plain(&chunk(&[5], pos, &blocks)).unwrap();
                    pos += 1;
                }
                let step_s = started.elapsed().as_secs_f64() / steps as f64;
                (
                    step_s,
                    backend.weights_bytes(),
                    bandwidth,
                    backend.device_name().to_owned(),
                )
            },
        );
        let (step_s, bytes, bandwidth, device) = results[0].clone();
        let slowest = results.iter().map(|r| r.0).fold(0.0, f64::max);
        let roofline = bandwidth / bytes as f64;
        eprintln!(
            "{shape} TP {world} on {device}: b1 decode {:.3} ms/step = {:.1} tok/s (slowest rank {:.3} ms); rank 0 \
             reads {:.2} GB/step at {:.0} GB/s copy bandwidth: roofline {:.1} tok/s, {:.0}%",
            step_s * 1e3,
            1.0 / step_s,
            slowest * 1e3,
            bytes as f64 / 1e9,
            bandwidth / 1e9,
            roofline,
            100.0 / step_s / roofline
        );
    }
}

/// Prefill of one 32,768-token prompt (CLEAVE_CP_TOKENS) of the Llama-3.1-8B shape (random weights; CLEAVE_CP_SHAPE)
/// in one pass on 1, 2 and 4 GPUs (CLEAVE_CP_WORLDS) of a context-parallel group: the median of three passes after
/// a warm-up, and the speed-up over one GPU in the same run.
#[test]
#[ignore = "a benchmark: scripts/gpu-check runs it"]
fn cp_prefill_benchmark() {
    if skip(1) {
        return;
    }
    let shape = std::env::var("CLEAVE_CP_SHAPE").unwrap_or_else(|_| "llama-3.1-8b".to_owned());
    let config = synthetic_config(&shape).unwrap();
    let tokens: usize = std::env::var("CLEAVE_CP_TOKENS").map_or(32_768, |n| n.parse().unwrap());
    let worlds = group_sizes("CLEAVE_CP_WORLDS", &[1, 2, 4]);
    let kv_bytes = 2 * config.n_layers * config.kv_dim() * 2 * (tokens + 64);
    let mut one_gpu = None;
    for world in worlds.into_iter().filter(|w| *w <= gpus()) {
        let (config, barrier) = (config.clone(), Arc::new(Barrier::new(world)));
        let results = on_ranks(
            world,
            move |rank| {
                let backend = CudaBackend::synthetic(config.clone(), 7, &options(rank, kv_bytes, 16)).unwrap();
                match world {
                    1 => backend,
                    _ => backend.context_parallel(TpRank { rank, world }),
                }
            },
            move |_rank, backend| {
                let blocks: Vec<u32> = (0..tokens.div_ceil(16) as u32).collect();
                let prompt: Vec<u32> = (0..tokens as u32).map(|i| 100 + i % 30_000).collect();
                backend.forward_plain(&chunk(&prompt, 0, &blocks)).unwrap();
                let mut times: Vec<f64> = (0..3)
                    .map(|_| {
                        barrier.wait();
                        let started = Instant::now();
                        backend.forward_plain(&chunk(&prompt, 0, &blocks)).unwrap();
                        started.elapsed().as_secs_f64()
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                (times[1], backend.device_name().to_owned())
            },
        );
        let (pass_s, device) = results[0].clone();
        let base = *one_gpu.get_or_insert(pass_s);
        eprintln!(
            "{shape} context-parallel prefill of {tokens} tokens on {world} × {device}: {:.1} ms = {:.0} tok/s, \
             {:.2}× one GPU",
            pass_s * 1e3,
            tokens as f64 / pass_s,
            base / pass_s
        );
    }
}

/// Tensor parallelism inside pipeline stages on four GPU ranks: stage 0 (layer 0) on ranks 0–1 and stage 1 (layer 1)
/// on ranks 2–3, each stage split by heads in two, activations passing between ranks of equal tensor rank, logits
/// from tensor rank 0 of the last stage — against one GPU (see `group_in_processes_matches_one_gpu`).
#[test]
fn a_gpu_tensor_pipeline_group_under_an_engine_matches_one_gpu() {
    use cleave_engine::device::GpuPart;
    use cleave_engine::model::PipelineStage;
    if skip(1) {
        return;
    }
    group_in_processes_matches_one_gpu(
        "a_gpu_tensor_pipeline_group_under_an_engine_matches_one_gpu",
        "tiny-llama",
        4,
        |rank| GpuPart::TensorPipeline {
            tensor: TpRank {
                rank: rank % 2,
                world: 2,
            },
            stage: PipelineStage::new(2, 2, rank / 2, 2).unwrap(),
        },
        |_, _| {},
    );
}

/// The tiny Mixtral (8 experts, top-2) on two expert-parallel ranks — four experts and half the attention heads
/// each, the shares summed by the layer's all-reduce — against one GPU (see `group_in_processes_matches_one_gpu`);
/// a KV read for a transfer gathers every head from both ranks.
#[test]
fn a_gpu_expert_parallel_group_under_an_engine_matches_one_gpu() {
    use cleave_engine::device::GpuPart;
    if skip(1) {
        return;
    }
    group_in_processes_matches_one_gpu(
        "a_gpu_expert_parallel_group_under_an_engine_matches_one_gpu",
        "tiny-mixtral",
        2,
        |rank| GpuPart::Expert(TpRank { rank, world: 2 }),
        |group, single| {
            let (want, got) = (read_kv(single, &[3, 4, 5]), read_kv(group, &[3, 4, 5]));
            same_kv("KV gathered from 2 expert-parallel ranks", &want, &got);
        },
    );
}

/// Mixture-of-experts throughput of the Mixtral-8x7B shape (random weights; CLEAVE_MOE_SHAPE) at EP 1, 2 and 4
/// (CLEAVE_EP_WORLDS; EP 1 holds all 93 GB of experts on one GPU): prefill of one 2,048-token prompt, and decode steps
/// of 32 sequences at ~130 tokens of context; medians of three, rank 0's clock.
#[test]
#[ignore = "a benchmark: scripts/gpu-check runs it"]
fn moe_ep_benchmark() {
    if skip(1) {
        return;
    }
    let shape = std::env::var("CLEAVE_MOE_SHAPE").unwrap_or_else(|_| "mixtral-8x7b".to_owned());
    let config = synthetic_config(&shape).unwrap();
    let mut one_gpu = None;
    for world in group_sizes("CLEAVE_EP_WORLDS", &[1, 2, 4])
        .into_iter()
        .filter(|w| *w <= gpus())
    {
        if TpRank::check_experts(&config, world).is_err() {
            continue;
        }
        let (config, barrier) = (config.clone(), Arc::new(Barrier::new(world)));
        let results = on_ranks(
            world,
            move |rank| {
                let options = options(rank, 4 << 30, 16);
                match world {
                    1 => CudaBackend::synthetic(config.clone(), 7, &options).unwrap(),
                    _ => CudaBackend::synthetic_experts(&config, 7, &options, TpRank { rank, world }).unwrap(),
                }
            },
            move |_rank, backend| {
                let median = |backend: &mut CudaBackend, run: &dyn Fn(&mut CudaBackend)| {
                    let mut times: Vec<f64> = (0..3)
                        .map(|_| {
                            barrier.wait();
                            let started = Instant::now();
                            run(backend);
                            started.elapsed().as_secs_f64()
                        })
                        .collect();
                    times.sort_by(f64::total_cmp);
                    times[1]
                };
                let prompt: Vec<u32> = (0..2048u32).map(|i| 100 + i % 30_000).collect();
                let blocks: Vec<u32> = (0..128).collect();
                let prefill = |b: &mut CudaBackend| {
                    b.forward_plain(&chunk(&prompt, 0, &blocks)).unwrap();
                };
                prefill(backend);
                let prefill_s = median(backend, &prefill);
                let tables: Vec<Vec<u32>> = (0..32u32).map(|s| (200 + 16 * s..216 + 16 * s).collect()).collect();
                let starts: Vec<Vec<u32>> = (0..32u32)
                    .map(|s| (0..128).map(|i| 7 + (i * 31 + s) % 30_000).collect())
                    .collect();
                let batch: Vec<SeqChunk<'_>> = starts
                    .iter()
                    .zip(&tables)
                    .map(|(tokens, blocks)| chunk(tokens, 0, blocks)[0])
                    .collect();
                backend.forward_plain(&batch).unwrap();
                let steps = 16;
                let decode = |b: &mut CudaBackend| {
                    for step in 0..steps {
                        let next = [5u32];
                        let batch: Vec<SeqChunk<'_>> = tables
                            .iter()
                            .map(|blocks| chunk(&next, 128 + step, blocks)[0])
                            .collect();
                        b.forward_plain(&batch).unwrap();
                    }
                };
                decode(backend);
                let decode_s = median(backend, &decode) / steps as f64;
                (
                    prefill_s,
                    decode_s,
                    backend.weights_bytes(),
                    backend.device_name().to_owned(),
                )
            },
        );
        let (prefill_s, step_s, bytes, device) = results[0].clone();
        let decode_tps = 32.0 / step_s;
        let base = *one_gpu.get_or_insert(decode_tps);
        eprintln!(
            "{shape} EP {world} on {device}: {:.1} GB of weights per rank; prefill 2048 tokens {:.1} ms = {:.0} tok/s; \
             batch-32 decode {:.2} ms/step = {:.0} tok/s ({:.2}× the first group size)",
            bytes as f64 / 1e9,
            prefill_s * 1e3,
            2048.0 / prefill_s,
            step_s * 1e3,
            decode_tps,
            decode_tps / base
        );
    }
}

/// The tiny Mixtral under tensor parallelism on two GPU ranks — every expert split by width, like the attention and
/// dense MLPs — against one GPU (see `group_in_processes_matches_one_gpu`).
#[test]
fn a_gpu_tensor_parallel_mixture_of_experts_matches_one_gpu() {
    use cleave_engine::device::GpuPart;
    if skip(1) {
        return;
    }
    group_in_processes_matches_one_gpu(
        "a_gpu_tensor_parallel_mixture_of_experts_matches_one_gpu",
        "tiny-mixtral",
        2,
        |rank| GpuPart::Tensor(TpRank { rank, world: 2 }),
        |_, _| {},
    );
}
