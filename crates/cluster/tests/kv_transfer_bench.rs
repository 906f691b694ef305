//! Loopback throughput of the KV transfer against raw TCP, for a 2k-token prompt of a Llama-3.1-8B-like layout
//! (32 layers, 8 KV heads, head_dim 128, block 16, f32: 128 blocks, 16 MiB a layer, 512 MiB in all).
//!
//! Run: `cargo test --release -p cleave-cluster --test kv_transfer_bench -- --ignored --nocapture`

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::time::{Duration, Instant};

use cleave_cluster::kv_transfer::{
    KvDtype, KvLayout, KvReceiver, KvSender, KvTransferHeader, ReceiverConfig, TransferMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PROMPT_TOKENS: u32 = 2048;
const ROUNDS: usize = 5;

fn layout() -> KvLayout {
    KvLayout {
        model_id: "llama-3.1-8b".to_owned(),
        dtype: KvDtype::F32,
        block_size: 16,
        n_layers: 32,
        kv_heads: 0..8,
        head_dim: 128,
    }
}

fn gb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e9
}

/// One whole transfer, timed from connect until the receiver has every layer and the sender its confirmation.
/// With `recycle`, the consumer hands each layer's buffers back as the engine's sink path does.
async fn time_kv_transfer(keys: &[f32], values: &[f32], recycle: bool) -> Duration {
    let n_blocks = PROMPT_TOKENS / layout().block_size;
    let mut config = ReceiverConfig::new(layout(), n_blocks);
    config.transfer_deadline = Duration::from_secs(120);
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config).await.unwrap();
    let header = KvTransferHeader {
        transfer_id: "bench".to_owned(),
        layout: layout(),
        dest_blocks: (0..n_blocks).collect(),
        mode: TransferMode::Payload,
        link: String::new(),
    };
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let Some(Ok(mut transfer)) = receiver.next().await else {
            panic!("no transfer")
        };
        let mut floats = 0;
        while let Some(payload) = transfer.next_layer().await {
            floats += payload.keys.len() + payload.values.len();
            if recycle {
                transfer.recycle(payload);
            }
        }
        (floats, transfer.outcome().await)
    });
    let mut sender = KvSender::connect(addr, header).await.unwrap();
    for layer in 0..layout().n_layers {
        sender.send_layer(layer, keys, values).await.unwrap();
    }
    sender.finish().await.unwrap();
    let (floats, outcome) = consuming.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(floats, 2 * keys.len() * layout().n_layers as usize, "{outcome:?}");
    elapsed
}

/// The same bytes through a plain socket, in the same per-layer chunks. With `fresh_buffers` each chunk is read
/// into a newly allocated buffer, as the KV receiver must do to hand layers on; without, into one reused 1 MiB
/// buffer (the ceiling of the socket itself).
async fn time_raw_tcp(chunk: &[u8], n_chunks: usize, fresh_buffers: bool) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total = chunk.len() * n_chunks;
    let started = Instant::now();
    let reading = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        if fresh_buffers {
            for _ in 0..n_chunks {
                let mut buf = vec![0u8; total / n_chunks];
                stream.read_exact(&mut buf).await.unwrap();
                std::hint::black_box(&buf);
            }
            return;
        }
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0;
        while read < total {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "raw stream ended early");
            read += n;
        }
    });
    let mut stream = TcpStream::connect(addr).await.unwrap();
    for _ in 0..n_chunks {
        stream.write_all(chunk).await.unwrap();
    }
    stream.flush().await.unwrap();
    reading.await.unwrap();
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn kv_transfer_vs_raw_tcp_loopback() {
    let n_blocks = (PROMPT_TOKENS / layout().block_size) as usize;
    let layer_floats = n_blocks * layout().block_floats();
    let keys: Vec<f32> = (0..layer_floats).map(|i| i as f32).collect();
    let values: Vec<f32> = (0..layer_floats).map(|i| -(i as f32)).collect();
    let n_layers = layout().n_layers as usize;
    let payload_bytes = 2 * layer_floats * 4 * n_layers;
    let chunk = vec![0x5au8; 2 * layer_floats * 4];

    let mut kv_best = Duration::MAX;
    let mut kv_recycled_best = Duration::MAX;
    let mut raw_best = Duration::MAX;
    let mut raw_fresh_best = Duration::MAX;
    for _ in 0..ROUNDS {
        kv_best = kv_best.min(time_kv_transfer(&keys, &values, false).await);
        kv_recycled_best = kv_recycled_best.min(time_kv_transfer(&keys, &values, true).await);
        raw_best = raw_best.min(time_raw_tcp(&chunk, n_layers, false).await);
        raw_fresh_best = raw_fresh_best.min(time_raw_tcp(&chunk, n_layers, true).await);
    }
    eprintln!(
        "kv_transfer bench: {PROMPT_TOKENS} tokens, {n_blocks} blocks x {n_layers} layers, {:.1} MiB, best of {ROUNDS}",
        payload_bytes as f64 / (1 << 20) as f64
    );
    eprintln!(
        "  kv transfer, fresh layer buffers:  {:>8.2?}  {:.2} GB/s",
        kv_best,
        gb_per_s(payload_bytes, kv_best)
    );
    eprintln!(
        "  kv transfer, recycled buffers:     {:>8.2?}  {:.2} GB/s",
        kv_recycled_best,
        gb_per_s(payload_bytes, kv_recycled_best)
    );
    eprintln!(
        "  raw tcp, one reused 1 MiB buffer:  {:>8.2?}  {:.2} GB/s",
        raw_best,
        gb_per_s(payload_bytes, raw_best)
    );
    eprintln!(
        "  raw tcp, fresh buffer per layer:   {:>8.2?}  {:.2} GB/s",
        raw_fresh_best,
        gb_per_s(payload_bytes, raw_fresh_best)
    );
}
