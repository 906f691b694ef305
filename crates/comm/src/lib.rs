//! cleave's communicators: the collective and point-to-point operations a parallel group of engine ranks needs
//! (tensor parallel all-reduce, pipeline send/recv, expert-parallel all-to-all), over TCP for CPUs
//! ([`TcpCommunicator`]) and NCCL for GPUs ([`NcclCommunicator`]), and the etcd rendezvous that forms a group
//! ([`Rendezvous`]).
//!
//! The API is blocking: an engine's forward pass runs synchronously on a rayon pool, so each call returns when
//! its result is in the caller's buffer. No call needs (or may block) a tokio runtime; only [`Rendezvous::join`],
//! which talks to the registry, is async. Every call is bounded by the communicator's operation timeout: a
//! member that dies or stops answering becomes an error naming the rank and the operation, never a hang.
//!
//! Contract shared by every implementation: every rank of the group makes the same sequence of collective calls
//! with the same lengths and element types; results of sums are bit-identical on every rank.
//!
//! [`Communicator`] is the host-memory interface (CPU engines; TCP). [`NcclCommunicator`] offers the same
//! operations on device buffers, enqueued on the engine's stream. A CPU worker forms its group with
//! [`form_tcp_group`] (rendezvous, then the mesh); a GPU worker joins the rendezvous with rank 0's
//! [`NcclCommunicator::new_unique_id`] in its [`GroupSpec`] and builds the NCCL communicator from the id it returns.

mod element;
mod error;
mod group;
pub mod nccl;
mod rendezvous;
mod sub;
mod tcp;

use std::fmt::Debug;

pub use element::{DType, Element, HostSlice, HostSliceMut};
pub use error::CommError;
pub use group::{FormGroupError, form_tcp_group};
pub use nccl::{NcclCommunicator, NcclElement, nccl_available, nccl_status};
pub use rendezvous::{GroupSpec, Membership, Rendezvous, RendezvousError};
pub use sub::SubCommunicator;
pub use tcp::{TcpCommunicator, TcpConfig};

/// A member of a parallel group, on host buffers. Object safe: engines hold an `Arc<dyn Communicator>`.
/// Buffers are borrowed [`HostSlice`]s; `slice.into()` builds one from `&[f32]`, `&[bf16]` or `&[u32]`.
pub trait Communicator: Send + Sync + Debug {
    /// This member's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// How many members the group has.
    fn world_size(&self) -> usize;

    /// Replaces `data` on every rank by the element-wise sum over all ranks. Any length.
    fn all_reduce_sum(&self, data: HostSliceMut<'_>) -> Result<(), CommError>;

    /// Concatenates every rank's `input` in rank order into `output` (`world_size · input.len()` elements).
    fn all_gather(&self, input: HostSlice<'_>, output: HostSliceMut<'_>) -> Result<(), CommError>;

    /// Sums `input` (`world_size · output.len()` elements) over all ranks and gives rank r chunk r of the sum.
    fn reduce_scatter_sum(&self, input: HostSlice<'_>, output: HostSliceMut<'_>) -> Result<(), CommError>;

    /// Sends `data` to rank `dst`, which must `recv` the same number of elements. Returns once the data is
    /// handed to the transport (for large messages: once the peer is receiving).
    fn send(&self, data: HostSlice<'_>, dst: usize) -> Result<(), CommError>;

    /// Receives exactly `data.len()` elements from rank `src`.
    fn recv(&self, data: HostSliceMut<'_>, src: usize) -> Result<(), CommError>;

    /// Sends to `dst` while receiving from `src` (a ring shift when dst = rank+1 and src = rank−1); neither side
    /// can deadlock on the other's buffers.
    fn send_recv(&self, send: HostSlice<'_>, dst: usize, recv: HostSliceMut<'_>, src: usize) -> Result<(), CommError>;

    /// Sends `send_counts[j]` elements to each rank j (the segments of `send`, back to back in rank order) and
    /// receives `recv_counts[j]` elements from each rank j into the segments of `recv`. Counts may differ per
    /// rank and be zero; a peer sending a different count than this rank expects is an error. Exchange the
    /// counts first (an `all_to_all` of one u32 per rank) when the receivers do not know them.
    fn all_to_all(
        &self,
        send: HostSlice<'_>,
        send_counts: &[usize],
        recv: HostSliceMut<'_>,
        recv_counts: &[usize],
    ) -> Result<(), CommError>;

    /// Returns once every rank has entered the barrier.
    fn barrier(&self) -> Result<(), CommError>;
}
