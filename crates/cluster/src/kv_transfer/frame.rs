//! Encoding and decoding of the frames listed in the module doc of `kv_transfer`.
//!
//! Invariant: a decoder never trusts a length it has not compared with a bound derived from the negotiated layout,
//! and reading a body never allocates more than that bound. Encoding a Hello is one small allocation; payloads are
//! never copied on little-endian hosts.

use std::borrow::Cow;
use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::KvTransferError;
use super::layout::{KvDtype, KvLayout, KvTransferHeader, MAX_ID_LEN, TransferMode};

pub(crate) const MAGIC: [u8; 4] = *b"CLKV";
pub(crate) const VERSION: u16 = 3;
pub(crate) const FRAME_HEADER_LEN: usize = 5;
/// Bytes in a Layer frame's body ahead of the payload: layer and n_blocks.
pub(crate) const LAYER_PREFIX_LEN: usize = 8;
pub(crate) const MAX_REASON_LEN: usize = 1024;
/// A Hello without destination blocks: magic, version, three length-prefixed ids, dtype, mode, six u32 fields.
const HELLO_FIXED_MAX: usize = 4 + 2 + 3 * (2 + MAX_ID_LEN) + 2 + 6 * 4;
/// The longest pool descriptor a Grant frame carries.
pub(crate) const MAX_GRANT_LEN: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FrameKind {
    Hello = 1,
    Layer = 2,
    End = 3,
    Abort = 4,
    Accept = 5,
    Complete = 6,
    Grant = 7,
    Landed = 8,
}

impl FrameKind {
    pub(crate) fn from_wire(code: u8) -> Option<Self> {
        Some(match code {
            1 => FrameKind::Hello,
            2 => FrameKind::Layer,
            3 => FrameKind::End,
            4 => FrameKind::Abort,
            5 => FrameKind::Accept,
            6 => FrameKind::Complete,
            7 => FrameKind::Grant,
            8 => FrameKind::Landed,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "Hello",
            FrameKind::Layer => "Layer",
            FrameKind::End => "End",
            FrameKind::Abort => "Abort",
            FrameKind::Accept => "Accept",
            FrameKind::Complete => "Complete",
            FrameKind::Grant => "Grant",
            FrameKind::Landed => "Landed",
        }
    }
}

pub(crate) fn frame_header(kind: FrameKind, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut out = [0u8; FRAME_HEADER_LEN];
    out[0] = kind as u8;
    out[1..].copy_from_slice(&len.to_le_bytes());
    out
}

/// Reads a frame header; returns the raw kind byte so callers can report unknown kinds verbatim.
pub(crate) async fn read_frame_header<R: AsyncRead + Unpin>(reader: &mut R) -> std::io::Result<(u8, u32)> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    reader.read_exact(&mut header).await?;
    Ok((
        header[0],
        u32::from_le_bytes([header[1], header[2], header[3], header[4]]),
    ))
}

/// The longest Hello body a receiver with a pool of `pool_blocks` blocks accepts.
pub(crate) fn hello_max_len(pool_blocks: u32) -> usize {
    HELLO_FIXED_MAX + 4 * pool_blocks as usize
}

/// A whole Hello frame, header included. The header must already be validated (ids within `MAX_ID_LEN`).
pub(crate) fn encode_hello(header: &KvTransferHeader) -> Vec<u8> {
    let layout = &header.layout;
    let ids = [&header.transfer_id, &layout.model_id, &header.link];
    let body_len = 4 + 2 + ids.iter().map(|id| 2 + id.len()).sum::<usize>() + 2 + 6 * 4 + 4 * header.dest_blocks.len();
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body_len);
    out.extend_from_slice(&frame_header(FrameKind::Hello, body_len as u32));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    for id in ids {
        out.extend_from_slice(&(id.len() as u16).to_le_bytes());
        out.extend_from_slice(id.as_bytes());
    }
    out.push(layout.dtype.wire_code());
    out.push(header.mode.wire_code());
    for field in [
        layout.block_size,
        layout.n_layers,
        layout.kv_heads.start,
        layout.kv_heads.end,
        layout.head_dim,
        header.dest_blocks.len() as u32,
    ] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    for block in &header.dest_blocks {
        out.extend_from_slice(&block.to_le_bytes());
    }
    out
}

/// Parses a Hello body; every read is bounds-checked against the body and names the field it was reading.
pub(crate) fn decode_hello(body: &[u8]) -> Result<KvTransferHeader, KvTransferError> {
    let mut cursor = Cursor { rest: body };
    let magic = cursor.take("magic", 4)?;
    if magic != MAGIC {
        return Err(KvTransferError::BadMagic {
            got: [magic[0], magic[1], magic[2], magic[3]],
        });
    }
    let version = cursor.u16("version")?;
    if version != VERSION {
        return Err(KvTransferError::UnsupportedVersion {
            got: version,
            supported: VERSION,
        });
    }
    let transfer_id = cursor.string("transfer_id")?;
    let model_id = cursor.string("model_id")?;
    let link = cursor.string("link")?;
    let dtype = KvDtype::from_wire_code(cursor.take("dtype", 1)?[0])?;
    let mode = TransferMode::from_wire_code(cursor.take("mode", 1)?[0])?;
    let block_size = cursor.u32("block_size")?;
    let n_layers = cursor.u32("n_layers")?;
    let heads_start = cursor.u32("kv_heads")?;
    let heads_end = cursor.u32("kv_heads")?;
    let head_dim = cursor.u32("head_dim")?;
    let n_blocks = cursor.u32("dest_blocks")? as usize;
    if cursor.rest.len() != 4 * n_blocks {
        return Err(KvTransferError::InvalidHeader {
            field: "dest_blocks",
            reason: format!("count says {n_blocks} blocks but {} bytes follow", cursor.rest.len()),
        });
    }
    let dest_blocks = cursor
        .rest
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(KvTransferHeader {
        transfer_id,
        layout: KvLayout {
            model_id,
            dtype,
            block_size,
            n_layers,
            kv_heads: heads_start..heads_end,
            head_dim,
        },
        mode,
        link,
        dest_blocks,
    })
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], KvTransferError> {
        if self.rest.len() < n {
            return Err(KvTransferError::InvalidHeader {
                field,
                reason: "the Hello frame ends inside it".to_owned(),
            });
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, KvTransferError> {
        let b = self.take(field, 2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, KvTransferError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, field: &'static str) -> Result<String, KvTransferError> {
        let len = self.u16(field)? as usize;
        if len > MAX_ID_LEN {
            return Err(KvTransferError::InvalidHeader {
                field,
                reason: format!("{len} bytes, over {MAX_ID_LEN}"),
            });
        }
        let bytes = self.take(field, len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| KvTransferError::InvalidHeader {
            field,
            reason: "not UTF-8".to_owned(),
        })
    }
}

/// A whole frame of `kind` whose body is `body` (Grant's descriptor, Landed's layer).
pub(crate) fn encode_frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + body.len());
    out.extend_from_slice(&frame_header(kind, body.len() as u32));
    out.extend_from_slice(body);
    out
}

/// A whole Abort frame; the reason is cut at a character boundary to fit `MAX_REASON_LEN`.
pub(crate) fn encode_abort(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + end);
    out.extend_from_slice(&frame_header(FrameKind::Abort, end as u32));
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

/// Reads an Abort body of `len` bytes (already read header) into its reason.
pub(crate) async fn read_abort_reason<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: u32,
) -> Result<String, KvTransferError> {
    if len as usize > MAX_REASON_LEN {
        return Err(KvTransferError::BadFrameLength {
            kind: "Abort",
            len,
            constraint: format!("over the {MAX_REASON_LEN}-byte reason limit"),
        });
    }
    let mut body = vec![0u8; len as usize];
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| KvTransferError::io("read an Abort reason", e))?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The wire bytes of a float slice: the slice itself on little-endian hosts.
pub(crate) fn f32_wire_bytes(values: &[f32]) -> Cow<'_, [u8]> {
    #[cfg(target_endian = "little")]
    {
        Cow::Borrowed(bytemuck::cast_slice(values))
    }
    #[cfg(target_endian = "big")]
    {
        Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// Reads `n` wire floats straight into `values` (no staging buffer on little-endian hosts), reusing its memory
/// when it already holds `n` floats.
pub(crate) async fn read_f32s_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    values: &mut Vec<f32>,
    n: usize,
) -> std::io::Result<()> {
    if values.len() != n {
        // Every byte is overwritten below; the zeroed allocation is only there to avoid uninitialised memory.
        *values = vec![0f32; n];
    }
    reader.read_exact(bytemuck::cast_slice_mut(values)).await?;
    #[cfg(target_endian = "big")]
    for v in values.iter_mut() {
        *v = f32::from_bits(u32::from_le(v.to_bits()));
    }
    Ok(())
}

/// Writes all of `parts` with vectored writes, so a frame header and two payload slices cost one syscall where
/// the socket allows.
pub(crate) async fn write_all_parts<W: AsyncWrite + Unpin>(writer: &mut W, parts: &[&[u8]]) -> std::io::Result<()> {
    let mut part = 0;
    let mut offset = 0;
    while part < parts.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(&parts[part][offset..])
            .chain(parts[part + 1..].iter().copied())
            .map(IoSlice::new)
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while part < parts.len() && written >= parts[part].len() - offset {
            written -= parts[part].len() - offset;
            part += 1;
            offset = 0;
        }
        offset += written;
    }
    writer.flush().await
}
