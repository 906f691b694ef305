//! NCCL KV links between two GPUs: a prompt's KV sent layer by layer during the prefill pass and scattered into
//! the receiver's blocks, and the links' benchmark (bandwidth, layer-wise overhead, device memory per link).

use super::ipc::{
    BENCH_PROMPTS, IPC_DEST as DEST, IPC_PROMPT as PROMPT, TransportBench, assert_landed_kv_gives_local_logits,
    gpu_count, hex, prefill_into_peer, refused_copy, run_child, sender_bench, tiny_gpu_on, unhex,
};
use super::*;

/// The environment of a link's sending side in a child process: its ids, and on a one-GPU machine a host id of
/// its own (NCCL refuses two ranks on one GPU of one host; as two "hosts" the link crosses over sockets).
fn sender_env(test_env: (&'static str, String), ids: &[Vec<u8>]) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "CLEAVE_LINK_CHILD",
            ids.iter().map(|id| hex(id)).collect::<Vec<_>>().join(","),
        ),
        test_env,
    ];
    if gpu_count() < 2 {
        env.push(("NCCL_HOSTID", "cleave-link-sender".to_owned()));
    }
    env
}

/// The tiny Llama in two processes (on two GPUs, or posing as two hosts on one), one link between them moving 3
/// blocks a chunk (so a layer crosses in 4 chunks): the sender's 37-token prompt KV, sent during its forward pass,
/// lands in scattered blocks of the receiver, whose next-token logits from them equal its own local prefill's. An
/// aborted link fails its next send cleanly; a receive into a block outside the pool is refused before anything
/// is queued.
#[test]
fn kv_sent_over_an_nccl_link_gives_the_local_prefill_logits() {
    if skip() {
        return;
    }
    if !cleave_comm::nccl_available() {
        eprintln!("skipped: NCCL wanted");
        return;
    }
    let prompt: Vec<u32> = (0..PROMPT as u32).map(|i| 3 + (i * 13) % 250).collect();
    let blocks = PROMPT.div_ceil(4);
    let own: Vec<u32> = (40..40 + blocks as u32).collect();
    if let Ok(ids) = std::env::var("CLEAVE_LINK_CHILD") {
        let mut gpu = tiny_gpu_on(gpu_count().min(2) - 1);
        let block_bytes = 2 * gpu.kv_shape().block_floats();
        let endpoint = gpu.kv_link_endpoint().unwrap().with_staging_bytes(3 * block_bytes);
        let link = endpoint.connect("test-link", &unhex(&ids), true).unwrap();
        assert!(link.device_bytes() > 0, "a link takes device memory");
        let pairs: Vec<(u32, u32)> = own.iter().copied().zip(DEST).collect();
        prefill_into_peer(&mut gpu, &prompt[..PROMPT - 1], &own, &link, &pairs);
        link.abort("the test is done with it");
        assert!(link.is_aborted());
        let refused = refused_copy(&mut gpu, &prompt[..4], own[0], &link, pairs[0]);
        assert!(refused.contains("aborted"), "{refused}");
        return;
    }
    let mut gpu = tiny_gpu_on(0);
    let block_bytes = 2 * gpu.kv_shape().block_floats();
    let endpoint = gpu
        .kv_link_endpoint()
        .expect("a whole-model CUDA backend has NCCL links")
        .with_staging_bytes(3 * block_bytes);
    let id = endpoint.new_link_id().unwrap();
    let env = sender_env(("CLEAVE_LINK_TEST", "1".to_owned()), std::slice::from_ref(&id));
    let sender = std::thread::spawn(move || {
        run_child(
            "nccl_link::kv_sent_over_an_nccl_link_gives_the_local_prefill_logits",
            &env,
        )
    });
    let link = endpoint.connect("test-link", &id, false).unwrap();
    // Refused before anything moves: a destination block outside the pool.
    assert!(gpu.receive_kv(&link, &[1 << 30]).is_err());
    let copies = gpu.receive_kv(&link, &DEST).unwrap();
    assert_eq!(copies.len(), gpu.kv_shape().n_layers);
    for copy in copies {
        copy.wait().unwrap();
    }
    sender.join().unwrap();
    assert_landed_kv_gives_local_logits(&mut gpu, &prompt, &DEST, &own, "an NCCL link");
    eprintln!(
        "NCCL link ({}): {blocks} blocks × {} layers in chunks of 3 blocks; logits match local prefill",
        if gpu_count() < 2 {
            "one GPU, two hosts"
        } else {
            "two GPUs"
        },
        gpu.kv_shape().n_layers
    );
}

/// With `CLEAVE_IPC_BENCH=llama-3.1-8b` (a synthetic shape): the KV of a 4,096-token prompt sent over an NCCL link
/// (GB/s) against NCCL's own send/receive of as many bytes over the same link, prefill of 1k/4k/16k-token prompts
/// alone against the same prefill sending each layer as it is computed, and the device memory each link takes on
/// each side. The sender is a child process on GPU 1; on a one-GPU machine it shares GPU 0, posing as another host
/// (`NCCL_HOSTID`), so the link crosses over sockets as between two hosts.
#[test]
fn nccl_link_bench_when_asked() {
    let Ok(shape) = std::env::var("CLEAVE_IPC_BENCH") else {
        return;
    };
    if skip() || !cleave_comm::nccl_available() {
        eprintln!("skipped: NCCL wanted");
        return;
    }
    // Further links after the first, each with a cap on NCCL's CTAs (0: NCCL's choice): CLEAVE_LINK_CTAS, e.g.
    // "0,0,16,8,4"; each moves a 4k-token KV and reports its device memory.
    let caps: Vec<usize> = std::env::var("CLEAVE_LINK_CTAS").map_or_else(
        |_| vec![0; 3],
        |list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
    );
    let bench = TransportBench::new(&shape);
    let (block_size, per_token) = (bench.block_size, bench.per_token);
    let gpus = gpu_count();
    let mib = |b: usize| format!("{:.1}", b as f64 / (1 << 20) as f64);
    if let Ok(ids) = std::env::var("CLEAVE_LINK_CHILD") {
        let ids: Vec<Vec<u8>> = ids.split(',').map(unhex).collect();
        let mut gpu = bench.gpu(gpus.min(2) - 1, 16384 + 512);
        let endpoint = gpu.kv_link_endpoint().unwrap();
        let link = endpoint.connect("bench-link", &ids[0], true).unwrap();
        let raw = link.link_bandwidth(4096 * per_token, 5).unwrap();
        eprintln!("NCCL send/recv over the link: {:.0} GB/s", raw / 1e9);
        sender_bench(&mut gpu, &link, "NCCL link", &bench);
        let mut sizes = vec![mib(link.device_bytes())];
        let mut extra = Vec::new();
        for (i, (id, &ctas)) in ids[1..].iter().zip(&caps).enumerate() {
            let link = endpoint
                .clone()
                .with_max_ctas(ctas)
                .connect(&format!("bench-extra-{i}"), id, true);
            let link = link.unwrap();
            let gb_s = gpu.peer_copy_bandwidth(&link, 4096 / block_size, 5).unwrap();
            eprintln!(
                "NCCL link {}: KV of 4096 tokens at {:.0} GB/s, sender side {} MiB",
                cap_name(ctas),
                gb_s / 1e9,
                mib(link.device_bytes())
            );
            sizes.push(mib(link.device_bytes()));
            extra.push(link);
        }
        eprintln!("sender side: device MiB per link {sizes:?}");
        return;
    }
    let mut gpu = bench.gpu(0, 16384 + 512);
    let endpoint = gpu.kv_link_endpoint().unwrap();
    let ids: Vec<Vec<u8>> = (0..=caps.len()).map(|_| endpoint.new_link_id().unwrap()).collect();
    let env = sender_env(("CLEAVE_IPC_BENCH", shape.clone()), &ids);
    let sender = std::thread::spawn(move || run_child("nccl_link::nccl_link_bench_when_asked", &env));
    let link = endpoint.connect("bench-link", &ids[0], false).unwrap();
    link.link_bandwidth(4096 * per_token, 5).unwrap();
    // peer_copy_bandwidth: a warm-up and five timed transfers of 4k tokens; prefill_ms: a warm-up and three timed
    // runs, with and without sending.
    for _ in 0..6 {
        receive_on(&mut gpu, &link, 4096);
    }
    for &n in &BENCH_PROMPTS {
        for _ in 0..4 {
            receive_on(&mut gpu, &link, n);
        }
    }
    let mut sizes = vec![link.device_bytes()];
    let mut extra = Vec::new();
    for (i, (id, &ctas)) in ids[1..].iter().zip(&caps).enumerate() {
        let link = endpoint
            .clone()
            .with_max_ctas(ctas)
            .connect(&format!("bench-extra-{i}"), id, false);
        let link = link.unwrap();
        for _ in 0..6 {
            receive_on(&mut gpu, &link, 4096);
        }
        eprintln!(
            "NCCL link {}: receiver side {} MiB",
            cap_name(ctas),
            mib(link.device_bytes())
        );
        sizes.push(link.device_bytes());
        extra.push(link);
    }
    sender.join().unwrap();
    // The first link is made while the other process loads its model (on a shared GPU that shows up here too):
    // the extra links with NCCL's own channel count give the per-link cost.
    let default: Vec<usize> = sizes[1..]
        .iter()
        .zip(&caps)
        .filter(|(_, c)| **c == 0)
        .map(|(b, _)| *b)
        .collect();
    let mean = default.iter().sum::<usize>() as f64 / default.len().max(1) as f64;
    eprintln!(
        "receiver side: device MiB per link {:?}; ≈{:.0} more links per 8 GiB",
        sizes.iter().map(|&b| mib(b)).collect::<Vec<_>>(),
        (8u64 << 30) as f64 / mean.max(1.0)
    );
}

/// Receives the KV of an `n`-token prompt over `link` into blocks `0..` of `gpu`'s pool and waits for it.
fn receive_on(gpu: &mut CudaBackend, link: &cleave_engine::PeerKv, n: usize) {
    let block_size = gpu.kv_shape().block_size;
    let blocks: Vec<u32> = (0..n.div_ceil(block_size) as u32).collect();
    for copy in gpu.receive_kv(link, &blocks).unwrap() {
        copy.wait().unwrap();
    }
}

/// How a link's CTA cap reads in the bench's report.
fn cap_name(ctas: usize) -> String {
    match ctas {
        0 => "(NCCL's channels)".to_owned(),
        n => format!("(at most {n} CTAs)"),
    }
}
