//! The decode side of remote prefill: the KV-transfer listener, and the table of transfers this worker expects.
//!
//! A request that waits for remote KV registers its transfer id and destination blocks here ([`KvInbox::expect`])
//! before it asks a prefill worker to send. Each accepted connection is matched to its entry by transfer id; its
//! layers go to the engine thread as they arrive, and the transfer's outcome goes back to the waiting request.
//! Invariant: a connection that names an unknown transfer id or other blocks is dropped unread (the sender is told
//! the consumer is gone), so nothing but the expected request's own blocks is ever written. Every delivered
//! transfer is counted in `cleave_worker_kv_transfer*{direction="received"}`. Cost: one task per transfer; layer
//! payloads move to the engine thread without a copy.
//!
//! A GPU worker also accepts direct transfers (CUDA IPC): its pool descriptor is exported once at bind, and a
//! matched direct transfer is granted it only after the engine agreed to hold the request's blocks for the peer
//! (`allow_direct_writes`) — from then on those blocks are not reused until the peer is done. A transfer that ends
//! cleanly (Complete, or the sender's Abort, which it sends only after its device stopped) releases them at once;
//! one that breaks (a dead sender, a deadline) releases them after [`DIRECT_WRITE_GRACE`], longer than any copy the
//! sender may still have queued.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use cleave_cluster::kv_transfer::{
    IncomingTransfer, KvDtype, KvLayout, KvReceiver, KvTransferError, ReceiverConfig, TransferMode, TransferOutcome,
};
use cleave_cluster::tls::ClusterTls;
use cleave_engine::{Engine, LandedCopy, PeerKv};
use cleave_telemetry::{KvDirection, KvTransferMetrics};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::nccl_links::{NCCL, NcclLinks};

/// How an expected transfer ended: `Ok` once every layer was handed to the engine.
pub type TransferResult = Result<(), String>;

/// KV transport names, as workers advertise them and `KvDestination.transport` lists them.
pub const TCP: &str = "tcp";
pub const CUDA_IPC: &str = "cuda_ipc";

/// Marks a link the sender has just made in a Hello's link name (`<name>+new`): the receiver joins it then. A name
/// without it must be a link this worker already joined.
pub const NEW_LINK: &str = "+new";

/// How long an aborted NCCL link's stream may take to let go of a failed transfer's blocks before they wait out
/// [`DIRECT_WRITE_GRACE`] instead.
const LINK_SETTLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long blocks granted to a direct writer stay out of use after its transfer broke without a clean end.
pub const DIRECT_WRITE_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// This host's identity for same-host transports: the kernel's boot id (shared by every process and container on
/// the host), else the host name.
pub fn host_id() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    })
}

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
    /// Set when senders on this host may write into the engine's pool directly (CUDA IPC).
    direct: bool,
    /// NCCL links senders anywhere may send over (enabled later, by whoever holds the registry).
    links: NcclLinks,
    /// The transports offered, when restricted ([`KvInbox::offer_only`]).
    offered: Option<Vec<String>>,
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
        let descriptor = match engine.export_kv_pool().await {
            Ok(descriptor) => descriptor.map(Arc::<[u8]>::from),
            Err(error) => {
                tracing::warn!(%error, "the KV pool cannot be shared; KV arrives over TCP only");
                None
            }
        };
        config.direct = descriptor.is_some().then_some(KvDtype::Bf16);
        let (bound, receiver) = KvReceiver::bind(listen, config).await?;
        let expected: ExpectedTable = Arc::default();
        let direct = descriptor.is_some();
        let links = NcclLinks::default();
        let sinks = Sinks {
            engine,
            metrics,
            descriptor,
            links: links.clone(),
        };
        let accept = tokio::spawn(accept_transfers(receiver, expected.clone(), sinks));
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(KvInbox {
            addr: advertise.unwrap_or_else(|| bound.to_string()),
            nonce: format!("{:x}-{started:x}", std::process::id()),
            expected,
            accept,
            direct,
            links,
            offered: None,
        })
    }

    /// The NCCL links transfers to this inbox may use; enable them ([`NcclLinks::enable`]) to offer NCCL.
    pub fn nccl_links(&self) -> &NcclLinks {
        &self.links
    }

    /// Offers only these of the transports this inbox speaks, in this order (an operator's choice, e.g. to keep
    /// KV off NCCL); the CLI accepts only known names. TCP stays the fallback when nothing else is left.
    pub fn offer_only(&mut self, transports: &[String]) {
        self.offered = Some(transports.to_vec());
    }

    /// The transports prefill workers may use to reach this inbox, most preferred first.
    pub fn transports(&self) -> Vec<&'static str> {
        let mut spoken = Vec::new();
        if self.direct {
            spoken.push(CUDA_IPC);
        }
        if self.links.enabled() {
            spoken.push(NCCL);
        }
        spoken.push(TCP);
        match &self.offered {
            None => spoken,
            Some(offered) => {
                let chosen: Vec<&'static str> = offered
                    .iter()
                    .filter_map(|name| spoken.iter().copied().find(|t| t == name))
                    .collect();
                if chosen.is_empty() { vec![TCP] } else { chosen }
            }
        }
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

/// Where accepted transfers go: the engine, the metrics, and what direct writers get.
#[derive(Clone)]
struct Sinks {
    engine: Arc<Engine>,
    metrics: KvTransferMetrics,
    /// The pool's CUDA-IPC descriptor, when it has one.
    descriptor: Option<Arc<[u8]>>,
    links: NcclLinks,
}

async fn accept_transfers(mut receiver: KvReceiver, expected: ExpectedTable, sinks: Sinks) {
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
        tokio::spawn(deliver(transfer, entry, sinks.clone()));
    }
}

/// Holds a request's blocks for a direct writer until dropped, then releases them — at once after a clean end,
/// after [`DIRECT_WRITE_GRACE`] otherwise.
struct DirectWrites {
    engine: Arc<Engine>,
    request: u64,
    clean: bool,
}

impl Drop for DirectWrites {
    fn drop(&mut self) {
        if self.clean {
            self.engine.end_direct_writes(self.request);
            return;
        }
        let (engine, request) = (self.engine.clone(), self.request);
        let release = async move {
            tokio::time::sleep(DIRECT_WRITE_GRACE).await;
            engine.end_direct_writes(request);
        };
        // No runtime means the process is shutting down: nothing will reuse the blocks.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(release));
        }
    }
}

/// How a direct transfer's layers reach the pool.
enum DirectPath {
    /// The sender writes them (CUDA IPC).
    Ipc,
    /// This side receives them over a link, each layer's copy finishing when it is in place.
    Link {
        link: PeerKv,
        copies: Vec<Option<LandedCopy>>,
    },
}

/// Lets a direct transfer's sender in: the engine holds the request's blocks for it, then it gets the pool (CUDA
/// IPC) or, over an NCCL link, every layer's receipt is queued first and it gets an empty grant.
async fn grant(
    transfer: &mut IncomingTransfer,
    entry: &Expected,
    sinks: &Sinks,
) -> Result<(DirectWrites, DirectPath), String> {
    let engine = &sinks.engine;
    let link = transfer.header().link.clone();
    if link.is_empty() {
        let descriptor = sinks.descriptor.as_ref().ok_or("this worker shares no KV pool")?;
        if !engine.allow_direct_writes(entry.request).await {
            return Err("the request no longer waits for its KV".to_owned());
        }
        let writes = DirectWrites {
            engine: engine.clone(),
            request: entry.request,
            clean: false,
        };
        transfer.grant(descriptor.to_vec()).map_err(|e| e.to_string())?;
        return Ok((writes, DirectPath::Ipc));
    }
    let link = match link.strip_suffix(NEW_LINK) {
        Some(name) => sinks.links.receiver(name).await?,
        None => sinks
            .links
            .joined(&link)
            .ok_or_else(|| format!("no NCCL link named {link} here (this worker restarted?)"))?,
    };
    // Held from before the engine may let the link in: should queuing the receipts fail half-way, the blocks
    // come back only after the grace period, once the aborted link's stream has let go of them.
    let writes = DirectWrites {
        engine: engine.clone(),
        request: entry.request,
        clean: false,
    };
    // The engine lets the link write only the request's own blocks.
    let copies = match engine
        .receive_kv(entry.request, link.clone(), entry.blocks.clone())
        .await
    {
        Ok(copies) => copies,
        Err(e) => {
            link.abort(&e.to_string());
            return Err(e.to_string());
        }
    };
    let path = DirectPath::Link {
        link: link.clone(),
        copies: copies.into_iter().map(Some).collect(),
    };
    if let Err(e) = transfer.grant(Vec::new()) {
        link.abort(&e.to_string());
        return Err(e.to_string());
    }
    Ok((writes, path))
}

/// Waits for a queued copy off the runtime's threads; hands it back for a check after a failure.
async fn wait_copy(copy: LandedCopy) -> (Option<LandedCopy>, Result<(), String>) {
    match tokio::task::spawn_blocking(move || {
        let waited = copy.wait().map_err(|e| e.to_string());
        (copy, waited)
    })
    .await
    {
        Ok((copy, waited)) => (Some(copy), waited),
        Err(e) => (None, Err(e.to_string())),
    }
}

/// Hands each layer to the engine as it arrives (or, for a direct transfer, tells it the layer landed), then
/// reports how the transfer ended.
async fn deliver(mut transfer: IncomingTransfer, entry: Expected, sinks: Sinks) {
    let started = std::time::Instant::now();
    let engine = &sinks.engine;
    let direct = transfer.header().mode == TransferMode::Direct;
    let transport = match (direct, transfer.header().link.is_empty()) {
        (false, _) => TCP,
        (true, true) => CUDA_IPC,
        (true, false) => NCCL,
    };
    let (mut writes, mut path) = (None, None);
    if direct {
        match grant(&mut transfer, &entry, &sinks).await {
            Ok((granted, how)) => {
                writes = Some(granted);
                path = Some(how);
            }
            Err(reason) => {
                tracing::warn!(transfer_id = %transfer.header().transfer_id, %reason, "direct kv transfer refused");
                drop(transfer);
                let _ = entry.done.send(Err(format!("direct transfer refused: {reason}")));
                return;
            }
        }
    }
    let layer_bytes = 2 * transfer.header().layer_floats() * if direct { 2 } else { 4 };
    let mut bytes = 0u64;
    let mut broken = None;
    while let Some(layer) = transfer.next_layer().await {
        bytes += layer_bytes as u64;
        match &mut path {
            Some(DirectPath::Link { copies, .. }) => {
                // The sender's copy left it; this side's lands right after.
                let slot = copies.get_mut(layer.layer as usize);
                if let Some(slot) = slot
                    && let Some(copy) = slot.take()
                {
                    let (copy, waited) = wait_copy(copy).await;
                    if let Err(reason) = waited {
                        // Kept, to check below that the aborted link's stream let go of it.
                        *slot = copy;
                        broken = Some(reason);
                        break;
                    }
                }
                engine.direct_layer_landed(entry.request, layer.layer, entry.blocks.clone());
            }
            Some(DirectPath::Ipc) => engine.direct_layer_landed(entry.request, layer.layer, entry.blocks.clone()),
            None => engine.write_remote_kv(
                entry.request,
                layer.layer,
                entry.blocks.clone(),
                layer.keys,
                layer.values,
            ),
        }
    }
    let (result, mut clean) = match broken {
        Some(reason) => {
            drop(transfer);
            (Err(format!("receiving over the NCCL link failed: {reason}")), false)
        }
        // Complete: every layer landed; Abort: the sender stopped its device first. Anything else may leave
        // copies in flight.
        None => match transfer.outcome().await {
            TransferOutcome::Complete => (Ok(()), true),
            TransferOutcome::Aborted { reason, .. } => (Err(format!("the prefill worker aborted: {reason}")), true),
            TransferOutcome::Failed { error, layers_received } => (
                Err(format!("{error} ({} layers had arrived)", layers_received.len())),
                false,
            ),
        },
    };
    if let Some(DirectPath::Link { link, copies }) = path {
        let pending: Vec<LandedCopy> = copies.into_iter().flatten().collect();
        if !pending.is_empty() || result.is_err() {
            // Receipts the sender will never match: abort them, then wait until the link's stream let go of the
            // blocks, after which nothing writes them; blocks it still holds wait out the grace period.
            link.abort("its transfer did not complete");
            let settled =
                tokio::task::spawn_blocking(move || pending.iter().all(|copy| copy.settled(LINK_SETTLE_TIMEOUT))).await;
            clean = settled.unwrap_or(false);
        }
    }
    if let Some(writes) = &mut writes {
        writes.clean = clean;
    }
    // Released (or scheduled to be) before the request hears the outcome, so the engine sees them in that order.
    drop(writes);
    sinks.metrics.record(
        KvDirection::Received,
        transport,
        bytes,
        started.elapsed(),
        result.is_ok(),
    );
    let _ = entry.done.send(result);
}
