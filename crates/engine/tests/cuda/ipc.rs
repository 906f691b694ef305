//! CUDA IPC between two processes: KV written straight into another process's pool, and its benchmark.

use super::*;
use cleave_engine::PeerKv;

/// GPUs on this machine (0 without a driver).
pub(super) fn gpu_count() -> usize {
    CudaContext::device_count().map_or(0, |n| n as usize)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Runs this test binary's `test` in a child process with `env` set (CUDA IPC needs two processes) and fails if it
/// fails.
pub(super) fn run_child(test: &str, env: &[(&str, String)]) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    for (key, value) in env {
        child.env(key, value);
    }
    let status = child.status().unwrap();
    assert!(status.success(), "the child process failed: {status}");
}

pub(super) const IPC_PROMPT: usize = 37;
/// Where the prefill side's blocks land in the decode side's pool: scattered, out of order.
pub(super) const IPC_DEST: [u32; 10] = [7, 2, 11, 30, 4, 19, 25, 9, 14, 0];

/// Two processes, each with the tiny Llama on a GPU (different GPUs when there are two): the prefill side maps the
/// decode side's pool through CUDA IPC and writes a 37-token prompt's KV straight into scattered blocks of it,
/// layer by layer during its forward pass; the decode side's next-token logits from those blocks equal its own
/// local prefill's.
#[test]
fn kv_written_through_cuda_ipc_gives_the_local_prefill_logits() {
    if skip() {
        return;
    }
    let prompt: Vec<u32> = (0..IPC_PROMPT as u32).map(|i| 3 + (i * 13) % 250).collect();
    let blocks = IPC_PROMPT.div_ceil(4);
    if let Ok(descriptor) = std::env::var("CLEAVE_IPC_CHILD") {
        // The prefill side.
        let mut gpu = tiny_gpu_on(gpu_count().min(2) - 1);
        let peer = gpu.open_peer_kv(&unhex(&descriptor)).unwrap();
        let own: Vec<u32> = (40..40 + blocks as u32).collect();
        let pairs: Vec<(u32, u32)> = own.iter().copied().zip(IPC_DEST).collect();
        prefill_into_peer(&mut gpu, &prompt[..IPC_PROMPT - 1], &own, &peer, &pairs);
        // Refused: a block outside the peer's pool.
        let refused = refused_copy(&mut gpu, &prompt[..4], own[0], &peer, (40, 1 << 30));
        assert!(refused.contains("pool"), "{refused}");
        return;
    }
    let mut gpu = tiny_gpu_on(0);
    let descriptor = gpu
        .export_kv_pool()
        .unwrap()
        .expect("a whole-model CUDA backend shares its pool");
    assert!(
        gpu.open_peer_kv(b"not a descriptor")
            .unwrap_err()
            .to_string()
            .contains("kv_pool")
    );
    run_child(
        "ipc::kv_written_through_cuda_ipc_gives_the_local_prefill_logits",
        &[("CLEAVE_IPC_CHILD", hex(&descriptor))],
    );
    let local_blocks: Vec<u32> = (40..40 + blocks as u32).collect();
    assert_landed_kv_gives_local_logits(&mut gpu, &prompt, &IPC_DEST, &local_blocks, "CUDA IPC");
    eprintln!(
        "CUDA IPC: {} blocks × {} layers landed; logits match local prefill",
        blocks,
        gpu.kv_shape().n_layers
    );
}

/// Prefills `prompt` into `own` blocks, copying each layer into the peer's blocks (`pairs`) as it is computed, and
/// waits until every copy landed.
pub(super) fn prefill_into_peer(
    gpu: &mut CudaBackend,
    prompt: &[u32],
    own: &[u32],
    peer: &PeerKv,
    pairs: &[(u32, u32)],
) {
    let mut copies = Vec::new();
    gpu.forward(
        &[SeqChunk {
            tokens: prompt,
            start_pos: 0,
            blocks: own,
            want_logits: false,
        }],
        &mut |layer, reader| copies.push(reader.copy_to_peer(layer, peer, pairs).unwrap()),
    )
    .unwrap();
    assert_eq!(copies.len(), gpu.kv_shape().n_layers, "one copy per layer");
    for copy in copies {
        copy.wait().unwrap();
    }
}

/// The error of copying `pair` to `peer` during a prefill of `prompt` into block `own` (which must fail).
pub(super) fn refused_copy(gpu: &mut CudaBackend, prompt: &[u32], own: u32, peer: &PeerKv, pair: (u32, u32)) -> String {
    let mut refused = None;
    gpu.forward(
        &[SeqChunk {
            tokens: prompt,
            start_pos: 0,
            blocks: &[own],
            want_logits: false,
        }],
        &mut |layer, reader| {
            if layer == 0 {
                refused = Some(reader.copy_to_peer(0, peer, &[pair]).unwrap_err());
            }
        },
    )
    .unwrap();
    refused.unwrap()
}

/// The next-token logits of `prompt` computed from its KV landed in `dest` (all but the last token) equal a local
/// prefill of the whole prompt into `local_blocks`.
pub(super) fn assert_landed_kv_gives_local_logits(
    gpu: &mut CudaBackend,
    prompt: &[u32],
    dest: &[u32],
    local_blocks: &[u32],
    transport: &str,
) {
    let n = prompt.len();
    let last = [prompt[n - 1]];
    let landed = gpu
        .forward(
            &[SeqChunk {
                tokens: &last,
                start_pos: n - 1,
                blocks: dest,
                want_logits: true,
            }],
            &mut |_, _| {},
        )
        .unwrap();
    let local = gpu
        .forward(
            &[SeqChunk {
                tokens: prompt,
                start_pos: 0,
                blocks: local_blocks,
                want_logits: true,
            }],
            &mut |_, _| {},
        )
        .unwrap();
    let scale = local.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close(
        &format!("logits from KV landed through {transport}"),
        &landed,
        &local,
        0.0,
        1e-3 * scale.max(1.0),
    );
}

/// The median time (ms, of 3 after a warm-up) to prefill `chunk`, copying each layer into `export`'s peer blocks
/// when given and waiting for the copies.
pub(super) fn prefill_ms(
    gpu: &mut CudaBackend,
    chunk: &[SeqChunk<'_>],
    export: Option<(&PeerKv, &[(u32, u32)])>,
) -> f64 {
    let mut runs = Vec::new();
    for _ in 0..4 {
        let started = std::time::Instant::now();
        let mut copies = Vec::new();
        gpu.forward(chunk, &mut |layer, reader| {
            if let Some((peer, pairs)) = export {
                copies.push(reader.copy_to_peer(layer, peer, pairs).unwrap());
            }
        })
        .unwrap();
        for copy in copies {
            copy.wait().unwrap();
        }
        runs.push(started.elapsed().as_secs_f64() * 1e3);
    }
    runs.remove(0);
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

/// Prompt lengths the transport benchmarks time.
pub(super) const BENCH_PROMPTS: [usize; 3] = [1024, 4096, 16384];

/// The transport benchmarks' synthetic model: its shape, 16-token blocks, and the KV bytes one token takes (keys and
/// values of every layer, bf16).
pub(super) struct TransportBench {
    pub config: cleave_engine::ModelConfig,
    pub block_size: usize,
    pub per_token: usize,
}

impl TransportBench {
    pub fn new(shape: &str) -> Self {
        let config = cleave_engine::cuda::synthetic_config(shape).unwrap();
        let per_token = 2 * config.n_layers * config.n_kv_heads * config.head_dim * 2;
        TransportBench {
            config,
            block_size: 16,
            per_token,
        }
    }

    /// The model with random weights on GPU `ordinal`, with a KV pool of `tokens` tokens.
    pub fn gpu(&self, ordinal: usize, tokens: usize) -> CudaBackend {
        let options = CudaOptions {
            ordinal,
            kv_cache_bytes: tokens * self.per_token,
            block_size: self.block_size,
            kernel_cache: None,
        };
        CudaBackend::synthetic(self.config.clone(), 0x5eed, &options).unwrap()
    }
}

/// The sending side of a transport benchmark: the KV of 4,096 tokens moved to `peer` (GB/s), then each prompt's
/// prefill alone and moving each layer to the peer as it is computed.
pub(super) fn sender_bench(gpu: &mut CudaBackend, peer: &PeerKv, transport: &str, bench: &TransportBench) {
    let (block_size, per_token, vocab) = (bench.block_size, bench.per_token, bench.config.vocab_size);
    let gb_s = gpu.peer_copy_bandwidth(peer, 4096 / block_size, 5).unwrap();
    let bytes = 4096 * per_token;
    eprintln!(
        "{transport}: KV of 4096 tokens ({:.3} GB) in {:.2} ms → {:.0} GB/s",
        bytes as f64 / 1e9,
        bytes as f64 / gb_s * 1e3,
        gb_s / 1e9
    );
    for &n in &BENCH_PROMPTS {
        let prompt: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % vocab as u32).collect();
        let blocks: Vec<u32> = (0..n.div_ceil(block_size) as u32).collect();
        let pairs: Vec<(u32, u32)> = blocks.iter().map(|&b| (b, b)).collect();
        let chunk = [SeqChunk {
            tokens: &prompt,
            start_pos: 0,
            blocks: &blocks,
            want_logits: false,
        }];
        let alone = prefill_ms(gpu, &chunk, None);
        let exported = prefill_ms(gpu, &chunk, Some((peer, &pairs)));
        eprintln!(
            "prefill {n:>5} tokens: {alone:.1} ms alone, {exported:.1} ms moving each layer to the peer ({:+.1}%)",
            100.0 * (exported / alone - 1.0)
        );
    }
}

/// The tiny Llama on GPU `ordinal`, 4-token blocks.
pub(super) fn tiny_gpu_on(ordinal: usize) -> CudaBackend {
    let (model, _) = load_model(ModelFiles::HfDir(&fixture("fixtures/tiny-llama"))).unwrap();
    let options = CudaOptions {
        ordinal,
        kv_cache_bytes: 16 << 20,
        block_size: 4,
        kernel_cache: None,
    };
    CudaBackend::from_model(model, &options).unwrap()
}

/// With `CLEAVE_IPC_BENCH=llama-3.1-8b` (a synthetic shape) on two GPUs: the KV of a 4,096-token prompt copied
/// into the other GPU's pool through CUDA IPC (GB/s), and prefill of 1k/4k/16k-token prompts alone against the same
/// prefill writing each layer into the peer as it is computed (what disaggregation adds to the time to first
/// token on the prefill side), plus the decode side's one-token step from the landed KV.
#[test]
fn cuda_ipc_bench_when_asked() {
    let Ok(shape) = std::env::var("CLEAVE_IPC_BENCH") else {
        return;
    };
    if skip() {
        return;
    }
    let bench = TransportBench::new(&shape);
    // The longest prompt twice over (local and landed), and spare.
    let pool_tokens = 2 * 16384 + 512;
    if let Ok(descriptor) = std::env::var("CLEAVE_IPC_CHILD") {
        let mut gpu = bench.gpu(0, pool_tokens);
        let peer = gpu.open_peer_kv(&unhex(&descriptor)).unwrap();
        sender_bench(&mut gpu, &peer, "CUDA IPC copy", &bench);
        return;
    }
    // On a one-GPU machine both processes share it (the copy then stays in its memory).
    let mut gpu = bench.gpu(gpu_count().min(2) - 1, pool_tokens);
    let block_size = bench.block_size;
    let descriptor = gpu.export_kv_pool().unwrap().unwrap();
    run_child(
        "ipc::cuda_ipc_bench_when_asked",
        &[
            ("CLEAVE_IPC_CHILD", hex(&descriptor)),
            ("CLEAVE_IPC_BENCH", shape.clone()),
        ],
    );
    // The decode side's own step once the KV landed: the prompt's last token.
    for &n in &BENCH_PROMPTS {
        let blocks: Vec<u32> = (0..(n + 1).div_ceil(block_size) as u32).collect();
        let last = [1u32];
        let mut runs = Vec::new();
        for _ in 0..4 {
            let started = std::time::Instant::now();
            gpu.forward(
                &[SeqChunk {
                    tokens: &last,
                    start_pos: n,
                    blocks: &blocks,
                    want_logits: true,
                }],
                &mut |_, _| {},
            )
            .unwrap();
            runs.push(started.elapsed().as_secs_f64() * 1e3);
        }
        runs.remove(0);
        runs.sort_by(f64::total_cmp);
        eprintln!(
            "decode side, last prompt token after {n} landed: {:.2} ms",
            runs[runs.len() / 2]
        );
    }
}
