//! NCCL links for KV transfers between GPUs that cannot map each other's memory (other hosts, or processes that
//! may not share CUDA-IPC handles): a two-rank NCCL communicator per prefill–decode pair, rank 0 the prefill side
//! (it sends), rank 1 the decode side (it receives). Both sides join the communicator once ([`NcclLink::connect`],
//! after a rendezvous the worker runs) and reuse it for every transfer between them.
//!
//! A layer crosses in chunks of at most [`STAGING_BYTES`] (the default) of keys and as many of values: the sender
//! gathers the chunk's blocks into staging buffers and sends them, the receiver receives into staging buffers and
//! scatters them into the destination blocks. Each side holds two sets of staging buffers, used by consecutive
//! chunks in turn, and runs its gathers or scatters on a side stream beside the link's NCCL stream, so one chunk's
//! gather (or scatter) overlaps the neighbouring chunk's send (or receive) — within a layer and from one layer to
//! the next; the compute stream only waits for the gathers. Both sides cut a layer into the same chunks (a function
//! of the block count and size).
//!
//! Invariants: one transfer uses a link at a time (its worker leases it), and the receiver queues every receive
//! of a transfer before it lets the sender start, so sends and receives pair up in order. Every wait on a link is
//! bounded ([`LINK_TIMEOUT`]); a link that timed out or whose transfer failed is aborted (`ncclCommAbort` ends
//! the operations stuck on it) and never used again. Cost: each link holds the communicator's buffers and
//! 4 × `STAGING_BYTES` per side (measured at connect, [`NcclLink::device_bytes`]); a transfer is a gather kernel
//! and one grouped send per chunk on the sender, a grouped receive and a scatter kernel per chunk on the receiver.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use cudarc::nccl::{result as nccl, sys as nccl_sys};
use half::bf16;

use super::CudaError;
use crate::kv::BlockId;

/// Bytes of keys (and as many of values) one chunk of a layer moves: the size of each staging buffer (two sets of
/// keys and values per side).
pub const STAGING_BYTES: usize = 8 << 20;

/// The longest a link operation may take before the link is aborted.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(30);

/// How a link moves blocks: `block_elems` elements a block, chunks of `staging_bytes` of keys (the same on both
/// sides), and at most `max_ctas` CTAs for NCCL (its channels, each with buffers of its own; `None`: NCCL's choice).
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    pub block_elems: usize,
    pub staging_bytes: usize,
    pub max_ctas: Option<usize>,
}

/// NCCL's `ncclConfig_t` as of 2.17 (the fields this crate sets), which every later NCCL accepts: the struct
/// carries its size and version.
#[repr(C)]
struct NcclConfig217 {
    size: usize,
    magic: std::ffi::c_uint,
    version: std::ffi::c_uint,
    blocking: std::ffi::c_int,
    cga_cluster_size: std::ffi::c_int,
    min_ctas: std::ffi::c_int,
    max_ctas: std::ffi::c_int,
    net_name: *const std::ffi::c_char,
    split_share: std::ffi::c_int,
}

impl NcclConfig217 {
    /// `NCCL_CONFIG_INITIALIZER` with `maxCTAs` set.
    fn with_max_ctas(ctas: usize) -> Self {
        const UNDEF: std::ffi::c_int = std::ffi::c_int::MIN;
        NcclConfig217 {
            size: std::mem::size_of::<Self>(),
            magic: 0xcafe_beef,
            version: 2 * 10_000 + 17 * 100,
            blocking: UNDEF,
            cga_cluster_size: UNDEF,
            min_ctas: UNDEF,
            max_ctas: std::ffi::c_int::try_from(ctas).unwrap_or(std::ffi::c_int::MAX),
            net_name: std::ptr::null(),
            split_share: UNDEF,
        }
    }
}

/// A raw communicator; NCCL allows calls from any thread as long as they do not overlap, which the mutex around
/// it ensures.
struct RawComm(nccl_sys::ncclComm_t);

// SAFETY: see the type's doc: every use goes through `NcclLink::comm`, a mutex.
unsafe impl Send for RawComm {}

/// The two sets of staging buffers (keys, values), taken in turn by consecutive chunks; `free[i]` fires once the
/// last operation that used set i (a send or a scatter) is done.
struct Staging {
    sets: [(CudaSlice<bf16>, CudaSlice<bf16>); 2],
    free: [Option<CudaEvent>; 2],
    next: usize,
}

impl Staging {
    /// The next set, once `stream` has waited for its last use to end.
    fn take(&mut self, stream: &CudaStream) -> Result<usize, CudaError> {
        let set = self.next;
        self.next = 1 - set;
        if let Some(free) = self.free[set].take() {
            stream.wait(&free)?;
        }
        Ok(set)
    }
}

/// One side of a prefill–decode pair's NCCL communicator, with its streams and staging buffers.
pub struct NcclLink {
    name: String,
    rank: usize,
    /// NCCL's sends and receives.
    stream: Arc<CudaStream>,
    /// Gathers into and scatters out of the staging buffers.
    side: Arc<CudaStream>,
    comm: Mutex<Option<RawComm>>,
    aborted: AtomicBool,
    staging: Mutex<Staging>,
    chunk_blocks: usize,
    block_elems: usize,
    device_bytes: usize,
}

impl std::fmt::Debug for NcclLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclLink")
            .field("name", &self.name)
            .field("rank", &self.rank)
            .field("aborted", &self.aborted.load(Ordering::Relaxed))
            .field("device_bytes", &self.device_bytes)
            .finish()
    }
}

fn nccl_err(op: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Nccl(format!("{op}: {e:?}"))
}

/// Blocks of `block_elems` bf16 elements that fit one chunk of `staging_bytes`.
pub fn chunk_blocks(block_elems: usize, staging_bytes: usize) -> usize {
    (staging_bytes / (2 * block_elems.max(1))).max(1)
}

/// A fresh NCCL unique id for a new link (the sender makes it; the rendezvous hands it to the receiver).
pub fn new_link_id() -> Result<Vec<u8>, CudaError> {
    let id = nccl::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

impl NcclLink {
    /// Joins the link `unique_id` names as `rank` (0 sends, 1 receives) on `ctx`'s device, moving blocks as `shape`
    /// says. Blocks until the other side joined too (NCCL's own rendezvous), then exchanges one element so the
    /// connection is up before a transfer needs it.
    pub fn connect(
        ctx: &Arc<CudaContext>,
        name: &str,
        unique_id: &[u8],
        rank: usize,
        shape: LinkShape,
    ) -> Result<NcclLink, CudaError> {
        let LinkShape {
            block_elems,
            staging_bytes,
            max_ctas,
        } = shape;
        let mut id = nccl_sys::ncclUniqueId { internal: [0; 128] };
        if unique_id.len() != id.internal.len() || rank > 1 {
            return Err(CudaError::Nccl(format!(
                "link {name}: a {}-byte id for rank {rank} (an id has 128 bytes, a link ranks 0 and 1)",
                unique_id.len()
            )));
        }
        for (dst, &src) in id.internal.iter_mut().zip(unique_id) {
            *dst = src as std::ffi::c_char;
        }
        ctx.bind_to_thread()?;
        let (free_before, _) = ctx.mem_get_info()?;
        let stream = ctx.new_stream()?;
        let mut raw: nccl_sys::ncclComm_t = std::ptr::null_mut();
        match max_ctas {
            // SAFETY: `raw` is a valid out-parameter; the thread's current context is the link's device.
            None => {
                unsafe { nccl::comm_init_rank(&mut raw, 2, id, rank as i32) }
                    .map_err(|e| nccl_err("ncclCommInitRank", e))?;
            }
            Some(ctas) => {
                let mut config = NcclConfig217::with_max_ctas(ctas);
                // SAFETY: as above; `config` is an initialised 2.17-layout config whose `size` and `version` say so
                // (NCCL reads no further), alive for the call.
                unsafe {
                    nccl_sys::ncclCommInitRankConfig(
                        &mut raw,
                        2,
                        id,
                        rank as i32,
                        (&mut config as *mut NcclConfig217).cast(),
                    )
                }
                .result()
                .map_err(|e| nccl_err("ncclCommInitRankConfig", e))?;
            }
        }
        let chunk_blocks = chunk_blocks(block_elems, staging_bytes);
        let set = || -> Result<_, CudaError> {
            Ok((
                stream.alloc_zeros::<bf16>(chunk_blocks * block_elems)?,
                stream.alloc_zeros::<bf16>(chunk_blocks * block_elems)?,
            ))
        };
        let staging = Staging {
            sets: [set()?, set()?],
            free: [None, None],
            next: 0,
        };
        let link = NcclLink {
            name: name.to_owned(),
            rank,
            side: ctx.new_stream()?,
            stream,
            comm: Mutex::new(Some(RawComm(raw))),
            aborted: AtomicBool::new(false),
            staging: Mutex::new(staging),
            chunk_blocks,
            block_elems,
            device_bytes: 0,
        };
        let warmup = link.exchange(|link, comm, staging| {
            link.send_or_recv(comm, &mut staging.sets[0].0, 1)?;
            Ok(link.stream.record_event(None)?)
        })?;
        let mut link = link;
        link.wait(&warmup)?;
        let (free_after, _) = ctx.mem_get_info()?;
        link.device_bytes = free_before.saturating_sub(free_after);
        Ok(link)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Device memory the link took when it connected: the communicator's buffers and the staging buffers.
    pub fn device_bytes(&self) -> usize {
        self.device_bytes
    }

    pub fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Ends every operation on the link and makes later ones fail.
    pub fn abort(&self, reason: &str) {
        if self.close() {
            tracing::warn!(link = %self.name, reason, "aborted the NCCL KV link");
        }
    }

    /// Aborts the communicator if it is still open; true if this call did.
    fn close(&self) -> bool {
        // A poisoned lock still guards a valid communicator: nothing panics while holding it mid-call.
        let mut comm = self.comm.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(RawComm(raw)) = comm.take() else {
            return false;
        };
        self.aborted.store(true, Ordering::Release);
        // SAFETY: `raw` is this link's communicator, taken out so nothing uses it again.
        let _ = unsafe { nccl::comm_abort(raw) };
        true
    }

    /// Runs `body` with the communicator and the staging buffers; it queues work on the link's streams and returns
    /// an event after it. Fails on an aborted link.
    fn exchange(
        &self,
        body: impl FnOnce(&Self, nccl_sys::ncclComm_t, &mut Staging) -> Result<CudaEvent, CudaError>,
    ) -> Result<CudaEvent, CudaError> {
        let comm = self
            .comm
            .lock()
            .map_err(|_| CudaError::Nccl("link lock poisoned".to_owned()))?;
        let Some(RawComm(raw)) = comm.as_ref() else {
            return Err(CudaError::Nccl(format!("link {} was aborted", self.name)));
        };
        let mut staging = self
            .staging
            .lock()
            .map_err(|_| CudaError::Nccl("link lock poisoned".to_owned()))?;
        self.stream.context().bind_to_thread()?;
        body(self, *raw, &mut staging)
    }

    /// The first `elems` elements of `buffer`: sent to the other rank on rank 0, received from it on rank 1.
    fn send_or_recv(
        &self,
        comm: nccl_sys::ncclComm_t,
        buffer: &mut CudaSlice<bf16>,
        elems: usize,
    ) -> Result<(), CudaError> {
        let stream = self.stream.cu_stream() as nccl_sys::cudaStream_t;
        let dtype = nccl_sys::ncclDataType_t::ncclBfloat16;
        let (ptr, _sync) = buffer.device_ptr_mut(&self.stream);
        // SAFETY: `ptr` addresses at least `elems` elements of the staging buffer (callers pass chunk sizes of at
        // most its length); the communicator is live (checked under its lock by `exchange`).
        let status = unsafe {
            if self.rank == 0 {
                nccl::send(ptr as *const _, elems, dtype, 1, comm, stream)
            } else {
                nccl::recv(ptr as *mut _, elems, dtype, 0, comm, stream)
            }
        };
        status.map_err(|e| nccl_err(if self.rank == 0 { "ncclSend" } else { "ncclRecv" }, e))?;
        Ok(())
    }

    /// Sends one chunk's keys and values as one group.
    fn move_chunk(
        &self,
        comm: nccl_sys::ncclComm_t,
        staging: &mut (CudaSlice<bf16>, CudaSlice<bf16>),
        blocks: usize,
    ) -> Result<(), CudaError> {
        let elems = blocks * self.block_elems;
        nccl::group_start().map_err(|e| nccl_err("ncclGroupStart", e))?;
        let moved = self
            .send_or_recv(comm, &mut staging.0, elems)
            .and_then(|()| self.send_or_recv(comm, &mut staging.1, elems));
        let ended = nccl::group_end().map_err(|e| nccl_err("ncclGroupEnd", e));
        moved.and(ended.map(|_| ()))
    }

    /// Sender: queues layer `blocks` of `keys`/`values` (this pool's blocks, in the transfer's order) behind
    /// `compute`'s work; `compute` waits for the gathers only. The event fires once the layer left this device.
    pub(super) fn send_layer(
        &self,
        kernels: &cleave_kernels::Kernels,
        compute: &Arc<CudaStream>,
        keys: &CudaSlice<bf16>,
        values: &CudaSlice<bf16>,
        blocks: &[BlockId],
    ) -> Result<CudaEvent, CudaError> {
        let written = compute.record_event(None)?;
        self.side.wait(&written)?;
        self.exchange(|link, comm, staging| {
            for chunk in blocks.chunks(link.chunk_blocks) {
                let set = staging.take(&link.side)?;
                let pairs: Vec<(BlockId, BlockId)> = chunk.iter().zip(0..).map(|(&b, i)| (b, i)).collect();
                {
                    let (k, _k_sync) = staging.sets[set].0.device_ptr(&link.side);
                    let (v, _v_sync) = staging.sets[set].1.device_ptr(&link.side);
                    // SAFETY: the staging buffers hold `chunk_blocks` blocks of `block_elems`; a chunk has at most
                    // that many blocks; the side stream waited (`Staging::take`) for the last send from this set.
                    unsafe {
                        kernels.copy_kv_blocks(
                            &link.side,
                            keys,
                            values,
                            k,
                            v,
                            link.chunk_blocks,
                            link.block_elems,
                            &pairs,
                        )
                    }?;
                }
                let gathered = link.side.record_event(None)?;
                compute.wait(&gathered)?;
                link.stream.wait(&gathered)?;
                link.move_chunk(comm, &mut staging.sets[set], chunk.len())?;
                staging.free[set] = Some(link.stream.record_event(None)?);
            }
            Ok(link.stream.record_event(None)?)
        })
    }

    /// Receiver: queues the receive of every layer of a transfer into `blocks` of the pool whose layers start at
    /// `keys[l]`/`values[l]` (`pool_blocks` blocks each); one event per layer fires once it is in place.
    pub(super) fn receive_layers(
        &self,
        kernels: &cleave_kernels::Kernels,
        layers: &[(u64, u64)],
        pool_blocks: usize,
        blocks: &[BlockId],
    ) -> Result<Vec<CudaEvent>, CudaError> {
        // Checked before anything is queued: a refused transfer leaves no receive the sender would never match.
        if let Some(&bad) = blocks.iter().find(|&&b| b as usize >= pool_blocks) {
            return Err(CudaError::Nccl(format!(
                "link {}: destination block {bad} is outside a pool of {pool_blocks} blocks",
                self.name
            )));
        }
        let mut landed = Vec::with_capacity(layers.len());
        for &(keys, values) in layers {
            landed.push(self.exchange(|link, comm, staging| {
                for chunk in blocks.chunks(link.chunk_blocks) {
                    let set = staging.take(&link.stream)?;
                    link.move_chunk(comm, &mut staging.sets[set], chunk.len())?;
                    let received = link.stream.record_event(None)?;
                    link.side.wait(&received)?;
                    let pairs: Vec<(BlockId, BlockId)> = (0..).zip(chunk.iter().copied()).collect();
                    // SAFETY: `keys`/`values` are a pool layer's buffers of `pool_blocks` blocks (the caller's
                    // pool); the kernel checks each destination block against that count.
                    unsafe {
                        kernels.copy_kv_blocks(
                            &link.side,
                            &staging.sets[set].0,
                            &staging.sets[set].1,
                            keys,
                            values,
                            pool_blocks,
                            link.block_elems,
                            &pairs,
                        )
                    }?;
                    staging.free[set] = Some(link.side.record_event(None)?);
                }
                Ok(link.side.record_event(None)?)
            })?);
        }
        Ok(landed)
    }

    /// NCCL's own bandwidth on this link, for benchmarks: `bytes` in one send (rank 0) or receive (rank 1) from a
    /// contiguous buffer, `1 + repeats` times; bytes per second after the first. Both sides call it alike.
    pub fn raw_bandwidth(&self, bytes: usize, repeats: usize) -> Result<f64, CudaError> {
        let elems = (bytes / 2).max(1);
        let mut buffer = self.stream.alloc_zeros::<bf16>(elems)?;
        let mut run = || -> Result<(), CudaError> {
            let event = self.exchange(|link, comm, _| {
                link.send_or_recv(comm, &mut buffer, elems)?;
                Ok(link.stream.record_event(None)?)
            })?;
            self.wait(&event)
        };
        run()?;
        let started = Instant::now();
        for _ in 0..repeats.max(1) {
            run()?;
        }
        Ok((2 * elems * repeats.max(1)) as f64 / started.elapsed().as_secs_f64())
    }

    /// Waits for `event` (work queued on this link) for at most [`LINK_TIMEOUT`]; aborts the link past it.
    pub fn wait(&self, event: &CudaEvent) -> Result<(), CudaError> {
        let deadline = Instant::now() + LINK_TIMEOUT;
        loop {
            match event.try_is_complete() {
                Ok(true) => {
                    return if self.is_aborted() {
                        Err(CudaError::Nccl(format!("link {} was aborted", self.name)))
                    } else {
                        Ok(())
                    };
                }
                Ok(false) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(20)),
                Ok(false) => {
                    self.abort("an operation outlived the link timeout");
                    return Err(CudaError::Nccl(format!(
                        "link {}: no progress in {} s (the peer stopped)",
                        self.name,
                        LINK_TIMEOUT.as_secs()
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Drop for NcclLink {
    fn drop(&mut self) {
        self.close();
        // The staging buffers go only after whatever the aborted communicator left on the streams.
        let _ = self.stream.synchronize();
        let _ = self.side.synchronize();
    }
}
