//! Loopback throughput of the KV transfer against raw TCP, for a 2k-token prompt of a Llama-3.1-8B-like layout
//! (32 layers, 8 KV heads, head_dim 128, block 16, f32: 128 blocks, 16 MiB a layer, 512 MiB in all).
//!
//! Run: `cargo test --release -p cleave-cluster --test kv_transfer_bench -- --ignored --nocapture`

use std::time::{Duration, Instant};

use cleave_cluster::kv_transfer::{KvDtype, KvLayout, KvReceiver, KvSender, KvTransferHeader, ReceiverConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PROMPT_TOKENS: u32 = 2048;
const ROUNDS: usize = 3;

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
async fn time_kv_transfer(keys: &[f32], values: &[f32]) -> Duration {
    let n_blocks = PROMPT_TOKENS / layout().block_size;
    let mut config = ReceiverConfig::new(layout(), n_blocks);
    config.transfer_deadline = Duration::from_secs(120);
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config).await.unwrap();
    let header =
        KvTransferHeader { transfer_id: "bench".to_owned(), layout: layout(), dest_blocks: (0..n_blocks).collect() };
    let started = Instant::now();
    let consuming = tokio::spawn(async move {
        let Some(Ok(mut transfer)) = receiver.next().await else { panic!("no transfer") };
        let mut floats = 0;
        while let Some(payload) = transfer.next_layer().await {
            floats += payload.keys.len() + payload.values.len();
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

/// The same bytes through a plain socket, in the same per-layer chunks, read into a reused buffer.
async fn time_raw_tcp(chunk: &[u8], n_chunks: usize) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let total = chunk.len() * n_chunks;
    let started = Instant::now();
    let reading = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
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
    let mut raw_best = Duration::MAX;
    for _ in 0..ROUNDS {
        kv_best = kv_best.min(time_kv_transfer(&keys, &values).await);
        raw_best = raw_best.min(time_raw_tcp(&chunk, n_layers).await);
    }
    eprintln!(
        "kv_transfer bench: {PROMPT_TOKENS} tokens, {n_blocks} blocks x {n_layers} layers, {:.1} MiB, best of {ROUNDS}",
        payload_bytes as f64 / (1 << 20) as f64
    );
    eprintln!("  kv transfer: {:>8.2?}  {:.2} GB/s", kv_best, gb_per_s(payload_bytes, kv_best));
    eprintln!("  raw tcp:     {:>8.2?}  {:.2} GB/s", raw_best, gb_per_s(payload_bytes, raw_best));
}
