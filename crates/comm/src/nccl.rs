//! The NCCL communicator: the same operations as [`Communicator`](crate::Communicator), on device buffers
//! (`CudaSlice`), enqueued on the stream the communicator was created with — so they order with the engine's
//! kernels on that stream and never copy through the host.
//!
//! Invariant: nothing touches libnccl or the driver unless [`nccl_available`] said both load (cudarc panics
//! otherwise). Operations are asynchronous on the stream; [`NcclCommunicator::synchronize`] waits for them with
//! the operation timeout and, when a peer never completes its side, aborts the NCCL communicator (which ends
//! the stuck kernels) and reports which operation hung. After an abort every call fails with `Aborted`.
//! `all_to_all` is grouped point-to-point (one `ncclGroupStart`/`End` around every send and receive), which
//! allows per-rank counts. A `cudarc` `Comm` is not `Send`: create and use the communicator on one thread.
//! Cost: each call is one NCCL launch (all_to_all: one group of 2·(n−1) sends/receives).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::{Comm, Id, NcclType, ReduceOp};

use crate::element::Element;
use crate::error::CommError;

/// An element type NCCL can move and sum: f32, bf16, u32.
pub trait NcclElement: Element + NcclType + DeviceRepr + ValidAsZeroBits {}
impl NcclElement for f32 {}
impl NcclElement for half::bf16 {}
impl NcclElement for u32 {}

/// Whether the CUDA driver, at least one device and libnccl are present. Never panics.
pub fn nccl_available() -> bool {
    nccl_status().is_ok()
}

/// How many GPUs NCCL can use here, or why it cannot run. Never panics.
///
/// cudarc looks for `libnccl.so` (and `.so.1`, `.so.9`–`.so.13`), not NCCL's own soname `libnccl.so.2`: where
/// only `libnccl.so.2` is installed (the `nvidia-nccl-cu*` wheels), link `libnccl.so` to it on the library path.
pub fn nccl_status() -> Result<usize, String> {
    let (driver, nccl) = libraries_present();
    if !driver {
        return Err("the CUDA driver library (libcuda) is not installed".to_owned());
    }
    if !nccl {
        return Err("libnccl.so is not on the library path (link it to libnccl.so.2 if only that exists)".to_owned());
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(n as usize),
        Ok(_) => Err("no CUDA device".to_owned()),
        Err(e) => Err(format!("the CUDA driver failed: {e}")),
    }
}

#[allow(unsafe_code)] // probing for shared libraries only
fn libraries_present() -> (bool, bool) {
    // SAFETY: each call only tries to dlopen the library by its candidate names; nothing else is loaded.
    unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nccl::sys::is_culib_present(),
        )
    }
}

/// A group member on one GPU. See the module docs.
#[derive(Debug)]
pub struct NcclCommunicator {
    comm: Option<Comm>,
    stream: Arc<CudaStream>,
    rank: usize,
    world_size: usize,
    op_timeout: Duration,
    aborted: Option<String>,
}

impl NcclCommunicator {
    /// A fresh NCCL unique id (128 bytes), made on rank 0 and handed to the others through the rendezvous.
    pub fn new_unique_id() -> Result<Vec<u8>, CommError> {
        if !nccl_available() {
            return Err(unavailable(0, "get_unique_id"));
        }
        let id = Id::new().map_err(|e| nccl_error(0, "get_unique_id", e))?;
        Ok(id.internal().iter().map(|&c| c as u8).collect())
    }

    /// Joins the group `unique_id` names as `rank` of `world_size`, on `stream`'s device. Blocks until every
    /// rank has joined (NCCL's own rendezvous over the id).
    pub fn from_rank(
        stream: Arc<CudaStream>,
        rank: usize,
        world_size: usize,
        unique_id: &[u8],
        op_timeout: Duration,
    ) -> Result<Self, CommError> {
        if !nccl_available() {
            return Err(unavailable(rank, "init"));
        }
        let mut internal = [0 as std::ffi::c_char; 128];
        if unique_id.len() != internal.len() {
            return Err(CommError::InvalidArgument {
                rank,
                op: "init",
                reason: format!("an NCCL unique id has 128 bytes, got {}", unique_id.len()),
            });
        }
        for (dst, &src) in internal.iter_mut().zip(unique_id) {
            *dst = src as std::ffi::c_char;
        }
        // NCCL picks the device from the thread's current context.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| nccl_error_text(rank, "init", e.to_string()))?;
        let comm = Comm::from_rank(stream.clone(), rank, world_size, Id::uninit(internal))
            .map_err(|e| nccl_error(rank, "init", e))?;
        Ok(Self {
            comm: Some(comm),
            stream,
            rank,
            world_size,
            op_timeout,
            aborted: None,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The stream every operation is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn comm(&self, op: &'static str) -> Result<&Comm, CommError> {
        match (&self.comm, &self.aborted) {
            (Some(comm), None) => Ok(comm),
            (_, cause) => Err(CommError::Aborted {
                rank: self.rank,
                cause: cause
                    .clone()
                    .unwrap_or_else(|| format!("NCCL communicator gone before {op}")),
            }),
        }
    }

    fn invalid(&self, op: &'static str, reason: String) -> CommError {
        CommError::InvalidArgument {
            rank: self.rank,
            op,
            reason,
        }
    }

    /// Sums `data` over all ranks, in place.
    /// `data` is any device buffer on the communicator's stream: a whole `CudaSlice` or a view of its first rows.
    pub fn all_reduce_sum<T: NcclElement, R: DevicePtrMut<T>>(&self, data: &mut R) -> Result<(), CommError> {
        let comm = self.comm("all_reduce")?;
        comm.all_reduce_in_place(data, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| nccl_error(self.rank, "all_reduce", e))
    }

    /// Concatenates every rank's `input` in rank order into `output` (`world_size · input.len()` elements); either
    /// may be a whole `CudaSlice` or a view of one.
    pub fn all_gather<T: NcclElement, S: DevicePtr<T>, R: DevicePtrMut<T>>(
        &self,
        input: &S,
        output: &mut R,
    ) -> Result<(), CommError> {
        if output.len() != input.len() * self.world_size {
            return Err(self.invalid(
                "all_gather",
                format!("output {} ≠ {} × {}", output.len(), self.world_size, input.len()),
            ));
        }
        let comm = self.comm("all_gather")?;
        comm.all_gather(input, output)
            .map(drop)
            .map_err(|e| nccl_error(self.rank, "all_gather", e))
    }

    /// Sums `input` (`world_size · output.len()` elements) over all ranks; rank r gets chunk r.
    pub fn reduce_scatter_sum<T: NcclElement>(
        &self,
        input: &CudaSlice<T>,
        output: &mut CudaSlice<T>,
    ) -> Result<(), CommError> {
        if input.len() != output.len() * self.world_size {
            return Err(self.invalid(
                "reduce_scatter",
                format!("input {} ≠ {} × {}", input.len(), self.world_size, output.len()),
            ));
        }
        let comm = self.comm("reduce_scatter")?;
        comm.reduce_scatter(input, output, &ReduceOp::Sum)
            .map(drop)
            .map_err(|e| nccl_error(self.rank, "reduce_scatter", e))
    }

    fn check_peer(&self, op: &'static str, peer: usize) -> Result<i32, CommError> {
        if peer >= self.world_size || peer == self.rank {
            return Err(self.invalid(op, format!("peer {peer} is not another rank of {}", self.world_size)));
        }
        i32::try_from(peer).map_err(|_| self.invalid(op, format!("peer {peer} does not fit NCCL's i32")))
    }

    /// Sends `data` (a whole `CudaSlice` or a view of it) to `dst` (matched by a `recv` there).
    pub fn send<T: NcclElement, S: DevicePtr<T>>(&self, data: &S, dst: usize) -> Result<(), CommError> {
        let peer = self.check_peer("send", dst)?;
        let comm = self.comm("send")?;
        comm.send(data, peer).map_err(|e| nccl_error(self.rank, "send", e))
    }

    /// Receives `data.len()` elements from `src` (into a whole `CudaSlice` or a view of it).
    pub fn recv<T: NcclElement, R: DevicePtrMut<T>>(&self, data: &mut R, src: usize) -> Result<(), CommError> {
        let peer = self.check_peer("recv", src)?;
        let comm = self.comm("recv")?;
        comm.recv(data, peer)
            .map(drop)
            .map_err(|e| nccl_error(self.rank, "recv", e))
    }

    /// Sends `send_counts[j]` elements to each rank j and receives `recv_counts[j]` from each (segments back to
    /// back in rank order), as one NCCL group.
    pub fn all_to_all<T: NcclElement>(
        &self,
        send: &CudaSlice<T>,
        send_counts: &[usize],
        recv: &mut CudaSlice<T>,
        recv_counts: &[usize],
    ) -> Result<(), CommError> {
        let op = "all_to_all";
        let n = self.world_size;
        if send_counts.len() != n || recv_counts.len() != n {
            return Err(self.invalid(
                op,
                format!(
                    "counts for {} and {} ranks, group of {n}",
                    send_counts.len(),
                    recv_counts.len()
                ),
            ));
        }
        let send_ranges = ranges(send_counts, send.len()).map_err(|r| self.invalid(op, format!("send counts {r}")))?;
        let recv_ranges = ranges(recv_counts, recv.len()).map_err(|r| self.invalid(op, format!("recv counts {r}")))?;
        if send_counts[self.rank] != recv_counts[self.rank] {
            return Err(self.invalid(op, "this rank's own send and recv counts differ".to_owned()));
        }
        let comm = self.comm(op)?;
        let rank = self.rank;
        cudarc::nccl::group_start().map_err(|e| nccl_error(rank, op, e))?;
        let mut posted: Result<(), CommError> = Ok(());
        for peer in (0..n).filter(|p| *p != rank) {
            // Zero-length segments are skipped on both sides, so they never pair with anything.
            let peer_i32 = peer as i32;
            if !send_ranges[peer].is_empty() {
                let view = send.slice(send_ranges[peer].clone());
                if let Err(e) = comm.send(&view, peer_i32) {
                    posted = Err(nccl_error(rank, op, e));
                    break;
                }
            }
            if !recv_ranges[peer].is_empty() {
                let mut view = recv.slice_mut(recv_ranges[peer].clone());
                if let Err(e) = comm.recv(&mut view, peer_i32) {
                    posted = Err(nccl_error(rank, op, e));
                    break;
                }
            }
        }
        let ended = cudarc::nccl::group_end().map(drop).map_err(|e| nccl_error(rank, op, e));
        posted.and(ended)?;
        if !send_ranges[rank].is_empty() {
            let own = send.slice(send_ranges[rank].clone());
            let mut dst = recv.slice_mut(recv_ranges[rank].clone());
            self.stream
                .memcpy_dtod(&own, &mut dst)
                .map_err(|e| nccl_error_text(rank, op, e.to_string()))?;
        }
        Ok(())
    }

    /// Waits for every operation enqueued so far, at most the operation timeout. On timeout (a peer never did
    /// its side) the NCCL communicator is aborted and `Timeout` names `waiting_for` as the operation.
    pub fn synchronize(&mut self, waiting_for: &'static str) -> Result<(), CommError> {
        self.comm(waiting_for)?;
        let event = self
            .stream
            .record_event(None)
            .map_err(|e| nccl_error_text(self.rank, waiting_for, e.to_string()))?;
        let deadline = Instant::now() + self.op_timeout;
        loop {
            match event.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(nccl_error_text(self.rank, waiting_for, e.to_string())),
            }
            if Instant::now() >= deadline {
                let error = CommError::Timeout {
                    rank: self.rank,
                    op: waiting_for,
                    peer: self.rank,
                    timeout: self.op_timeout,
                };
                self.aborted = Some(error.to_string());
                // Dropping the Comm calls ncclCommAbort, which ends the kernels still waiting for peers.
                self.comm = None;
                return Err(error);
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// A barrier: an all-reduce of one element, waited for.
    pub fn barrier(&mut self) -> Result<(), CommError> {
        let mut one = self
            .stream
            .alloc_zeros::<f32>(1)
            .map_err(|e| nccl_error_text(self.rank, "barrier", e.to_string()))?;
        self.all_reduce_sum(&mut one)?;
        self.synchronize("barrier")
    }
}

fn ranges(counts: &[usize], len: usize) -> Result<Vec<Range<usize>>, String> {
    let total: usize = counts.iter().sum();
    if total != len {
        return Err(format!("add up to {total}, the buffer holds {len}"));
    }
    let mut start = 0;
    Ok(counts
        .iter()
        .map(|&c| {
            start += c;
            start - c..start
        })
        .collect())
}

fn unavailable(rank: usize, op: &'static str) -> CommError {
    nccl_error_text(
        rank,
        op,
        "libnccl or the CUDA driver is not installed, or there is no GPU".to_owned(),
    )
}

fn nccl_error(rank: usize, op: &'static str, error: cudarc::nccl::result::NcclError) -> CommError {
    nccl_error_text(rank, op, format!("{error:?}"))
}

fn nccl_error_text(rank: usize, op: &'static str, reason: String) -> CommError {
    CommError::Nccl { rank, op, reason }
}
