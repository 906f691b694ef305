//! What the scheduler needs from a compute device: a forward pass over a batch of sequence chunks, and access to
//! the KV blocks that pass writes — copying a block when samples fork, writing remote KV in, reading it out for a
//! transfer. The CPU backend ([`CpuBackend`]) is the model and a host KV pool; the CUDA backend keeps both on a GPU.
//!
//! Invariant: block ids are the block manager's; a backend stores values and never decides ownership. Keys and
//! values cross this interface as f32 in the engine's `[block][kv_head][slot][head_dim]` order whatever the device
//! stores, so KV transfers between backends of one model agree.

use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv::{BlockId, KvCache, KvShape};
use crate::model::{LlamaModel, SeqChunk};

/// Reads one block of one layer during a forward pass (the callback that ships KV while later layers compute).
pub trait KvBlockReader {
    /// Appends `block`'s keys to `keys` and its values to `values` (`KvShape::block_floats` each).
    fn read_block_layer(&self, layer: usize, block: BlockId, keys: &mut Vec<f32>, values: &mut Vec<f32>);

    /// Queues the copy of `layer`'s blocks into another worker's pool on this host, `(local block, peer block)`
    /// pairs, behind the layer's compute; the returned copy says when the blocks landed. Only a device with a
    /// peer transport can (the CUDA backend, through CUDA IPC).
    fn copy_to_peer(&self, layer: usize, peer: &PeerKv, pairs: &[(BlockId, BlockId)]) -> Result<LandedCopy, String> {
        let _ = (layer, peer, pairs);
        Err("this device cannot write into another worker's KV pool".to_owned())
    }
}

/// Where exports write another worker's blocks: its KV pool mapped into this device (CUDA IPC), or an NCCL link
/// to its device (the receiver scatters what arrives). Unmapped or closed when the last clone goes.
#[derive(Debug, Clone)]
pub struct PeerKv(pub(crate) PeerTarget);

#[derive(Debug, Clone)]
pub(crate) enum PeerTarget {
    Pool(std::sync::Arc<crate::cuda::PeerPool>),
    Link(std::sync::Arc<crate::cuda::NcclLink>),
}

impl PeerKv {
    /// The link's name, for an NCCL link.
    pub fn link_name(&self) -> Option<&str> {
        match &self.0 {
            PeerTarget::Link(link) => Some(link.name()),
            PeerTarget::Pool(_) => None,
        }
    }

    /// Device memory this side of an NCCL link holds (its communicator and staging buffers); 0 for a mapped pool.
    pub fn device_bytes(&self) -> usize {
        match &self.0 {
            PeerTarget::Link(link) => link.device_bytes(),
            PeerTarget::Pool(_) => 0,
        }
    }

    /// Whether an NCCL link was aborted (it then fails every operation; make a new one).
    pub fn is_aborted(&self) -> bool {
        matches!(&self.0, PeerTarget::Link(link) if link.is_aborted())
    }

    /// NCCL's own send/receive bandwidth over this link (bytes per second; both sides call it alike), for
    /// benchmarks against the KV path over the same link.
    pub fn link_bandwidth(&self, bytes: usize, repeats: usize) -> Result<f64, EngineError> {
        match &self.0 {
            PeerTarget::Link(link) => Ok(link.raw_bandwidth(bytes, repeats)?),
            PeerTarget::Pool(_) => Err(EngineError::invalid("peer", "not an NCCL link")),
        }
    }

    /// Aborts an NCCL link, ending the operations waiting on it (a transfer on it failed); no-op for a pool.
    pub fn abort(&self, reason: &str) {
        if let PeerTarget::Link(link) = &self.0 {
            link.abort(reason);
        }
    }
}

/// A queued copy of one layer into a peer's pool, or onto an NCCL link.
#[derive(Debug)]
pub struct LandedCopy {
    pub(crate) event: cudarc::driver::CudaEvent,
    /// Set for NCCL links: waits are bounded and abort the link past their limit.
    pub(crate) link: Option<std::sync::Arc<crate::cuda::NcclLink>>,
}

impl LandedCopy {
    /// Polls the copy's event: a blocking wait would hold the driver against the engine thread's launches.
    fn poll(&self) -> Result<(), String> {
        while !self.event.try_is_complete().map_err(|e| e.to_string())? {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
        Ok(())
    }

    /// Whether the device is done with the copy, waiting up to `timeout` for it: true once it finished or was ended
    /// by an aborted link (either way nothing writes its blocks any more), false if it is still running.
    pub fn settled(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match self.event.try_is_complete() {
                Ok(true) => return true,
                Ok(false) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_micros(20))
                }
                Ok(false) | Err(_) => return false,
            }
        }
    }

    /// Blocks until the layer's blocks are in the peer's memory (for an NCCL link: until they left this device,
    /// or, on the receiving side, are in this pool).
    pub fn wait(&self) -> Result<(), EngineError> {
        let waited = match &self.link {
            Some(link) => link.wait(&self.event).map_err(|e| e.to_string()),
            None => self.poll(),
        };
        waited.map_err(|e| EngineError::Internal(format!("moving KV to or from the peer failed: {e}")))
    }
}

/// A model and its KV pool on one device.
pub trait Backend: Send {
    fn model_config(&self) -> &ModelConfig;

    fn kv_shape(&self) -> KvShape;

    /// Runs the batch, writes its keys and values into the pool, and returns `[n, vocab]` logits for the chunks
    /// with `want_logits`, in batch order. `layer_done(l, reader)` runs once layer `l`'s KV is in the pool.
    /// An error means the device failed; the engine fails the batch's requests.
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        layer_done: &mut dyn FnMut(usize, &dyn KvBlockReader),
    ) -> Result<Vec<f32>, EngineError>;

    /// `forward` without a per-layer callback, which lets a backend replay a recorded step (CUDA graphs).
    fn forward_plain(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<f32>, EngineError> {
        self.forward(chunks, &mut |_, _| {})
    }

    /// This pool's descriptor for [`Backend::open_peer_kv`] in another process on this host, when the device can
    /// share it (CUDA IPC); `None` when KV reaches this worker over TCP only.
    fn export_kv_pool(&self) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(None)
    }

    /// Maps another process's pool (its [`Backend::export_kv_pool`] descriptor) so exports can write into it.
    fn open_peer_kv(&mut self, descriptor: &[u8]) -> Result<PeerKv, EngineError> {
        let _ = descriptor;
        Err(EngineError::invalid(
            "transport",
            "this device cannot map another worker's KV pool (CUDA IPC needs the CUDA backend)",
        ))
    }

    /// This device's end of NCCL links for KV transfers (see [`crate::cuda::NcclLink`]), when it can have them: a
    /// CUDA device holding the whole model, with NCCL installed.
    fn kv_link_endpoint(&self) -> Option<KvLinkEndpoint> {
        None
    }

    /// Queues the receipt of every layer of a transfer over `link` into `blocks` (the receiving side of an NCCL
    /// link); one copy per layer says when it is in place.
    fn receive_kv(&mut self, link: &PeerKv, blocks: &[BlockId]) -> Result<Vec<LandedCopy>, EngineError> {
        let _ = (link, blocks);
        Err(EngineError::invalid(
            "transport",
            "this device receives no KV over NCCL (it needs the CUDA backend)",
        ))
    }

    /// Copies a whole block, every layer (copy-on-write when forked samples diverge).
    fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<(), EngineError>;

    /// Overwrites one block of one layer (remote KV landing); `keys`/`values` hold `block_floats` each.
    fn write_block_layer(
        &mut self,
        layer: usize,
        block: BlockId,
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), EngineError>;
}

/// What joining an NCCL link needs of a device, usable off the engine thread (joining blocks until the other side
/// joins too).
#[derive(Debug, Clone)]
pub struct KvLinkEndpoint {
    pub(crate) ctx: std::sync::Arc<cudarc::driver::CudaContext>,
    pub(crate) block_elems: usize,
    pub(crate) staging_bytes: usize,
    /// The most CTAs (hence channels, each with its own buffers) NCCL may give the link; `None`: NCCL's choice.
    pub(crate) max_ctas: Option<usize>,
}

impl KvLinkEndpoint {
    /// Moves layers in chunks of `bytes` of keys (and as many of values) instead of
    /// [`crate::cuda::STAGING_BYTES`]; both sides of a link must use the same size.
    pub fn with_staging_bytes(mut self, bytes: usize) -> Self {
        self.staging_bytes = bytes;
        self
    }

    /// Caps the CTAs NCCL gives each link at `ctas` (fewer channels: less device memory per link, less
    /// bandwidth); 0 leaves NCCL's choice.
    pub fn with_max_ctas(mut self, ctas: usize) -> Self {
        self.max_ctas = (ctas > 0).then_some(ctas);
        self
    }

    /// A fresh id for a new link, made by its sending side.
    pub fn new_link_id(&self) -> Result<Vec<u8>, EngineError> {
        Ok(crate::cuda::new_link_id()?)
    }

    /// Joins link `name` (whose id `unique_id` the sender made) as the sender (`sends`) or the receiver. Blocks until
    /// both sides joined.
    pub fn connect(&self, name: &str, unique_id: &[u8], sends: bool) -> Result<PeerKv, EngineError> {
        let rank = if sends { 0 } else { 1 };
        let shape = crate::cuda::LinkShape {
            block_elems: self.block_elems,
            staging_bytes: self.staging_bytes,
            max_ctas: self.max_ctas,
        };
        let link = crate::cuda::NcclLink::connect(&self.ctx, name, unique_id, rank, shape)?;
        Ok(PeerKv(PeerTarget::Link(std::sync::Arc::new(link))))
    }
}

impl KvShape {
    /// Floats in one block of one layer, for keys (values hold as many).
    pub fn block_floats(&self) -> usize {
        self.n_kv_heads * self.block_size * self.head_dim
    }
}

impl KvBlockReader for KvCache {
    fn read_block_layer(&self, layer: usize, block: BlockId, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        let (k, v) = self.block_layer(layer, block);
        keys.extend_from_slice(k);
        values.extend_from_slice(v);
    }
}

/// The CPU backend: f32 weights math on the host (`cpu/`), a host KV pool.
#[derive(Debug)]
pub struct CpuBackend {
    model: LlamaModel,
    kv: KvCache,
}

impl CpuBackend {
    /// The model with a pool of `n_blocks` blocks of `block_size` tokens.
    pub fn new(model: LlamaModel, n_blocks: usize, block_size: usize) -> Self {
        let kv = KvCache::new(model.kv_shape(n_blocks, block_size));
        CpuBackend { model, kv }
    }

    pub fn kv(&self) -> &KvCache {
        &self.kv
    }

    pub fn model(&self) -> &LlamaModel {
        &self.model
    }
}

impl Backend for CpuBackend {
    fn model_config(&self) -> &ModelConfig {
        self.model.config()
    }

    fn kv_shape(&self) -> KvShape {
        self.kv.shape()
    }

    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        layer_done: &mut dyn FnMut(usize, &dyn KvBlockReader),
    ) -> Result<Vec<f32>, EngineError> {
        self.model.forward_observed(chunks, &mut self.kv, Some(layer_done))
    }

    fn forward_plain(&mut self, chunks: &[SeqChunk<'_>]) -> Result<Vec<f32>, EngineError> {
        self.model.forward(chunks, &mut self.kv)
    }

    fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<(), EngineError> {
        self.kv.copy_block(src, dst);
        Ok(())
    }

    fn write_block_layer(
        &mut self,
        layer: usize,
        block: BlockId,
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), EngineError> {
        self.kv.write_block_layer(layer, block, keys, values);
        Ok(())
    }
}
