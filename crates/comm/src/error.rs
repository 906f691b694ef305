//! Errors of the communicators: each names the rank that saw it, the operation and, where one is involved, the
//! peer — so one log line says which member failed during what.
//!
//! Invariant: after any error but `InvalidArgument` the communicator is aborted (its connections are shut down so
//! the other members fail fast too) and every later call returns `Aborted` carrying the first error.
//! Cost: building an error formats strings; nothing on a hot path.

use std::time::Duration;

/// A communicator failure.
#[derive(Debug, thiserror::Error)]
pub enum CommError {
    /// The call itself is wrong (a buffer of the wrong length, a rank out of range); nothing was sent and the
    /// communicator stays usable.
    #[error("rank {rank}: invalid {op}: {reason}")]
    InvalidArgument {
        rank: usize,
        op: &'static str,
        reason: String,
    },
    /// A peer did not send or accept its part of `op` within the operation timeout.
    #[error("rank {rank}: {op} timed out after {timeout:?} waiting for rank {peer}")]
    Timeout {
        rank: usize,
        op: &'static str,
        peer: usize,
        timeout: Duration,
    },
    /// A peer's connection closed: it exited, was killed, or aborted after an error of its own.
    #[error("rank {rank}: connection to rank {peer} closed during {op} (the peer exited or aborted)")]
    PeerClosed { rank: usize, op: &'static str, peer: usize },
    /// Reading from or writing to a peer failed.
    #[error("rank {rank}: I/O with rank {peer} failed during {op}: {source}")]
    Io {
        rank: usize,
        op: &'static str,
        peer: usize,
        #[source]
        source: std::io::Error,
    },
    /// A peer sent something this rank did not expect: the members called different operations, or the same
    /// operation with different sizes or element types.
    #[error("rank {rank}: mismatched {op} with rank {peer}: {reason}")]
    Mismatch {
        rank: usize,
        op: &'static str,
        peer: usize,
        reason: String,
    },
    /// The communicator was aborted by an earlier error; it cannot be used again.
    #[error("rank {rank}: communicator aborted by an earlier error: {cause}")]
    Aborted { rank: usize, cause: String },
    /// The mesh could not be formed: a peer was unreachable or answered as someone else.
    #[error("rank {rank}: could not connect to rank {peer} at {addr}: {reason}")]
    Connect {
        rank: usize,
        peer: usize,
        addr: String,
        reason: String,
    },
    /// NCCL (or the CUDA driver under it) failed or is not installed.
    #[error("rank {rank}: NCCL {op} failed: {reason}")]
    Nccl {
        rank: usize,
        op: &'static str,
        reason: String,
    },
}

impl CommError {
    /// Whether the error means a member of the group is gone or unresponsive (the group must be re-formed).
    pub fn is_peer_failure(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::PeerClosed { .. }
                | Self::Io { .. }
                | Self::Aborted { .. }
                | Self::Connect { .. }
        )
    }
}
