//! CUDA IPC for KV transfers between worker processes on one host: a decode worker exports its KV pool once (a
//! memory handle per layer's keys and values, [`DeviceKv::export`]), a prefill worker maps it
//! ([`PeerPool::open`]) and writes each layer's blocks straight into the decode worker's blocks from its own
//! device ([`copy_layer`]) — over NVLink between GPUs that have it — while it computes the next layer.
//!
//! The descriptor that crosses between them is a few KiB: magic, a pool id (the mapping is cached by it), the
//! pool's shape, then the handles. Invariant: a mapped pool is only written through `copy_layer`, which checks every
//! destination block against the pool's size; which blocks a transfer may write is the decode worker's decision,
//! made before it hands the descriptor to the transfer's sender. Cost: mapping takes a few milliseconds per pool and
//! no device memory; a copy is one kernel launch per layer (per 256 blocks) on a transfer stream.

use std::sync::Arc;

use cudarc::driver::sys::{self, CUipcMem_flags_enum, CUipcMemHandle};
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr};
use half::bf16;

use super::CudaError;
use super::kv::DeviceKv;
use crate::error::EngineError;
use crate::kv::BlockId;

const MAGIC: [u8; 8] = *b"CLKVIPC1";
const HANDLE_LEN: usize = 64;
/// Magic, pool id, then n_layers, n_blocks and block_elems as u32.
const FIXED_LEN: usize = 8 + 8 + 3 * 4;

/// What a descriptor says about the pool it maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolShape {
    id: u64,
    n_layers: usize,
    /// Blocks in each layer's buffer (the scheduler's pool and the padding block).
    n_blocks: usize,
    block_elems: usize,
}

impl DeviceKv {
    /// The descriptor of this pool for [`PeerPool::open`] in another process on this host.
    pub fn export(&self) -> Result<Vec<u8>, CudaError> {
        let shape = self.shape();
        let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(FIXED_LEN + 2 * shape.n_layers * HANDLE_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.pool_id().to_le_bytes());
        for n in [shape.n_layers, shape.n_blocks + 1, shape.block_floats()] {
            out.extend_from_slice(&u32_of(n).to_le_bytes());
        }
        for buffer in self.keys.iter().chain(&self.values) {
            let stream = buffer.stream();
            let (ptr, _sync) = buffer.device_ptr(stream);
            let mut handle = CUipcMemHandle { reserved: [0; 64] };
            // SAFETY: `ptr` is the base of a `cuMemAlloc` allocation (DeviceKv allocates its buffers that way for
            // this call) and `handle` is a valid out-parameter.
            unsafe { sys::cuIpcGetMemHandle(&mut handle, ptr) }.result()?;
            out.extend(handle.reserved.iter().map(|&b| b as u8));
        }
        Ok(out)
    }
}

fn parse(descriptor: &[u8]) -> Result<(PoolShape, &[u8]), EngineError> {
    let bad = |reason: String| EngineError::invalid("kv_pool", reason);
    if descriptor.len() < FIXED_LEN || descriptor[..8] != MAGIC {
        return Err(bad("not a cleave CUDA-IPC KV pool descriptor".to_owned()));
    }
    let u32_at = |at: usize| {
        u32::from_le_bytes([
            descriptor[at],
            descriptor[at + 1],
            descriptor[at + 2],
            descriptor[at + 3],
        ])
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(&descriptor[8..16]);
    let shape = PoolShape {
        id: u64::from_le_bytes(id),
        n_layers: u32_at(16) as usize,
        n_blocks: u32_at(20) as usize,
        block_elems: u32_at(24) as usize,
    };
    let handles = &descriptor[FIXED_LEN..];
    if handles.len() != 2 * shape.n_layers * HANDLE_LEN {
        return Err(bad(format!(
            "{} bytes of handles for {} layers (expected {})",
            handles.len(),
            shape.n_layers,
            2 * shape.n_layers * HANDLE_LEN
        )));
    }
    Ok((shape, handles))
}

/// Another process's KV pool, mapped into this device's address space; unmapped when dropped.
#[derive(Debug)]
pub struct PeerPool {
    ctx: Arc<CudaContext>,
    shape: PoolShape,
    /// Device pointers of each layer's keys, then each layer's values.
    keys: Vec<sys::CUdeviceptr>,
    values: Vec<sys::CUdeviceptr>,
}

impl PeerPool {
    /// Maps the pool `descriptor` describes (from [`DeviceKv::export`] in another process on this host), checking
    /// that its layers and blocks have this model's shape (`n_layers`, `block_elems` elements a block).
    pub fn open(
        ctx: &Arc<CudaContext>,
        descriptor: &[u8],
        n_layers: usize,
        block_elems: usize,
    ) -> Result<PeerPool, EngineError> {
        let (shape, handles) = parse(descriptor)?;
        if shape.n_layers != n_layers || shape.block_elems != block_elems {
            return Err(EngineError::invalid(
                "kv_pool",
                format!(
                    "the peer's pool has {} layers of {}-element blocks, this model {n_layers} of {block_elems}",
                    shape.n_layers, shape.block_elems
                ),
            ));
        }
        ctx.bind_to_thread().map_err(CudaError::from)?;
        let mut pool = PeerPool {
            ctx: ctx.clone(),
            shape,
            keys: Vec::with_capacity(n_layers),
            values: Vec::with_capacity(n_layers),
        };
        for (i, raw) in handles.chunks_exact(HANDLE_LEN).enumerate() {
            let mut handle = CUipcMemHandle { reserved: [0; 64] };
            for (to, &from) in handle.reserved.iter_mut().zip(raw) {
                *to = from as _;
            }
            let mut ptr: sys::CUdeviceptr = 0;
            let flags = CUipcMem_flags_enum::CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS as u32;
            // SAFETY: `ptr` is a valid out-parameter; the driver validates the handle and fails cleanly on one that
            // does not name a live allocation of another process on this host.
            unsafe { sys::cuIpcOpenMemHandle_v2(&mut ptr, handle, flags) }
                .result()
                .map_err(|e| {
                    EngineError::invalid("kv_pool", format!("cannot map the peer's KV pool (handle {i}): {e}"))
                })?;
            if i < n_layers {
                pool.keys.push(ptr);
            } else {
                pool.values.push(ptr);
            }
        }
        Ok(pool)
    }

    /// The id its exporter gave the pool (mappings are cached by it).
    pub fn id(&self) -> u64 {
        self.shape.id
    }
}

impl Drop for PeerPool {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        for &ptr in self.keys.iter().chain(&self.values) {
            // SAFETY: `ptr` came from cuIpcOpenMemHandle in this context and is closed exactly once; every copy
            // into it was synchronised by its `LandedCopy` before the pool could be dropped (the engine holds the
            // pool for the duration of the export).
            let _ = unsafe { sys::cuIpcCloseMemHandle(ptr) };
        }
    }
}

/// Queues the copy of `pairs` (local block, peer block) of `layer` from `keys`/`values` into `peer`, on `transfer`
/// once `compute` has written the layer; the returned event fires when the blocks landed.
#[allow(clippy::too_many_arguments)] // both streams, both buffers, the kernels and the copy's description
pub(super) fn copy_layer(
    kernels: &cleave_kernels::Kernels,
    compute: &Arc<CudaStream>,
    transfer: &Arc<CudaStream>,
    keys: &CudaSlice<bf16>,
    values: &CudaSlice<bf16>,
    peer: &PeerPool,
    layer: usize,
    pairs: &[(BlockId, BlockId)],
) -> Result<CudaEvent, CudaError> {
    let written = compute.record_event(None)?;
    transfer.wait(&written)?;
    let (Some(&dst_k), Some(&dst_v)) = (peer.keys.get(layer), peer.values.get(layer)) else {
        return Err(CudaError::Kernel(cleave_kernels::KernelError::Shape {
            kernel: "copy_kv_blocks",
            what: "the peer pool's layers",
            got: peer.keys.len(),
            needed: layer + 1,
        }));
    };
    // SAFETY: the destinations are the peer's layer buffers of `n_blocks` blocks of `block_elems` (checked against
    // this model's when the pool was opened); the copy kernel checks every block id against that size.
    unsafe {
        kernels.copy_kv_blocks(
            transfer,
            keys,
            values,
            dst_k,
            dst_v,
            peer.shape.n_blocks,
            peer.shape.block_elems,
            pairs,
        )
    }?;
    Ok(transfer.record_event(None)?)
}
