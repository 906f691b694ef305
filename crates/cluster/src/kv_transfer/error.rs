//! The one error type of the KV transfer: each variant names the field, frame or layer that went wrong, so a
//! refusal read back on the prefill worker explains itself without the decode worker's logs.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum KvTransferError {
    #[error("kv transfer: {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("kv transfer: timed out after {after:?} waiting to {waiting_for}")]
    Timeout { waiting_for: &'static str, after: Duration },

    #[error("kv transfer: the transfer deadline of {deadline:?} passed while waiting to {waiting_for}")]
    DeadlineExceeded {
        waiting_for: &'static str,
        deadline: Duration,
    },

    #[error("kv transfer: {field} {got} does not match this worker's {expected}")]
    LayoutMismatch {
        field: &'static str,
        got: String,
        expected: String,
    },

    #[error("kv transfer: header field {field} is invalid: {reason}")]
    InvalidHeader { field: &'static str, reason: String },

    #[error("kv transfer: not a cleave KV stream (magic bytes {got:02x?})")]
    BadMagic { got: [u8; 4] },

    #[error("kv transfer: wire version {got} is not supported (this build speaks {supported})")]
    UnsupportedVersion { got: u16, supported: u16 },

    #[error("kv transfer: expected {expected}, got frame kind {got}")]
    UnexpectedFrame { expected: &'static str, got: u8 },

    #[error("kv transfer: {kind} frame of {len} bytes, {constraint}")]
    BadFrameLength {
        kind: &'static str,
        len: u32,
        constraint: String,
    },

    #[error("kv transfer: layer {layer}: {reason}")]
    InvalidLayer { layer: u32, reason: String },

    #[error("kv transfer: layer {layer}: {field} holds {got} floats, the header's blocks need {expected}")]
    PayloadLength {
        layer: u32,
        field: &'static str,
        got: usize,
        expected: usize,
    },

    #[error("kv transfer: ended with {missing} of {n_layers} layers missing (first missing: layer {first_missing})")]
    Incomplete {
        missing: u32,
        n_layers: u32,
        first_missing: u32,
    },

    #[error("kv transfer: the stream ended before {expected}")]
    ConnectionClosed { expected: &'static str },

    #[error("kv transfer: the peer aborted: {reason}")]
    PeerAborted { reason: String },

    #[error("kv transfer: the receiving side stopped consuming layers")]
    ConsumerGone,

    #[error("kv transfer: the connection task ended without reporting an outcome")]
    TaskEnded,

    #[error("kv transfer: writing layer {layer} into the KV cache failed: {source}")]
    Sink {
        layer: u32,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl KvTransferError {
    /// Maps an I/O error, turning an early end of stream into [`KvTransferError::ConnectionClosed`] because a
    /// truncated transfer is an expected failure, not an I/O fault.
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            KvTransferError::ConnectionClosed { expected: context }
        } else {
            KvTransferError::Io { context, source }
        }
    }
}
