//! NCCL KV links between two GPUs: a prompt's KV sent layer by layer during the prefill pass and scattered into
//! the receiver's blocks, and the links' benchmark (bandwidth, layer-wise overhead, device memory per link).

use super::ipc::{
    IPC_DEST as DEST, IPC_PROMPT as PROMPT, assert_landed_kv_gives_local_logits, gpu_count, prefill_into_peer,
    refused_copy, sender_bench, tiny_gpu_on,
};
use super::*;

/// The tiny Llama on two GPUs, one link between them moving 3 blocks a chunk (so a layer crosses in 4 chunks): the
/// sender's 37-token prompt KV, sent during its forward pass, lands in scattered blocks of the receiver, whose
/// next-token logits from them equal its own local prefill's. An aborted link fails its next send cleanly.
#[test]
fn kv_sent_over_an_nccl_link_gives_the_local_prefill_logits() {
    if skip() {
        return;
    }
    if gpu_count() < 2 || !cleave_comm::nccl_available() {
        eprintln!("skipped: two GPUs and NCCL wanted");
        return;
    }
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 3 + (i * 13) % 250).collect();
    let blocks = PROMPT.div_ceil(4);
    let mut gpu = tiny_gpu_on(0);
    let block_bytes = 2 * gpu.kv_shape().block_floats();
    let endpoint = gpu
        .kv_link_endpoint()
        .expect("a whole-model CUDA backend has NCCL links");
    let endpoint = endpoint.with_staging_bytes(3 * block_bytes);
    let id = endpoint.new_link_id().unwrap();
    let sender = {
        let (id, prompt) = (id.clone(), prompt.clone());
        std::thread::spawn(move || {
            let mut gpu = tiny_gpu_on(1);
            let endpoint = gpu.kv_link_endpoint().unwrap().with_staging_bytes(3 * block_bytes);
            let link = endpoint.connect("test-link", &id, true).unwrap();
            assert!(link.device_bytes() > 0, "a link takes device memory");
            let own: Vec<u32> = (40..40 + blocks as u32).collect();
            let pairs: Vec<(u32, u32)> = own.iter().copied().zip(DEST).collect();
            prefill_into_peer(&mut gpu, &prompt[..PROMPT - 1], &own, &link, &pairs);
            link.abort("the test is done with it");
            assert!(link.is_aborted());
            let refused = refused_copy(&mut gpu, &prompt[..4], own[0], &link, pairs[0]);
            assert!(refused.contains("aborted"), "{refused}");
        })
    };
    let link = endpoint.connect("test-link", &id, false).unwrap();
    // Refused before anything moves: a destination block outside the pool.
    assert!(gpu.receive_kv(&link, &[1 << 30]).is_err());
    let copies = gpu.receive_kv(&link, &DEST).unwrap();
    assert_eq!(copies.len(), gpu.kv_shape().n_layers);
    for copy in copies {
        copy.wait().unwrap();
    }
    sender.join().unwrap();
    let local_blocks: Vec<u32> = (40..40 + blocks as u32).collect();
    assert_landed_kv_gives_local_logits(&mut gpu, &prompt, &DEST, &local_blocks, "an NCCL link");
    eprintln!(
        "NCCL link: {blocks} blocks × {} layers in chunks of 3 blocks; logits match local prefill",
        gpu.kv_shape().n_layers
    );
}

/// With `CLEAVE_IPC_BENCH=llama-3.1-8b` (a synthetic shape) on two GPUs: the KV of a 4,096-token prompt sent over
/// an NCCL link (GB/s), prefill of 1k/4k/16k-token prompts alone against the same prefill sending each layer as
/// it is computed, and the device memory each link takes on each side (with how many links 8 GiB would hold).
#[test]
fn nccl_link_bench_when_asked() {
    let Ok(shape) = std::env::var("CLEAVE_IPC_BENCH") else {
        return;
    };
    if skip() || gpu_count() < 2 || !cleave_comm::nccl_available() {
        eprintln!("skipped: 2 GPUs and NCCL wanted");
        return;
    }
    let config = cleave_engine::cuda::synthetic_config(&shape).unwrap();
    let prompts = [1024usize, 4096, 16384];
    let block_size = 16;
    let per_token = 2 * config.n_layers * config.n_kv_heads * config.head_dim * 2;
    let options = move |ordinal| CudaOptions {
        ordinal,
        kv_cache_bytes: (16384 + 512) * per_token,
        block_size,
        kernel_cache: None,
    };
    let vocab = config.vocab_size;
    const EXTRA_LINKS: usize = 3;
    let receiver_gpu = CudaBackend::synthetic(config.clone(), 0x5eed, &options(0)).unwrap();
    let endpoint = receiver_gpu.kv_link_endpoint().unwrap();
    let id = endpoint.new_link_id().unwrap();
    let extra_ids: Vec<Vec<u8>> = (0..EXTRA_LINKS).map(|_| endpoint.new_link_id().unwrap()).collect();
    let sender = {
        let (config, id, extra_ids) = (config.clone(), id.clone(), extra_ids.clone());
        std::thread::spawn(move || {
            let mut gpu = CudaBackend::synthetic(config, 0x5eed, &options(1)).unwrap();
            let endpoint = gpu.kv_link_endpoint().unwrap();
            let link = endpoint.connect("bench-link", &id, true).unwrap();
            sender_bench(&mut gpu, &link, "NCCL link", &prompts, block_size, vocab);
            let first = link.device_bytes();
            let extra: Vec<_> = extra_ids
                .iter()
                .enumerate()
                .map(|(i, id)| endpoint.connect(&format!("bench-extra-{i}"), id, true).unwrap())
                .collect();
            let sizes: Vec<String> = std::iter::once(first)
                .chain(extra.iter().map(|l| l.device_bytes()))
                .map(|b| format!("{:.1}", b as f64 / (1 << 20) as f64))
                .collect();
            eprintln!("sender side: device MiB per link {sizes:?}");
        })
    };
    let mut gpu = receiver_gpu;
    let link = endpoint.connect("bench-link", &id, false).unwrap();
    let receive = |gpu: &mut CudaBackend, n: usize| {
        let blocks: Vec<u32> = (0..n.div_ceil(block_size) as u32).collect();
        for copy in gpu.receive_kv(&link, &blocks).unwrap() {
            copy.wait().unwrap();
        }
    };
    // The bandwidth run: one warm-up and five timed transfers of 4k tokens.
    for _ in 0..6 {
        receive(&mut gpu, 4096);
    }
    for &n in &prompts {
        // prefill_ms's runs: a warm-up and three timed.
        for _ in 0..4 {
            receive(&mut gpu, n);
        }
    }
    let mut sizes = vec![link.device_bytes()];
    for (i, id) in extra_ids.iter().enumerate() {
        sizes.push(
            endpoint
                .connect(&format!("bench-extra-{i}"), id, false)
                .unwrap()
                .device_bytes(),
        );
    }
    sender.join().unwrap();
    let mean = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    eprintln!(
        "receiver side: device MiB per link {:?}; ≈{:.0} links per 8 GiB",
        sizes
            .iter()
            .map(|&b| format!("{:.1}", b as f64 / (1 << 20) as f64))
            .collect::<Vec<_>>(),
        (8u64 << 30) as f64 / mean.max(1.0)
    );
}
