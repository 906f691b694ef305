//! Layer-wise KV-cache transfer over TCP, from a prefill worker to a decode worker (DESIGN.md, steps 4–7).
//!
//! The prefill worker opens a [`KvSender`] per request and ships each layer's blocks as soon as that layer is
//! computed; the decode worker's [`KvReceiver`] yields one [`IncomingTransfer`] per connection, whose layers arrive
//! while later layers are still being computed, so compute and transfer overlap. GPU transports (NCCL, CUDA IPC)
//! will implement the same header, the same per-layer payloads and the same [`KvSink`].
//!
//! # Wire format, version 3
//!
//! Every frame is `[kind: u8][len: u32 LE][body: len bytes]`; all integers are little-endian and every float is an
//! IEEE-754 `f32` in little-endian byte order.
//!
//! | kind | name     | direction | body |
//! |------|----------|-----------|------|
//! | 1    | Hello    | P → D | `b"CLKV"`, version `u16`, transfer id (`u16` len + UTF-8), model id (`u16` len + UTF-8), link (`u16` len + UTF-8: an NCCL link's name, empty unless the direct writes go over one), dtype `u8` (0 = f32, 1 = bf16), mode `u8` (0 = payload, 1 = direct), block_size `u32`, n_layers `u32`, kv head range start `u32`, end `u32`, head_dim `u32`, n_dest_blocks `u32`, dest block ids `u32 × n` |
//! | 2    | Layer    | P → D | layer `u32`, n_blocks `u32`, keys `f32 × n_blocks·block_floats`, values the same |
//! | 3    | End      | P → D | empty |
//! | 4    | Abort    | both  | reason, UTF-8, at most 1024 bytes |
//! | 5    | Accept   | D → P | empty: the header matches the decode worker's layout |
//! | 6    | Complete | D → P | empty: every layer arrived |
//! | 7    | Grant    | D → P | direct mode: the receiver's pool descriptor (opaque, at most 64 KiB), after Accept |
//! | 8    | Landed   | P → D | direct mode: layer `u32` is in the receiver's pool |
//!
//! `block_floats = n_kv_heads · block_size · head_dim`: one block of one layer in the engine's
//! `[block][kv_head][slot][head_dim]` layout, the keys of all listed blocks back to back, then their values.
//! A sender writes Hello and waits for Accept (or an Abort naming the mismatched field), then sends each layer
//! exactly once in any order, then End, and waits for Complete. Either side may send Abort instead and close.
//! In direct mode the header's dtype is the pools' (bf16), the receiver sends Grant once the transfer is matched to
//! a waiting request, and Landed frames replace Layer frames; a sender closes the connection only after its device
//! stopped writing, which is what lets the receiver reuse the blocks of a request that ended meanwhile. Direct mode
//! over an NCCL link (a non-empty link in the Hello): the receiver queues the receipt of every layer on the link
//! before it grants (an empty descriptor), and each Landed frame says the layer left the sender.
//!
//! # Invariants
//!
//! The receiver checks every length against the layout it negotiated before it allocates or reads a payload, so a
//! garbled or hostile stream costs at most one legitimate layer's memory. Every read has a timeout and the whole
//! transfer has a deadline; a stream that ends early or stalls becomes a failed [`TransferOutcome`] that lists the
//! layers which did arrive — never a panic or a hang.
//!
//! # Cost
//!
//! On little-endian hosts floats are never converted: the sender writes the caller's slices with vectored writes and
//! the receiver reads straight into the `Vec<f32>` it hands on. Layers the consumer gives back through
//! [`IncomingTransfer::recycle`] (as [`IncomingTransfer::write_into`] does) are read into again, which spares the
//! page faults of a fresh 2 × layer-sized allocation per layer. On loopback a 2k-token Llama-3.1-8B-shaped transfer
//! runs at about three quarters of raw TCP with recycling and at the speed of raw TCP into fresh buffers without
//! (`tests/kv_transfer_bench.rs`).

mod connection;
mod error;
mod frame;
mod incoming;
mod layout;
mod receiver;
mod sender;
mod stream;

#[cfg(test)]
mod tests;

pub use error::KvTransferError;
pub use incoming::{IncomingTransfer, LayerPayload, RejectedTransfer, TransferOutcome};
pub use layout::{KvDtype, KvLayout, KvTransferHeader, TransferMode};
pub use receiver::{KvReceiver, ReceiverConfig};
pub use sender::{DEFAULT_IO_TIMEOUT, KvSender};

/// Where a decode worker puts the layers it receives: the engine implements this over its paged KV cache.
///
/// `keys` and `values` each hold `dest_blocks.len()` blocks of `n_kv_heads · block_size · head_dim` floats, block
/// `i` of the payload going to block `dest_blocks[i]` of `layer`. The transport has already checked the layout and
/// the block ids against the receiver's configuration; the sink only copies. It runs on the receiving task, so it
/// must be quick (a memcpy per block), and an error aborts the transfer and tells the sender why.
pub trait KvSink {
    type Error: std::error::Error + Send + Sync + 'static;

    fn write_layer(
        &self,
        transfer_id: &str,
        layer: u32,
        dest_blocks: &[u32],
        keys: &[f32],
        values: &[f32],
    ) -> Result<(), Self::Error>;
}
