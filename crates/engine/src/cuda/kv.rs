//! The paged KV pool on the device: per layer, one bf16 buffer of keys and one of values, each
//! `[block][kv_head][slot][head_dim]` — the CPU pool's layout, so a block of one layer is one contiguous range and
//! KV transfers read and write whole ranges. Blocks cross to the host as f32 (the TCP transfer format), or go
//! straight into another process's pool through CUDA IPC (`ipc.rs`), which is why the buffers come from
//! `cuMemAlloc` (stream-ordered allocations cannot be exported) and are freed by hand.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use super::CudaError;
use crate::backend::{KvBlockReader, LandedCopy, PeerKv, PeerTarget};
use crate::config::ModelConfig;
use crate::kv::{BlockId, KvShape};
use cleave_kernels::Kernels;

#[derive(Debug)]
pub(super) struct DeviceKv {
    shape: KvShape,
    /// Names this pool in IPC descriptors: unique per process and allocation.
    pool_id: u64,
    pub keys: Vec<CudaSlice<bf16>>,
    pub values: Vec<CudaSlice<bf16>>,
}

impl DeviceKv {
    /// As many blocks as fit in `bytes`.
    pub fn allocate(
        stream: &Arc<CudaStream>,
        config: &ModelConfig,
        bytes: usize,
        block_size: usize,
    ) -> Result<Self, CudaError> {
        let per_block_layer = config.n_kv_heads * block_size * config.head_dim;
        let per_block = 2 * config.n_layers * per_block_layer * std::mem::size_of::<bf16>();
        // One block more than the scheduler sees: the padding rows of decode graphs write there.
        let n_blocks = (bytes / per_block.max(1)).saturating_sub(1);
        if n_blocks == 0 || block_size == 0 {
            return Err(CudaError::NoKvBlocks { bytes, block_size });
        }
        let shape = KvShape {
            n_layers: config.n_layers,
            n_blocks,
            block_size,
            n_kv_heads: config.n_kv_heads,
            head_dim: config.head_dim,
        };
        let len = (n_blocks + 1) * per_block_layer;
        let mut keys = Vec::with_capacity(config.n_layers);
        let mut values = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            keys.push(alloc_exportable(stream, len)?);
            values.push(alloc_exportable(stream, len)?);
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(DeviceKv {
            shape,
            pool_id: nanos ^ (u64::from(std::process::id()) << 40),
            keys,
            values,
        })
    }

    pub fn pool_id(&self) -> u64 {
        self.pool_id
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    /// A block outside the scheduler's pool, for rows that pad a batch.
    pub fn dummy_block(&self) -> BlockId {
        self.shape.n_blocks as BlockId
    }

    pub fn byte_len(&self) -> usize {
        self.keys.iter().chain(&self.values).map(|s| s.len() * 2).sum()
    }

    fn range(&self, block: BlockId) -> std::ops::Range<usize> {
        let len = self.shape.block_floats();
        let at = block as usize * len;
        at..at + len
    }

    /// Copies block `src` over block `dst` in every layer.
    /// Each layer's keys and values as raw device pointers (the NCCL receiver scatters into them).
    pub fn layer_pointers(&self) -> Vec<(u64, u64)> {
        self.keys
            .iter()
            .zip(&self.values)
            .map(|(k, v)| (k.device_ptr(k.stream()).0, v.device_ptr(v.stream()).0))
            .collect()
    }

    pub fn copy_block(&mut self, stream: &Arc<CudaStream>, src: BlockId, dst: BlockId) -> Result<(), CudaError> {
        if src == dst {
            return Ok(());
        }
        let (s, d) = (self.range(src), self.range(dst));
        let len = s.len();
        for pool in self.keys.iter_mut().chain(self.values.iter_mut()) {
            // Split the buffer so the source and destination ranges are disjoint borrows.
            if s.start < d.start {
                let (low, mut high) = pool.split_at_mut(d.start);
                stream.memcpy_dtod(&low.slice(s.clone()), &mut high.slice_mut(..len))?;
            } else {
                let (mut low, high) = pool.split_at_mut(s.start);
                stream.memcpy_dtod(&high.slice(..len), &mut low.slice_mut(d.clone()))?;
            }
        }
        Ok(())
    }

    /// Overwrites one block of one layer from host f32.
    pub fn write_block_layer(
        &mut self,
        stream: &Arc<CudaStream>,
        layer: usize,
        block: BlockId,
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), CudaError> {
        let range = self.range(block);
        let to_bf16 = |v: &[f32]| v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>();
        stream.memcpy_htod(&to_bf16(keys), &mut self.keys[layer].slice_mut(range.clone()))?;
        stream.memcpy_htod(&to_bf16(values), &mut self.values[layer].slice_mut(range))?;
        Ok(())
    }

    /// Layer `layer` of `blocks` from every rank of a tensor-parallel group (each holds its KV heads), gathered over
    /// NCCL into one device buffer, `[rank][block][keys | values]`. Every rank calls it with the same blocks.
    pub fn gather_layer(
        &self,
        stream: &Arc<CudaStream>,
        comm: &cleave_comm::NcclCommunicator,
        layer: usize,
        blocks: &[BlockId],
    ) -> Result<GatheredDeviceKv, CudaError> {
        let per = self.shape.block_floats();
        let mut local = stream.alloc_zeros::<bf16>((blocks.len() * 2 * per).max(1))?;
        for (i, &block) in blocks.iter().enumerate() {
            let range = self.range(block);
            let at = i * 2 * per;
            stream.memcpy_dtod(
                &self.keys[layer].slice(range.clone()),
                &mut local.slice_mut(at..at + per),
            )?;
            stream.memcpy_dtod(
                &self.values[layer].slice(range),
                &mut local.slice_mut(at + per..at + 2 * per),
            )?;
        }
        let world = comm.world_size();
        let mut data = stream.alloc_zeros::<bf16>(local.len() * world)?;
        comm.all_gather(&local, &mut data)?;
        Ok(GatheredDeviceKv {
            blocks: blocks.to_vec(),
            data,
            per,
            per_rank: local.len(),
            world,
        })
    }

    /// A reader for one forward pass (the stream orders the reads after the layer's writes); with `peer_copies`
    /// (the kernels and a transfer stream) it can also copy layers into a peer's pool.
    pub fn reader<'a>(
        &'a self,
        stream: &'a Arc<CudaStream>,
        peer_copies: Option<(&'a Kernels, &'a Arc<CudaStream>)>,
    ) -> DeviceKvReader<'a> {
        DeviceKvReader {
            kv: self,
            stream,
            peer_copies,
        }
    }
}

/// `len` zeroed elements from `cuMemAlloc`, which CUDA IPC can export; freed by `DeviceKv`'s `Drop`.
fn alloc_exportable(stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<bf16>, CudaError> {
    stream.context().bind_to_thread()?;
    // SAFETY: a plain allocation of `len` bf16s; the slice below owns exactly that length and is zeroed before use.
    let mut slice = unsafe {
        let ptr = cudarc::driver::result::malloc_sync(len * std::mem::size_of::<bf16>())?;
        stream.upgrade_device_ptr::<bf16>(ptr, len)
    };
    stream.memset_zeros(&mut slice)?;
    Ok(slice)
}

impl Drop for DeviceKv {
    fn drop(&mut self) {
        for slice in self.keys.drain(..).chain(self.values.drain(..)) {
            let stream = slice.stream().clone();
            let ptr = slice.leak();
            // SAFETY: `ptr` came from `malloc_sync` in `alloc_exportable` and is freed once, after the stream that
            // used it finished (cudarc's own drop would free it as a stream-ordered allocation, which it is not).
            unsafe {
                let _ = stream.synchronize();
                let _ = cudarc::driver::result::free_sync(ptr);
            }
        }
    }
}

pub(super) struct DeviceKvReader<'a> {
    kv: &'a DeviceKv,
    stream: &'a Arc<CudaStream>,
    peer_copies: Option<(&'a Kernels, &'a Arc<CudaStream>)>,
}

impl KvBlockReader for DeviceKvReader<'_> {
    fn read_block_layer(&self, layer: usize, block: BlockId, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        let range = self.kv.range(block);
        for (pool, out) in [(&self.kv.keys[layer], keys), (&self.kv.values[layer], values)] {
            match self.stream.clone_dtoh(&pool.slice(range.clone())) {
                Ok(host) => out.extend(host.iter().map(|x| x.to_f32())),
                Err(error) => {
                    // The transfer then fails its length check and the decode worker prefills locally.
                    tracing::error!(%error, layer, block, "reading a KV block from the device failed");
                }
            }
        }
    }

    fn copy_to_peer(&self, layer: usize, peer: &PeerKv, pairs: &[(BlockId, BlockId)]) -> Result<LandedCopy, String> {
        let Some((kernels, transfer)) = self.peer_copies else {
            return Err("this pass copies no KV to peers".to_owned());
        };
        let (Some(keys), Some(values)) = (self.kv.keys.get(layer), self.kv.values.get(layer)) else {
            return Err(format!("layer {layer} is out of range"));
        };
        let copied = match &peer.0 {
            PeerTarget::Pool(pool) => {
                super::ipc::copy_layer(kernels, self.stream, transfer, keys, values, pool, layer, pairs)
                    .map(|event| LandedCopy { event, link: None })
            }
            PeerTarget::Link(link) => {
                let blocks: Vec<BlockId> = pairs.iter().map(|&(local, _)| local).collect();
                link.send_layer(kernels, self.stream, keys, values, &blocks)
                    .map(|event| LandedCopy {
                        event,
                        link: Some(link.clone()),
                    })
            }
        };
        copied.map_err(|e| e.to_string())
    }
}

/// One layer's blocks gathered from every rank of a tensor-parallel group (see `DeviceKv::gather_layer`): a block
/// reads back with every KV head, in rank order — the whole model's layout.
pub(super) struct GatheredDeviceKv {
    blocks: Vec<BlockId>,
    data: CudaSlice<bf16>,
    /// Elements of one block's keys (or values) on one rank.
    per: usize,
    per_rank: usize,
    world: usize,
}

impl GatheredDeviceKv {
    pub fn reader<'a>(&'a self, stream: &'a Arc<CudaStream>) -> GatheredReader<'a> {
        GatheredReader { kv: self, stream }
    }
}

pub(super) struct GatheredReader<'a> {
    kv: &'a GatheredDeviceKv,
    stream: &'a Arc<CudaStream>,
}

impl KvBlockReader for GatheredReader<'_> {
    fn read_block_layer(&self, layer: usize, block: BlockId, keys: &mut Vec<f32>, values: &mut Vec<f32>) {
        let g = self.kv;
        let Ok(i) = g.blocks.binary_search(&block) else {
            // Every block of the batch was gathered; a reader asking for another one gets nothing to ship.
            return;
        };
        for rank in 0..g.world {
            let at = rank * g.per_rank + i * 2 * g.per;
            for (range, out) in [(at..at + g.per, &mut *keys), (at + g.per..at + 2 * g.per, &mut *values)] {
                match self.stream.clone_dtoh(&g.data.slice(range)) {
                    Ok(host) => out.extend(host.iter().map(|x| x.to_f32())),
                    Err(error) => {
                        tracing::error!(%error, layer, block, rank, "reading a gathered KV block failed");
                    }
                }
            }
        }
    }
}
