//! The decode side of remote prefill: the KV-transfer listener, and the table of transfers this worker expects.
//!
//! A request that waits for remote KV registers its transfer id and destination blocks here ([`KvInbox::expect`])
//! before it asks a prefill worker to send. Each accepted connection is matched to its entry by transfer id; its
//! layers go to the engine thread as they arrive, and the transfer's outcome goes back to the waiting request.
//! Invariant: a connection that names an unknown transfer id or other blocks is dropped unread (the sender is told
//! the consumer is gone), so nothing but the expected request's own blocks is ever written. Every delivered
//! transfer is counted in `cleave_worker_kv_transfer*{direction="received"}`. Cost: one task per transfer; layer
//! payloads move to the engine thread without a copy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cleave_cluster::kv_transfer::{
    IncomingTransfer, KvDtype, KvLayout, KvReceiver, KvTransferError, ReceiverConfig, TransferOutcome,
};
use cleave_cluster::tls::ClusterTls;
use cleave_engine::Engine;
use cleave_telemetry::{KvDirection, KvTransferMetrics};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How an expected transfer ended: `Ok` once every layer was handed to the engine.
pub type TransferResult = Result<(), String>;

#[derive(Debug)]
struct Expected {
    request: u64,
    blocks: Arc<[u32]>,
    done: oneshot::Sender<TransferResult>,
}

type ExpectedTable = Arc<Mutex<HashMap<String, Expected>>>;

/// The KV layout of an engine, as a transfer header carries it.
pub fn engine_layout(engine: &Engine, model: &str) -> KvLayout {
    let shape = engine.kv_shape();
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    KvLayout {
        model_id: model.to_owned(),
        dtype: KvDtype::F32,
        block_size: u32_of(shape.block_size),
        n_layers: u32_of(shape.n_layers),
        kv_heads: 0..u32_of(shape.n_kv_heads),
        head_dim: u32_of(shape.head_dim),
    }
}

/// The listener and its table; dropping it closes the listener and fails every expected transfer.
#[derive(Debug)]
pub struct KvInbox {
    addr: String,
    /// Makes transfer ids unique across restarts of this worker.
    nonce: String,
    expected: ExpectedTable,
    accept: JoinHandle<()>,
}

impl Drop for KvInbox {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl KvInbox {
    /// Binds the KV listener at `listen` for `engine`'s layout. `advertise` is the address prefill workers dial
    /// (default: the bound address).
    pub async fn bind(
        listen: SocketAddr,
        advertise: Option<String>,
        engine: Arc<Engine>,
        model: &str,
    ) -> Result<KvInbox, KvTransferError> {
        KvInbox::bind_with_metrics(listen, advertise, engine, model, KvTransferMetrics::default(), None).await
    }

    /// [`KvInbox::bind`], counting the transfers it receives in `metrics`; with `tls` (the cluster's mutual TLS),
    /// only prefill workers presenting a certificate from the cluster CA can connect.
    pub async fn bind_with_metrics(
        listen: SocketAddr,
        advertise: Option<String>,
        engine: Arc<Engine>,
        model: &str,
        metrics: KvTransferMetrics,
        tls: Option<ClusterTls>,
    ) -> Result<KvInbox, KvTransferError> {
        let layout = engine_layout(&engine, model);
        let pool = u32::try_from(engine.kv_blocks()).unwrap_or(u32::MAX);
        let mut config = ReceiverConfig::new(layout, pool);
        config.tls = tls;
        let (bound, receiver) = KvReceiver::bind(listen, config).await?;
        let expected: ExpectedTable = Arc::default();
        let accept = tokio::spawn(accept_transfers(receiver, expected.clone(), engine, metrics));
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(KvInbox {
            addr: advertise.unwrap_or_else(|| bound.to_string()),
            nonce: format!("{:x}-{started:x}", std::process::id()),
            expected,
            accept,
        })
    }

    /// Where prefill workers send KV (`host:port`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A transfer id no other request of any worker process uses.
    pub fn transfer_id(&self, request: u64) -> String {
        format!("kv-{}-{request}", self.nonce)
    }

    /// Registers a transfer this worker is about to ask for. The returned guard resolves with its outcome; dropping
    /// the guard forgets the transfer, so a connection arriving later is refused.
    pub fn expect(&self, transfer_id: String, request: u64, blocks: Arc<[u32]>) -> ExpectedTransfer {
        let (done, outcome) = oneshot::channel();
        if let Ok(mut table) = self.expected.lock() {
            table.insert(transfer_id.clone(), Expected { request, blocks, done });
        }
        ExpectedTransfer {
            transfer_id,
            expected: self.expected.clone(),
            outcome,
        }
    }
}

/// A transfer this worker waits for.
#[derive(Debug)]
pub struct ExpectedTransfer {
    transfer_id: String,
    expected: ExpectedTable,
    outcome: oneshot::Receiver<TransferResult>,
}

impl ExpectedTransfer {
    /// Waits for the transfer to end. Its layers have reached the engine's command queue when this returns `Ok`.
    pub async fn outcome(&mut self) -> TransferResult {
        (&mut self.outcome)
            .await
            .unwrap_or_else(|_| Err("the KV listener stopped".to_owned()))
    }
}

impl Drop for ExpectedTransfer {
    fn drop(&mut self) {
        if let Ok(mut table) = self.expected.lock() {
            table.remove(&self.transfer_id);
        }
    }
}

async fn accept_transfers(
    mut receiver: KvReceiver,
    expected: ExpectedTable,
    engine: Arc<Engine>,
    metrics: KvTransferMetrics,
) {
    while let Some(incoming) = receiver.next().await {
        let transfer = match incoming {
            Ok(transfer) => transfer,
            Err(rejected) => {
                tracing::warn!(peer = %rejected.peer, error = %rejected.error, "kv transfer refused");
                continue;
            }
        };
        let header = transfer.header();
        let entry = expected
            .lock()
            .ok()
            .and_then(|mut table| table.remove(&header.transfer_id));
        let Some(entry) = entry else {
            tracing::warn!(peer = %transfer.peer(), transfer_id = %header.transfer_id, "kv transfer for no waiting request; dropped");
            continue;
        };
        if *entry.blocks != header.dest_blocks[..] {
            let reason = format!(
                "the transfer names blocks {:?}, the request waits on {:?}",
                header.dest_blocks, entry.blocks
            );
            tracing::warn!(transfer_id = %header.transfer_id, %reason, "kv transfer dropped");
            let _ = entry.done.send(Err(reason));
            continue;
        }
        tokio::spawn(deliver(transfer, entry, engine.clone(), metrics.clone()));
    }
}

/// Hands each layer to the engine as it arrives, then reports how the transfer ended.
async fn deliver(mut transfer: IncomingTransfer, entry: Expected, engine: Arc<Engine>, metrics: KvTransferMetrics) {
    let started = std::time::Instant::now();
    let mut bytes = 0u64;
    while let Some(layer) = transfer.next_layer().await {
        bytes += ((layer.keys.len() + layer.values.len()) * std::mem::size_of::<f32>()) as u64;
        engine.write_remote_kv(
            entry.request,
            layer.layer,
            entry.blocks.clone(),
            layer.keys,
            layer.values,
        );
    }
    let result = match transfer.outcome().await {
        TransferOutcome::Complete => Ok(()),
        TransferOutcome::Aborted { reason, .. } => Err(format!("the prefill worker aborted: {reason}")),
        TransferOutcome::Failed { error, layers_received } => {
            Err(format!("{error} ({} layers had arrived)", layers_received.len()))
        }
    };
    metrics.record(KvDirection::Received, bytes, started.elapsed(), result.is_ok());
    let _ = entry.done.send(result);
}
