//! KV transfer over real loopback sockets: bit-exact round trips, refusals, truncation, stalls, garbage and
//! concurrency. Raw-socket tests build frames from the wire format documented in `kv_transfer`'s module doc.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cleave_cluster::kv_transfer::{
    IncomingTransfer, KvDtype, KvLayout, KvReceiver, KvSender, KvSink, KvTransferError, KvTransferHeader,
    ReceiverConfig, TransferMode, TransferOutcome,
};
use cleave_cluster::tls::ClusterTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const N_LAYERS: u32 = 6;
const POOL_BLOCKS: u32 = 64;

fn layout() -> KvLayout {
    KvLayout {
        model_id: "test-llama".to_owned(),
        dtype: KvDtype::F32,
        block_size: 4,
        n_layers: N_LAYERS,
        kv_heads: 0..2,
        head_dim: 8,
    }
}

fn config() -> ReceiverConfig {
    let mut config = ReceiverConfig::new(layout(), POOL_BLOCKS);
    config.read_timeout = Duration::from_secs(5);
    config.transfer_deadline = Duration::from_secs(5);
    config
}

fn header(transfer_id: &str, dest_blocks: Vec<u32>) -> KvTransferHeader {
    KvTransferHeader {
        transfer_id: transfer_id.to_owned(),
        layout: layout(),
        dest_blocks,
        mode: TransferMode::Payload,
        link: String::new(),
    }
}

/// Arbitrary bit patterns (NaN payloads, subnormals, -0.0 included), so equality of bits proves nothing was
/// converted on the way.
fn pattern(seed: u64, layer: u32, is_value: bool, n: usize) -> Vec<f32> {
    let mut state = seed ^ (u64::from(layer) << 32) ^ u64::from(is_value) ^ 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f32::from_bits(state as u32)
        })
        .collect()
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

async fn send_all(addr: std::net::SocketAddr, header: KvTransferHeader, seed: u64) -> Result<(), KvTransferError> {
    let n = header.layer_floats();
    let mut sender = KvSender::connect(addr, header).await?;
    for layer in 0..N_LAYERS {
        sender
            .send_layer(layer, &pattern(seed, layer, false, n), &pattern(seed, layer, true, n))
            .await?;
    }
    sender.finish().await
}

async fn receive_and_check(mut transfer: IncomingTransfer, seed: u64) -> TransferOutcome {
    let n = transfer.header().layer_floats();
    let mut layers = Vec::new();
    while let Some(payload) = transfer.next_layer().await {
        assert_eq!(
            bits(&payload.keys),
            bits(&pattern(seed, payload.layer, false, n)),
            "keys of {}",
            payload.layer
        );
        assert_eq!(
            bits(&payload.values),
            bits(&pattern(seed, payload.layer, true, n)),
            "values of {}",
            payload.layer
        );
        layers.push(payload.layer);
        // Later layers are then read into these buffers; the checks above prove nothing stale survives.
        transfer.recycle(payload);
    }
    assert_eq!(layers, (0..N_LAYERS).collect::<Vec<_>>());
    transfer.outcome().await
}

async fn accept(receiver: &mut KvReceiver) -> IncomingTransfer {
    match receiver.next().await {
        Some(Ok(transfer)) => transfer,
        other => panic!("expected a transfer, got {other:?}"),
    }
}

#[tokio::test]
async fn multi_layer_multi_block_round_trip_is_bit_exact() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let h = header("req-1", vec![7, 3, 40, 0, 63]);
    let sending = tokio::spawn(send_all(addr, h.clone(), 1));
    let transfer = accept(&mut receiver).await;
    assert_eq!(transfer.header(), &h);
    assert!(matches!(
        receive_and_check(transfer, 1).await,
        TransferOutcome::Complete
    ));
    sending.await.unwrap().unwrap();
}

/// Key and value bits per (layer, destination block).
type BlockBits = HashMap<(u32, u32), (Vec<u32>, Vec<u32>)>;

#[derive(Default)]
struct RecordingSink {
    layers: Mutex<BlockBits>,
}

impl KvSink for RecordingSink {
    type Error = std::io::Error;

    fn write_layer(
        &self,
        _transfer_id: &str,
        layer: u32,
        dest_blocks: &[u32],
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), std::io::Error> {
        let block = keys.len() / dest_blocks.len();
        let mut layers = self.layers.lock().unwrap();
        for (i, &dest) in dest_blocks.iter().enumerate() {
            let range = i * block..(i + 1) * block;
            layers.insert((layer, dest), (bits(&keys[range.clone()]), bits(&values[range])));
        }
        Ok(())
    }
}

#[tokio::test]
async fn write_into_a_sink_scatters_blocks_to_their_destinations() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let dest = vec![5, 9];
    let sending = tokio::spawn(send_all(addr, header("req-sink", dest.clone()), 2));
    let sink = RecordingSink::default();
    assert!(matches!(
        accept(&mut receiver).await.write_into(&sink).await,
        TransferOutcome::Complete
    ));
    sending.await.unwrap().unwrap();

    let block = layout().block_floats();
    let layers = sink.layers.lock().unwrap();
    assert_eq!(layers.len(), N_LAYERS as usize * dest.len());
    for layer in 0..N_LAYERS {
        let keys = pattern(2, layer, false, block * dest.len());
        let (got_keys, _) = &layers[&(layer, 9)];
        assert_eq!(got_keys, &bits(&keys[block..]));
    }
}

#[tokio::test]
async fn layout_mismatch_is_refused_naming_the_field() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let mut h = header("req-mismatch", vec![1]);
    h.layout.block_size = 32;
    let err = KvSender::connect(addr, h).await.unwrap_err();
    let expected = "block_size 32 does not match this worker's 4";
    assert!(err.to_string().contains(expected), "sender saw: {err}");

    match receiver.next().await {
        Some(Err(rejected)) => {
            assert!(matches!(
                rejected.error,
                KvTransferError::LayoutMismatch {
                    field: "block_size",
                    ..
                }
            ));
            assert!(rejected.error.to_string().contains(expected));
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    let mut h = header("req-pool", vec![POOL_BLOCKS]);
    h.layout.model_id = "other-model".to_owned();
    let err = KvSender::connect(addr, h).await.unwrap_err();
    assert!(
        err.to_string().contains("model_id \"other-model\" does not match"),
        "{err}"
    );
}

#[tokio::test]
async fn destination_block_outside_the_pool_is_refused() {
    let (addr, _receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let err = KvSender::connect(addr, header("req-pool", vec![POOL_BLOCKS]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("dest_blocks"), "{err}");
}

#[tokio::test]
async fn sender_dropped_after_two_layers_fails_with_the_layers_received() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let h = header("req-killed", vec![2, 4, 6]);
    let n = h.layer_floats();
    let mut sender = KvSender::connect(addr, h).await.unwrap();
    let mut transfer = accept(&mut receiver).await;
    let started = Instant::now();
    for layer in 0..2 {
        sender
            .send_layer(layer, &pattern(3, layer, false, n), &pattern(3, layer, true, n))
            .await
            .unwrap();
    }
    drop(sender);

    let mut arrived = Vec::new();
    while let Some(payload) = transfer.next_layer().await {
        arrived.push(payload.layer);
    }
    assert_eq!(arrived, vec![0, 1]);
    match transfer.outcome().await {
        TransferOutcome::Failed {
            error: KvTransferError::ConnectionClosed { .. },
            layers_received,
        } => {
            assert_eq!(layers_received, vec![0, 1]);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(started.elapsed() < config().transfer_deadline);
}

#[tokio::test]
async fn stalled_sender_fails_by_the_deadline() {
    let mut config = config();
    config.transfer_deadline = Duration::from_millis(700);
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config).await.unwrap();
    let h = header("req-stalled", vec![1]);
    let n = h.layer_floats();
    let mut sender = KvSender::connect(addr, h).await.unwrap();
    let started = Instant::now();
    for layer in 0..2 {
        sender
            .send_layer(layer, &pattern(4, layer, false, n), &pattern(4, layer, true, n))
            .await
            .unwrap();
    }
    // The sender stays connected but silent.
    let transfer = accept(&mut receiver).await;
    let outcome = receive_rest(transfer).await;
    let elapsed = started.elapsed();
    match outcome {
        TransferOutcome::Failed {
            error: KvTransferError::DeadlineExceeded { .. },
            layers_received,
        } => {
            assert_eq!(layers_received, vec![0, 1]);
        }
        other => panic!("expected a deadline failure, got {other:?}"),
    }
    assert!(elapsed < Duration::from_millis(2000), "took {elapsed:?}");
    drop(sender);
}

async fn receive_rest(mut transfer: IncomingTransfer) -> TransferOutcome {
    while transfer.next_layer().await.is_some() {}
    transfer.outcome().await
}

#[tokio::test]
async fn sender_abort_reaches_the_receiver_with_its_reason() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let h = header("req-abort", vec![8]);
    let n = h.layer_floats();
    let mut sender = KvSender::connect(addr, h).await.unwrap();
    sender
        .send_layer(0, &pattern(5, 0, false, n), &pattern(5, 0, true, n))
        .await
        .unwrap();
    sender.abort("client went away").await.unwrap();
    match receive_rest(accept(&mut receiver).await).await {
        TransferOutcome::Aborted {
            reason,
            layers_received,
        } => {
            assert_eq!(reason, "client went away");
            assert_eq!(layers_received, vec![0]);
        }
        other => panic!("expected an abort, got {other:?}"),
    }
}

#[tokio::test]
async fn sender_learns_why_the_receiver_stopped() {
    // Layers of 8 MiB a side, so the sender's writes outrun the socket buffers and fail once the receiver closes.
    let big = KvLayout {
        head_dim: 4096,
        ..layout()
    };
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", ReceiverConfig::new(big.clone(), POOL_BLOCKS))
        .await
        .unwrap();
    let h = KvTransferHeader {
        transfer_id: "req-dropped-consumer".to_owned(),
        layout: big,
        dest_blocks: (0..POOL_BLOCKS).collect(),
        mode: TransferMode::Payload,
        link: String::new(),
    };
    let n = h.layer_floats();
    let mut sender = KvSender::connect(addr, h).await.unwrap();
    let mut transfer = accept(&mut receiver).await;
    let (keys, values) = (pattern(8, 0, false, n), pattern(8, 0, true, n));
    sender.send_layer(0, &keys, &values).await.unwrap();
    assert_eq!(transfer.next_layer().await.unwrap().layer, 0);
    drop(transfer);

    let mut result = Ok(());
    for layer in 1..N_LAYERS {
        result = sender.send_layer(layer, &keys, &values).await;
        if result.is_err() {
            break;
        }
    }
    let err = match result {
        Ok(()) => sender.finish().await.unwrap_err(),
        Err(err) => err,
    };
    assert!(
        matches!(&err, KvTransferError::PeerAborted { reason } if reason.contains("stopped consuming")),
        "{err}"
    );
}

#[tokio::test]
async fn sender_rejects_bad_calls_before_writing() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let h = header("req-bad-calls", vec![1, 2]);
    let n = h.layer_floats();
    let mut sender = KvSender::connect(addr, h).await.unwrap();
    let (keys, values) = (pattern(6, 0, false, n), pattern(6, 0, true, n));
    let err = sender.send_layer(0, &keys[1..], &values).await.unwrap_err();
    assert!(
        matches!(err, KvTransferError::PayloadLength { field: "keys", .. }),
        "{err}"
    );
    let err = sender.send_layer(N_LAYERS, &keys, &values).await.unwrap_err();
    assert!(matches!(err, KvTransferError::InvalidLayer { .. }), "{err}");
    sender.send_layer(0, &keys, &values).await.unwrap();
    let err = sender.send_layer(0, &keys, &values).await.unwrap_err();
    assert!(err.to_string().contains("already sent"), "{err}");
    let err = sender.finish().await.unwrap_err();
    assert!(
        matches!(
            err,
            KvTransferError::Incomplete {
                missing: 5,
                first_missing: 1,
                ..
            }
        ),
        "{err}"
    );
    match receive_rest(accept(&mut receiver).await).await {
        TransferOutcome::Failed { layers_received, .. } => assert_eq!(layers_received, vec![0]),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A Hello frame for `header`, built from the documented wire format rather than the crate's encoder.
fn hello_frame(header: &KvTransferHeader) -> Vec<u8> {
    let mut body = b"CLKV".to_vec();
    body.extend_from_slice(&3u16.to_le_bytes());
    for id in [&header.transfer_id, &header.layout.model_id, &header.link] {
        body.extend_from_slice(&(id.len() as u16).to_le_bytes());
        body.extend_from_slice(id.as_bytes());
    }
    body.push(0); // dtype f32
    body.push(0); // mode payload
    let l = &header.layout;
    for field in [l.block_size, l.n_layers, l.kv_heads.start, l.kv_heads.end, l.head_dim] {
        body.extend_from_slice(&field.to_le_bytes());
    }
    body.extend_from_slice(&(header.dest_blocks.len() as u32).to_le_bytes());
    for block in &header.dest_blocks {
        body.extend_from_slice(&block.to_le_bytes());
    }
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Reads the frame the receiver answers with; returns its kind.
async fn reply_kind(stream: &mut TcpStream) -> u8 {
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).await.unwrap();
    head[0]
}

#[tokio::test]
async fn garbage_bytes_are_refused_with_an_error() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();

    let mut stream = TcpStream::connect(addr).await.unwrap();
    let garbage: Vec<u8> = pattern(7, 0, false, 256).iter().flat_map(|v| v.to_le_bytes()).collect();
    stream.write_all(&garbage).await.unwrap();
    assert_eq!(reply_kind(&mut stream).await, 4, "expected an Abort frame");
    assert!(matches!(receiver.next().await, Some(Err(_))));

    // A Hello kind with a 4 GiB length must be refused before anything is allocated.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[1, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(reply_kind(&mut stream).await, 4);
    match receiver.next().await {
        Some(Err(rejected)) => assert!(matches!(rejected.error, KvTransferError::BadFrameLength { .. })),
        other => panic!("expected a rejection, got {other:?}"),
    }

    // A valid Hello followed by a Layer frame whose length disagrees with the header.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&hello_frame(&header("req-garbled", vec![3])))
        .await
        .unwrap();
    assert_eq!(reply_kind(&mut stream).await, 5, "expected Accept");
    // The receiver may close as soon as it has read the bad length, so later writes may fail.
    let _ = stream.write_all(&[2, 0xf0, 0xff, 0xff, 0x7f]).await;
    let _ = stream.write_all(&garbage).await;
    match receive_rest(accept(&mut receiver).await).await {
        TransferOutcome::Failed {
            error: KvTransferError::BadFrameLength { kind: "Layer", .. },
            layers_received,
        } => {
            assert!(layers_received.is_empty());
        }
        other => panic!("expected a frame-length failure, got {other:?}"),
    }

    // A truncated Layer frame: the right length, then the connection closes halfway through the payload.
    let h = header("req-truncated", vec![3]);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&hello_frame(&h)).await.unwrap();
    assert_eq!(reply_kind(&mut stream).await, 5);
    let body_len = 8 + 2 * h.layer_floats() as u32 * 4;
    let mut frame = vec![2];
    frame.extend_from_slice(&body_len.to_le_bytes());
    frame.extend_from_slice(&0u32.to_le_bytes());
    frame.extend_from_slice(&1u32.to_le_bytes());
    frame.extend_from_slice(&garbage[..h.layer_floats()]);
    stream.write_all(&frame).await.unwrap();
    drop(stream);
    match receive_rest(accept(&mut receiver).await).await {
        TransferOutcome::Failed {
            error: KvTransferError::ConnectionClosed { .. },
            layers_received,
        } => {
            assert!(layers_received.is_empty());
        }
        other => panic!("expected a truncation failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_transfers_share_one_listener() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let senders: Vec<_> = (0..16u32)
        .map(|i| {
            let dest = (0..4).map(|b| i * 4 + b).collect();
            tokio::spawn(send_all(addr, header(&format!("req-{i}"), dest), u64::from(i) + 100))
        })
        .collect();
    let mut receivers = Vec::new();
    for _ in 0..16 {
        let transfer = accept(&mut receiver).await;
        let seed: u64 = transfer
            .header()
            .transfer_id
            .trim_start_matches("req-")
            .parse::<u64>()
            .unwrap()
            + 100;
        receivers.push(tokio::spawn(receive_and_check(transfer, seed)));
    }
    for handle in receivers {
        assert!(matches!(handle.await.unwrap(), TransferOutcome::Complete));
    }
    for handle in senders {
        handle.await.unwrap().unwrap();
    }
}

fn cluster_tls(ca: &cleave_testkit::TestCa, member: &cleave_testkit::LeafFiles) -> ClusterTls {
    ClusterTls::from_flags(Some(&ca.ca_path()), Some(&member.cert), Some(&member.key), None)
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_transfer_over_mutual_tls_is_bit_exact_and_a_stranger_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = cleave_testkit::TestCa::new(dir.path(), "cluster").unwrap();
    let rogue = cleave_testkit::TestCa::new(dir.path(), "rogue").unwrap();
    let mut config = config();
    config.tls = Some(cluster_tls(&ca, &ca.leaf("decode").unwrap()));
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", config).await.unwrap();
    let sender_tls = cluster_tls(&ca, &ca.leaf("prefill").unwrap());

    let h = header("tls-1", vec![5, 9, 1]);
    let sending = tokio::spawn({
        let (h, tls) = (h.clone(), sender_tls.clone());
        async move {
            let n = h.layer_floats();
            let mut sender = KvSender::connect_with(&addr.to_string(), h, Duration::from_secs(5), Some(&tls)).await?;
            for layer in 0..N_LAYERS {
                sender
                    .send_layer(layer, &pattern(3, layer, false, n), &pattern(3, layer, true, n))
                    .await?;
            }
            sender.finish().await
        }
    });
    let transfer = accept(&mut receiver).await;
    assert_eq!(transfer.header(), &h);
    assert!(matches!(
        receive_and_check(transfer, 3).await,
        TransferOutcome::Complete
    ));
    sending.await.unwrap().unwrap();

    // A sender whose certificate comes from another CA: the handshake fails and the receiver reports it.
    let stranger = cluster_tls(&ca, &rogue.leaf("stranger").unwrap());
    let refused = KvSender::connect_with(
        &addr.to_string(),
        header("tls-2", vec![0]),
        Duration::from_secs(5),
        Some(&stranger),
    )
    .await;
    assert!(
        refused.is_err(),
        "a sender with a certificate from another CA was accepted"
    );
    match tokio::time::timeout(Duration::from_secs(5), receiver.next()).await {
        Ok(Some(Err(rejected))) => assert!(rejected.error.to_string().contains("TLS"), "{}", rejected.error),
        other => panic!("expected the stranger's connection to be refused, got {other:?}"),
    }
    // A plain-text sender gets nowhere either.
    let plain = KvSender::connect_with(
        &addr.to_string(),
        header("tls-3", vec![0]),
        Duration::from_secs(5),
        None,
    )
    .await;
    assert!(plain.is_err(), "a plain-text sender was accepted by a TLS receiver");
}

fn direct_header(transfer_id: &str, dest_blocks: Vec<u32>) -> KvTransferHeader {
    KvTransferHeader {
        layout: KvLayout {
            dtype: KvDtype::Bf16,
            ..layout()
        },
        mode: TransferMode::Direct,
        link: String::new(),
        ..header(transfer_id, dest_blocks)
    }
}

fn direct_config() -> ReceiverConfig {
    ReceiverConfig {
        direct: Some(KvDtype::Bf16),
        ..config()
    }
}

#[tokio::test]
async fn a_direct_transfer_is_granted_the_pool_and_reports_each_layer_landed() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", direct_config()).await.unwrap();
    let descriptor: Vec<u8> = (0..=255u8).cycle().take(4000).collect();
    let expected = descriptor.clone();
    let sending = tokio::spawn(async move {
        let mut sender = KvSender::connect(addr, direct_header("req-direct", vec![5, 1, 9])).await?;
        assert_eq!(
            sender.grant(),
            Some(&expected[..]),
            "the sender gets the receiver's descriptor verbatim"
        );
        let refused = sender.send_layer(0, &[], &[]).await.unwrap_err();
        assert!(refused.to_string().contains("direct"), "{refused}");
        for layer in (0..N_LAYERS).rev() {
            sender.landed(layer).await?;
        }
        assert!(sender.landed(2).await.unwrap_err().to_string().contains("already sent"));
        sender.finish().await
    });
    let mut transfer = accept(&mut receiver).await;
    assert_eq!(transfer.header().mode, TransferMode::Direct);
    assert_eq!(transfer.header().dest_blocks, vec![5, 1, 9]);
    transfer.grant(descriptor).unwrap();
    assert!(transfer.grant(vec![1]).is_err(), "a transfer is granted once");
    let mut landed = Vec::new();
    while let Some(layer) = transfer.next_layer().await {
        assert!(
            layer.keys.is_empty() && layer.values.is_empty(),
            "a landed layer carries no payload"
        );
        landed.push(layer.layer);
    }
    assert_eq!(landed, (0..N_LAYERS).rev().collect::<Vec<_>>());
    assert!(matches!(transfer.outcome().await, TransferOutcome::Complete));
    sending.await.unwrap().unwrap();
}

#[tokio::test]
async fn direct_writes_are_refused_where_the_pool_is_not_shared_or_not_granted() {
    // A worker that shares no pool refuses the header, naming the mode.
    let (addr, _receiver) = KvReceiver::bind("127.0.0.1:0", config()).await.unwrap();
    let err = KvSender::connect(addr, direct_header("req-no-direct", vec![1]))
        .await
        .unwrap_err();
    assert!(matches!(err, KvTransferError::PeerAborted { .. }), "{err}");
    assert!(err.to_string().contains("mode"), "{err}");

    // A direct header must name the pool's element type.
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", direct_config()).await.unwrap();
    let mut f32_direct = direct_header("req-f32", vec![1]);
    f32_direct.layout.dtype = KvDtype::F32;
    let err = KvSender::connect(addr, f32_direct).await.unwrap_err();
    assert!(err.to_string().contains("dtype"), "{err}");

    // A consumer that drops the transfer without granting it leaves the sender nothing to write into.
    let connecting = tokio::spawn(KvSender::connect(addr, direct_header("req-ungranted", vec![1])));
    let transfer = loop {
        match receiver.next().await.unwrap() {
            Ok(transfer) => break transfer,
            Err(_) => continue, // the refused f32 header above
        }
    };
    drop(transfer);
    let err = connecting.await.unwrap().unwrap_err();
    assert!(matches!(err, KvTransferError::PeerAborted { .. }), "{err}");

    // A payload transfer is never granted a pool.
    let connecting = tokio::spawn(send_all(addr, header("req-payload", vec![2]), 3));
    let mut transfer = accept(&mut receiver).await;
    assert!(transfer.grant(vec![0; 8]).is_err());
    assert!(matches!(
        receive_and_check(transfer, 3).await,
        TransferOutcome::Complete
    ));
    connecting.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_direct_sender_that_dies_before_every_layer_landed_fails_the_transfer() {
    let (addr, mut receiver) = KvReceiver::bind("127.0.0.1:0", direct_config()).await.unwrap();
    let sending = tokio::spawn(async move {
        let mut sender = KvSender::connect(addr, direct_header("req-dies", vec![3, 4]))
            .await
            .unwrap();
        sender.landed(0).await.unwrap();
        sender.landed(1).await.unwrap();
        // Dropped here: the connection closes without End.
    });
    let mut transfer = accept(&mut receiver).await;
    transfer.grant(vec![7; 16]).unwrap();
    sending.await.unwrap();
    match receive_rest(transfer).await {
        TransferOutcome::Failed { layers_received, .. } => assert_eq!(layers_received, vec![0, 1]),
        other => panic!("expected a failure, got {other:?}"),
    }
}
