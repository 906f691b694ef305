//! What a transfer carries: the KV layout both sides must share and the per-request header (transfer id and
//! destination blocks). A receiver accepts a header only if its layout equals the receiver's own field by field,
//! so every later length check can trust these numbers. Checking costs a handful of comparisons per transfer.

use std::ops::Range;

use super::KvTransferError;

/// Longest transfer id or model id the wire format carries.
pub(crate) const MAX_ID_LEN: usize = 256;

/// Element type of the keys and values: on the wire for payload transfers (f32), in the pools for direct ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F32,
    Bf16,
}

impl KvDtype {
    pub(crate) fn wire_code(self) -> u8 {
        match self {
            KvDtype::F32 => 0,
            KvDtype::Bf16 => 1,
        }
    }

    pub(crate) fn from_wire_code(code: u8) -> Result<Self, KvTransferError> {
        match code {
            0 => Ok(KvDtype::F32),
            1 => Ok(KvDtype::Bf16),
            other => Err(KvTransferError::InvalidHeader {
                field: "dtype",
                reason: format!("unknown dtype code {other} (known: 0 = f32, 1 = bf16)"),
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
        }
    }
}

/// The shape of one worker's KV cache, per layer `[block][kv_head][slot][head_dim]`.
///
/// `kv_heads` is the range of the model's KV heads this worker holds: `0..n_kv_heads` without tensor parallelism,
/// a shard of it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvLayout {
    pub model_id: String,
    pub dtype: KvDtype,
    pub block_size: u32,
    pub n_layers: u32,
    pub kv_heads: Range<u32>,
    pub head_dim: u32,
}

impl KvLayout {
    pub fn n_kv_heads(&self) -> u32 {
        self.kv_heads.end.saturating_sub(self.kv_heads.start)
    }

    /// Floats in one block of one layer, for keys (values hold as many).
    pub fn block_floats(&self) -> usize {
        self.n_kv_heads() as usize * self.block_size as usize * self.head_dim as usize
    }

    /// Rejects layouts no engine can hold, so lengths derived from a layout are meaningful and bounded.
    pub(crate) fn validate(&self) -> Result<(), KvTransferError> {
        let invalid = |field: &'static str, reason: &str| {
            Err(KvTransferError::InvalidHeader {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.model_id.is_empty() || self.model_id.len() > MAX_ID_LEN {
            return invalid("model_id", "must be 1..=256 bytes");
        }
        if self.block_size == 0 {
            return invalid("block_size", "must be positive");
        }
        if self.n_layers == 0 {
            return invalid("n_layers", "must be positive");
        }
        if self.kv_heads.start >= self.kv_heads.end {
            return invalid("kv_heads", "the head range is empty");
        }
        if self.head_dim == 0 {
            return invalid("head_dim", "must be positive");
        }
        // One block must fit a 32-bit frame length with room for both keys and values.
        let block_bytes = 2 * self.n_kv_heads() as u64 * self.block_size as u64 * self.head_dim as u64 * 4;
        if block_bytes > u32::MAX as u64 / 2 {
            return invalid("block_size", "one block of keys and values exceeds 2 GiB");
        }
        Ok(())
    }

    /// Checks a peer's layout against this worker's (`self`), naming the first field that differs.
    pub fn check_matches(&self, theirs: &KvLayout) -> Result<(), KvTransferError> {
        let mismatch = |field: &'static str, got: String, expected: String| {
            Err(KvTransferError::LayoutMismatch { field, got, expected })
        };
        if theirs.model_id != self.model_id {
            return mismatch(
                "model_id",
                format!("{:?}", theirs.model_id),
                format!("{:?}", self.model_id),
            );
        }
        if theirs.dtype != self.dtype {
            return mismatch("dtype", theirs.dtype.name().to_owned(), self.dtype.name().to_owned());
        }
        if theirs.block_size != self.block_size {
            return mismatch("block_size", theirs.block_size.to_string(), self.block_size.to_string());
        }
        if theirs.n_layers != self.n_layers {
            return mismatch("n_layers", theirs.n_layers.to_string(), self.n_layers.to_string());
        }
        if theirs.kv_heads != self.kv_heads {
            return mismatch(
                "kv_heads",
                format!("{:?}", theirs.kv_heads),
                format!("{:?}", self.kv_heads),
            );
        }
        if theirs.head_dim != self.head_dim {
            return mismatch("head_dim", theirs.head_dim.to_string(), self.head_dim.to_string());
        }
        Ok(())
    }
}

/// How the layers travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransferMode {
    /// Layer frames carry the keys and values (TCP).
    #[default]
    Payload,
    /// The sender writes the blocks straight into the receiver's pool, which the receiver grants it after
    /// accepting the header (CUDA IPC on one host); Landed frames say which layers are in place.
    Direct,
}

impl TransferMode {
    pub(crate) fn wire_code(self) -> u8 {
        match self {
            TransferMode::Payload => 0,
            TransferMode::Direct => 1,
        }
    }

    pub(crate) fn from_wire_code(code: u8) -> Result<Self, KvTransferError> {
        match code {
            0 => Ok(TransferMode::Payload),
            1 => Ok(TransferMode::Direct),
            other => Err(KvTransferError::InvalidHeader {
                field: "mode",
                reason: format!("unknown transfer mode {other} (known: 0 = payload, 1 = direct)"),
            }),
        }
    }
}

/// Everything a receiver needs before the first payload byte: whose cache this is and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvTransferHeader {
    /// The request id; names the transfer in logs and in [`super::KvSink::write_layer`].
    pub transfer_id: String,
    pub layout: KvLayout,
    pub mode: TransferMode,
    /// Direct mode over an NCCL link: the link's name (the receiver receives each layer over it and scatters it
    /// into the blocks); empty when the sender writes through CUDA IPC or sends payloads.
    pub link: String,
    /// Decode-worker block ids, in prompt order; payload block `i` lands in `dest_blocks[i]`.
    pub dest_blocks: Vec<u32>,
}

impl KvTransferHeader {
    /// Floats of keys (and of values) in one layer's frame.
    pub fn layer_floats(&self) -> usize {
        self.dest_blocks.len() * self.layout.block_floats()
    }

    /// Validates the header on its own; `pool_blocks` bounds block ids when the receiver knows its pool size.
    pub(crate) fn validate(&self, pool_blocks: Option<u32>) -> Result<(), KvTransferError> {
        if self.transfer_id.is_empty() || self.transfer_id.len() > MAX_ID_LEN {
            return Err(KvTransferError::InvalidHeader {
                field: "transfer_id",
                reason: "must be 1..=256 bytes".to_owned(),
            });
        }
        self.layout.validate()?;
        if self.link.len() > MAX_ID_LEN || (!self.link.is_empty() && self.mode != TransferMode::Direct) {
            return Err(KvTransferError::InvalidHeader {
                field: "link",
                reason: "at most 256 bytes, and only for a direct transfer".to_owned(),
            });
        }
        if self.dest_blocks.is_empty() {
            return Err(KvTransferError::InvalidHeader {
                field: "dest_blocks",
                reason: "no destination blocks".to_owned(),
            });
        }
        if let Some(pool) = pool_blocks
            && let Some(&bad) = self.dest_blocks.iter().find(|&&b| b >= pool)
        {
            return Err(KvTransferError::InvalidHeader {
                field: "dest_blocks",
                reason: format!("block {bad} is outside this worker's pool of {pool} blocks"),
            });
        }
        let mut sorted = self.dest_blocks.clone();
        sorted.sort_unstable();
        if let Some(pair) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(KvTransferError::InvalidHeader {
                field: "dest_blocks",
                reason: format!("block {} is listed twice", pair[0]),
            });
        }
        let layer_bytes = 2 * self.layer_floats() as u64 * 4 + 8;
        if layer_bytes > u32::MAX as u64 {
            return Err(KvTransferError::InvalidHeader {
                field: "dest_blocks",
                reason: format!("{} blocks make a layer frame over 4 GiB", self.dest_blocks.len()),
            });
        }
        Ok(())
    }
}
