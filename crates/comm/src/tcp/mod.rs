//! The TCP communicator: a full mesh of TCP connections (TCP_NODELAY) between the ranks of a group, for CPU
//! engines, CI and CPU clusters.
//!
//! Invariant: one operation runs at a time (calls from several threads are serialised, in lock order — which
//! must be the same on every rank); every operation finishes within `op_timeout` or fails naming the peer it
//! waited for; the first failure aborts the communicator and shuts its connections, so the other members'
//! operations fail at once instead of waiting out their timeouts. Every rank must use the same `TcpConfig`
//! (the ring threshold decides the message pattern; a rank on the other algorithm fails as a mismatch).
//! Cost: see `collectives` for the algorithms; each peer link owns one writer thread.

mod collectives;
mod link;
mod mesh;

use std::net::TcpListener;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use collectives::Session;
use link::{OpCode, PeerLink};

use crate::Communicator;
use crate::element::{Element, HostSlice, HostSliceMut, same_dtype};
use crate::error::CommError;

pub(crate) use mesh::group_token;

/// Tuning and limits of a TCP communicator.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// The longest any one operation may take; past it the operation fails with `Timeout` naming the peer.
    pub op_timeout: Duration,
    /// The longest forming the mesh may take (every member dialled and accepted).
    pub connect_timeout: Duration,
    /// All-reduces of at most this many bytes go direct (one round trip); larger ones go round the ring.
    pub ring_threshold_bytes: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            ring_threshold_bytes: 64 * 1024,
        }
    }
}

/// A TCP group member. See the module docs.
#[derive(Debug)]
pub struct TcpCommunicator {
    rank: usize,
    world_size: usize,
    config: TcpConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    links: Vec<Option<PeerLink>>,
    aborted: Option<String>,
}

impl TcpCommunicator {
    /// Forms the mesh: `peers[r]` is rank r's `host:port` (this rank's own entry is where `listener` listens).
    /// `group` names the group; connections from members of other groups are refused. Blocks until every peer
    /// is connected or `config.connect_timeout` passes.
    pub fn connect(
        listener: &TcpListener,
        rank: usize,
        peers: &[String],
        group: &str,
        config: TcpConfig,
    ) -> Result<Self, CommError> {
        let world_size = peers.len();
        if rank >= world_size {
            return Err(CommError::InvalidArgument {
                rank,
                op: "connect",
                reason: format!("rank {rank} is outside a group of {world_size}"),
            });
        }
        let deadline = Instant::now() + config.connect_timeout;
        let streams = mesh::form_mesh(listener, rank, peers, group_token(group), deadline)?;
        let mut links = Vec::with_capacity(world_size);
        for (peer, stream) in streams.into_iter().enumerate() {
            let link = match stream {
                Some(stream) => {
                    Some(
                        PeerLink::new(stream, peer, config.op_timeout).map_err(|e| CommError::Connect {
                            rank,
                            peer,
                            addr: peers[peer].clone(),
                            reason: e.to_string(),
                        })?,
                    )
                }
                None => None,
            };
            links.push(link);
        }
        tracing::debug!(rank, world_size, group, "TCP communicator connected");
        Ok(Self {
            rank,
            world_size,
            config,
            state: Mutex::new(State { links, aborted: None }),
        })
    }

    /// A group of one: every collective is a copy. For single-rank runs through the same code path.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            config: TcpConfig::default(),
            state: Mutex::new(State {
                links: vec![None],
                aborted: None,
            }),
        }
    }

    /// Aborts the communicator: shuts every connection, so the peers' operations fail at once.
    pub fn abort(&self, cause: &str) {
        let mut state = self.lock();
        abort_state(&mut state, cause);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside an operation leaves the state usable (the links carry no half-applied invariants).
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn invalid(&self, op: OpCode, reason: String) -> CommError {
        CommError::InvalidArgument {
            rank: self.rank,
            op: op.name(),
            reason,
        }
    }

    fn check_peer(&self, op: OpCode, peer: usize, role: &str) -> Result<(), CommError> {
        if peer >= self.world_size {
            return Err(self.invalid(
                op,
                format!("{role} rank {peer} is outside a group of {}", self.world_size),
            ));
        }
        if peer == self.rank {
            return Err(self.invalid(op, format!("{role} rank {peer} is this rank")));
        }
        Ok(())
    }

    /// Runs one operation under the lock, aborting the communicator if it fails.
    fn run<R>(&self, op: OpCode, body: impl FnOnce(&mut Session<'_>) -> Result<R, CommError>) -> Result<R, CommError> {
        let mut state = self.lock();
        if let Some(cause) = &state.aborted {
            return Err(CommError::Aborted {
                rank: self.rank,
                cause: cause.clone(),
            });
        }
        let mut session = Session {
            rank: self.rank,
            world: self.world_size,
            op,
            deadline: Instant::now() + self.config.op_timeout,
            timeout: self.config.op_timeout,
            links: &mut state.links,
        };
        let result = body(&mut session);
        if let Err(error) = &result
            && !matches!(error, CommError::InvalidArgument { .. })
        {
            tracing::warn!(rank = self.rank, %error, "communicator aborted");
            abort_state(&mut state, &error.to_string());
        }
        result
    }

    fn all_reduce_typed<T: Element>(&self, data: &mut [T]) -> Result<(), CommError> {
        if self.world_size == 1 {
            return Ok(());
        }
        let bytes = std::mem::size_of_val(data);
        self.run(OpCode::AllReduce, |s| {
            if bytes <= self.config.ring_threshold_bytes {
                collectives::direct_all_reduce(s, data)
            } else {
                collectives::ring_all_reduce(s, data)
            }
        })
    }

    fn all_gather_typed<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<(), CommError> {
        let n = self.world_size;
        if output.len() != input.len() * n {
            return Err(self.invalid(
                OpCode::AllGather,
                format!(
                    "output holds {} elements, {} ranks × {} needs {}",
                    output.len(),
                    n,
                    input.len(),
                    input.len() * n
                ),
            ));
        }
        let ranges: Vec<_> = (0..n).map(|r| r * input.len()..(r + 1) * input.len()).collect();
        output[ranges[self.rank].clone()].copy_from_slice(input);
        if n == 1 {
            return Ok(());
        }
        self.run(OpCode::AllGather, |s| collectives::ring_all_gather(s, output, &ranges))
    }

    fn reduce_scatter_typed<T: Element>(&self, input: &[T], output: &mut [T]) -> Result<(), CommError> {
        let n = self.world_size;
        if input.len() != output.len() * n {
            return Err(self.invalid(
                OpCode::ReduceScatter,
                format!(
                    "input holds {} elements, {} ranks × {} needs {}",
                    input.len(),
                    n,
                    output.len(),
                    output.len() * n
                ),
            ));
        }
        let ranges: Vec<_> = (0..n).map(|r| r * output.len()..(r + 1) * output.len()).collect();
        if n == 1 {
            output.copy_from_slice(input);
            return Ok(());
        }
        let mut work = input.to_vec();
        self.run(OpCode::ReduceScatter, |s| {
            collectives::ring_reduce_scatter(s, &mut work, &ranges)
        })?;
        output.copy_from_slice(&work[ranges[self.rank].clone()]);
        Ok(())
    }

    fn send_recv_typed<T: Element>(&self, send: &[T], dst: usize, recv: &mut [T], src: usize) -> Result<(), CommError> {
        if dst == self.rank && src == self.rank {
            if send.len() != recv.len() {
                return Err(self.invalid(OpCode::PointToPoint, "send and recv lengths differ".to_owned()));
            }
            recv.copy_from_slice(send);
            return Ok(());
        }
        self.check_peer(OpCode::PointToPoint, dst, "destination")?;
        self.check_peer(OpCode::PointToPoint, src, "source")?;
        self.run(OpCode::PointToPoint, |s| {
            s.post(dst, send)?;
            s.recv_into(src, recv)?;
            s.wait_sent(dst)
        })
    }

    fn all_to_all_typed<T: Element>(
        &self,
        send: &[T],
        send_counts: &[usize],
        recv: &mut [T],
        recv_counts: &[usize],
    ) -> Result<(), CommError> {
        let n = self.world_size;
        if send_counts.len() != n || recv_counts.len() != n {
            return Err(self.invalid(
                OpCode::AllToAll,
                format!(
                    "{} send counts and {} recv counts for {n} ranks",
                    send_counts.len(),
                    recv_counts.len()
                ),
            ));
        }
        let send_ranges = collectives::ranges_of(send_counts, send.len(), "send counts")
            .map_err(|r| self.invalid(OpCode::AllToAll, r))?;
        let recv_ranges = collectives::ranges_of(recv_counts, recv.len(), "recv counts")
            .map_err(|r| self.invalid(OpCode::AllToAll, r))?;
        if send_counts[self.rank] != recv_counts[self.rank] {
            return Err(self.invalid(
                OpCode::AllToAll,
                format!(
                    "this rank sends itself {} elements but expects {}",
                    send_counts[self.rank], recv_counts[self.rank]
                ),
            ));
        }
        if n == 1 {
            recv.copy_from_slice(send);
            return Ok(());
        }
        self.run(OpCode::AllToAll, |s| {
            collectives::all_to_all(s, send, &send_ranges, recv, &recv_ranges)
        })
    }
}

fn abort_state(state: &mut State, cause: &str) {
    if state.aborted.is_none() {
        state.aborted = Some(cause.to_owned());
    }
    for link in state.links.iter().flatten() {
        link.shutdown();
    }
}

impl Communicator for TcpCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, data: HostSliceMut<'_>) -> Result<(), CommError> {
        match data {
            HostSliceMut::F32(d) => self.all_reduce_typed(d),
            HostSliceMut::Bf16(d) => self.all_reduce_typed(d),
            HostSliceMut::U32(d) => self.all_reduce_typed(d),
        }
    }

    fn all_gather(&self, input: HostSlice<'_>, output: HostSliceMut<'_>) -> Result<(), CommError> {
        same_dtype!(self, OpCode::AllGather, input, output, |i, o| self
            .all_gather_typed(i, o))
    }

    fn reduce_scatter_sum(&self, input: HostSlice<'_>, output: HostSliceMut<'_>) -> Result<(), CommError> {
        same_dtype!(self, OpCode::ReduceScatter, input, output, |i, o| self
            .reduce_scatter_typed(i, o))
    }

    fn send(&self, data: HostSlice<'_>, dst: usize) -> Result<(), CommError> {
        self.check_peer(OpCode::PointToPoint, dst, "destination")?;
        self.run(OpCode::PointToPoint, |s| {
            match data {
                HostSlice::F32(d) => s.post(dst, d),
                HostSlice::Bf16(d) => s.post(dst, d),
                HostSlice::U32(d) => s.post(dst, d),
            }
            .and_then(|()| s.wait_sent(dst))
        })
    }

    fn recv(&self, data: HostSliceMut<'_>, src: usize) -> Result<(), CommError> {
        self.check_peer(OpCode::PointToPoint, src, "source")?;
        self.run(OpCode::PointToPoint, |s| match data {
            HostSliceMut::F32(d) => s.recv_into(src, d),
            HostSliceMut::Bf16(d) => s.recv_into(src, d),
            HostSliceMut::U32(d) => s.recv_into(src, d),
        })
    }

    fn send_recv(&self, send: HostSlice<'_>, dst: usize, recv: HostSliceMut<'_>, src: usize) -> Result<(), CommError> {
        same_dtype!(self, OpCode::PointToPoint, send, recv, |i, o| self
            .send_recv_typed(i, dst, o, src))
    }

    fn all_to_all(
        &self,
        send: HostSlice<'_>,
        send_counts: &[usize],
        recv: HostSliceMut<'_>,
        recv_counts: &[usize],
    ) -> Result<(), CommError> {
        same_dtype!(self, OpCode::AllToAll, send, recv, |i, o| self.all_to_all_typed(
            i,
            send_counts,
            o,
            recv_counts
        ))
    }

    fn barrier(&self) -> Result<(), CommError> {
        if self.world_size == 1 {
            return Ok(());
        }
        self.run(OpCode::Barrier, collectives::barrier)
    }
}
