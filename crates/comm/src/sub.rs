//! A sub-group of a communicator's members acting as a communicator of its own: the tensor-parallel ranks of one
//! pipeline stage, or one rank of each stage, inside a group formed once.
//!
//! Every operation is built from the parent's point-to-point `send`, `recv` and `send_recv` between the members, so
//! any parent works and the parent's per-link ordering keeps sub-groups that share a link apart (all ranks run the
//! same sequence of operations). Sums are computed once, on the sub-group's first member, in member order, and sent
//! back: bit-identical on every member. Cost: an all-reduce of n elements over m members moves 2·(m−1)·n elements
//! through the first member (fine for the small groups this serves; the parent's own collectives stay faster for
//! the whole group).

use std::sync::Arc;

use crate::Communicator;
use crate::element::{Element, HostSlice, HostSliceMut, accumulate, same_dtype};
use crate::error::CommError;

/// Members `members` (ranks of `parent`, in sub-group rank order) of `parent`, seen from one of them.
#[derive(Debug, Clone)]
pub struct SubCommunicator {
    parent: Arc<dyn Communicator>,
    members: Vec<usize>,
    rank: usize,
}

impl SubCommunicator {
    /// The sub-group `members` (distinct parent ranks, this rank among them), in that order.
    pub fn new(parent: Arc<dyn Communicator>, members: Vec<usize>) -> Result<Self, CommError> {
        let me = parent.rank();
        let mut sorted = members.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let valid = sorted.len() == members.len() && members.iter().all(|&m| m < parent.world_size());
        let Some(rank) = members.iter().position(|&m| m == me).filter(|_| valid) else {
            return Err(CommError::InvalidArgument {
                rank: me,
                op: "sub_group",
                reason: format!(
                    "members {members:?} must be distinct ranks of a group of {} and include this rank {me}",
                    parent.world_size()
                ),
            });
        };
        Ok(Self { parent, members, rank })
    }

    fn peer(&self, sub_rank: usize) -> usize {
        self.members[sub_rank]
    }

    fn all_reduce_typed<T: Element>(&self, data: &mut [T]) -> Result<(), CommError> {
        if self.rank == 0 {
            let mut partial = vec![T::zeroed(); data.len()];
            for r in 1..self.members.len() {
                self.parent.recv(T::wrap_mut(&mut partial), self.peer(r))?;
                accumulate(data, &partial);
            }
            for r in 1..self.members.len() {
                self.parent.send(T::wrap(data), self.peer(r))?;
            }
            return Ok(());
        }
        self.parent.send(T::wrap(data), self.peer(0))?;
        self.parent.recv(T::wrap_mut(data), self.peer(0))
    }

    /// Exchanges in rounds: in round k each member sends `piece(to)` to the member k ahead and receives the one k
    /// behind into `slot(from)`; `own` handles this member's piece for itself.
    fn rounds<T: Element>(
        &self,
        send: &[T],
        send_at: impl Fn(usize) -> std::ops::Range<usize>,
        recv: &mut [T],
        recv_at: impl Fn(usize) -> std::ops::Range<usize>,
    ) -> Result<(), CommError> {
        let n = self.members.len();
        let me = self.rank;
        recv[recv_at(me)].copy_from_slice(&send[send_at(me)]);
        for k in 1..n {
            let (to, from) = ((me + k) % n, (me + n - k) % n);
            self.parent.send_recv(
                T::wrap(&send[send_at(to)]),
                self.peer(to),
                T::wrap_mut(&mut recv[recv_at(from)]),
                self.peer(from),
            )?;
        }
        Ok(())
    }

    fn invalid(&self, op: &'static str, reason: String) -> CommError {
        CommError::InvalidArgument {
            rank: self.rank,
            op,
            reason,
        }
    }
}

impl Communicator for SubCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.members.len()
    }

    fn all_reduce_sum(&self, data: HostSliceMut<'_>) -> Result<(), CommError> {
        match data {
            HostSliceMut::F32(d) => self.all_reduce_typed(d),
            HostSliceMut::Bf16(d) => self.all_reduce_typed(d),
            HostSliceMut::U32(d) => self.all_reduce_typed(d),
        }
    }

    fn all_gather(&self, input: HostSlice<'_>, output: HostSliceMut<'_>) -> Result<(), CommError> {
        let n = self.members.len();
        if output.len() != input.len() * n {
            return Err(self.invalid(
                "all_gather",
                format!("output holds {}, {n} × {} needed", output.len(), input.len()),
            ));
        }
        let len = input.len();
        same_dtype!(self, "all_gather", input, output, |i, o| self.rounds(
            i,
            |_| 0..len,
            o,
            |r| r * len..(r + 1) * len
        ))
    }

    fn reduce_scatter_sum(&self, input: HostSlice<'_>, output: HostSliceMut<'_>) -> Result<(), CommError> {
        let (n, len) = (self.members.len(), output.len());
        if input.len() != len * n {
            return Err(self.invalid(
                "reduce_scatter",
                format!("input holds {}, {n} × {len} needed", input.len()),
            ));
        }
        let me = self.rank;
        same_dtype!(self, "reduce_scatter", input, output, |i, o| {
            let mut sum = i.to_vec();
            self.all_reduce_typed(&mut sum)?;
            o.copy_from_slice(&sum[me * len..(me + 1) * len]);
            Ok(())
        })
    }

    fn send(&self, data: HostSlice<'_>, dst: usize) -> Result<(), CommError> {
        self.parent.send(data, self.peer(dst))
    }

    fn recv(&self, data: HostSliceMut<'_>, src: usize) -> Result<(), CommError> {
        self.parent.recv(data, self.peer(src))
    }

    fn send_recv(&self, send: HostSlice<'_>, dst: usize, recv: HostSliceMut<'_>, src: usize) -> Result<(), CommError> {
        self.parent.send_recv(send, self.peer(dst), recv, self.peer(src))
    }

    fn all_to_all(
        &self,
        send: HostSlice<'_>,
        send_counts: &[usize],
        recv: HostSliceMut<'_>,
        recv_counts: &[usize],
    ) -> Result<(), CommError> {
        let n = self.members.len();
        let (sent, received) = (send_counts.iter().sum::<usize>(), recv_counts.iter().sum::<usize>());
        let counts_fit =
            send_counts.len() == n && recv_counts.len() == n && sent == send.len() && received == recv.len();
        if !counts_fit || send_counts[self.rank] != recv_counts[self.rank] {
            return Err(self.invalid(
                "all_to_all",
                format!(
                    "{n} members: counts {send_counts:?} / {recv_counts:?} for buffers of {} / {}",
                    send.len(),
                    recv.len()
                ),
            ));
        }
        let offsets = |counts: &[usize]| -> Vec<usize> {
            counts
                .iter()
                .scan(0, |at, c| Some(std::mem::replace(at, *at + c)))
                .collect()
        };
        let (send_off, recv_off) = (offsets(send_counts), offsets(recv_counts));
        same_dtype!(self, "all_to_all", send, recv, |s, r| self.rounds(
            s,
            |to| send_off[to]..send_off[to] + send_counts[to],
            r,
            |from| recv_off[from]..recv_off[from] + recv_counts[from]
        ))
    }

    fn barrier(&self) -> Result<(), CommError> {
        self.all_reduce_typed(&mut [0u32])
    }
}
