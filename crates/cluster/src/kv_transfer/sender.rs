//! The prefill side: one connection per transfer, a Hello the receiver must accept, then one frame per layer.
//!
//! Invariant: every layer frame sent matches the header (payload length, layer in range, each layer once), so a
//! receiver that refuses a frame points at a bug on its own side or on the wire, never at this caller's input.
//! Each layer costs one vectored write of the caller's slices; dropping a sender closes the socket, which the
//! receiver reports as a failed transfer listing the layers that arrived.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::frame::{self, FrameKind, LAYER_PREFIX_LEN};
use super::stream::{self, KvReader, KvWriter};
use super::{KvTransferError, KvTransferHeader, TransferMode};
use crate::tls::ClusterTls;

/// How long [`KvSender::connect`] waits for any one step (connect, a layer write, a reply).
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a failed write waits for the receiver's Abort reason.
const ABORT_REASON_WAIT: Duration = Duration::from_secs(1);

pub struct KvSender {
    reader: KvReader,
    writer: KvWriter,
    header: KvTransferHeader,
    sent: Vec<bool>,
    io_timeout: Duration,
    /// Direct mode: the receiver's pool descriptor from its Grant.
    grant: Option<Vec<u8>>,
}

impl std::fmt::Debug for KvSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvSender")
            .field("header", &self.header)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl KvSender {
    /// Connects, sends the header, and returns once the receiver accepted it; a receiver whose layout differs
    /// answers with [`KvTransferError::PeerAborted`] naming the field.
    pub async fn connect(addr: impl std::fmt::Display, header: KvTransferHeader) -> Result<Self, KvTransferError> {
        Self::connect_with(&addr.to_string(), header, DEFAULT_IO_TIMEOUT, None).await
    }

    pub async fn connect_with_timeout(
        addr: impl std::fmt::Display,
        header: KvTransferHeader,
        io_timeout: Duration,
    ) -> Result<Self, KvTransferError> {
        Self::connect_with(&addr.to_string(), header, io_timeout, None).await
    }

    /// [`KvSender::connect`] to `addr` (`host:port`) with a timeout per step, over the cluster's mutual TLS
    /// when `tls` is given.
    pub async fn connect_with(
        addr: &str,
        header: KvTransferHeader,
        io_timeout: Duration,
        tls: Option<&ClusterTls>,
    ) -> Result<Self, KvTransferError> {
        header.validate(None)?;
        let (reader, writer) = timed(io_timeout, "connect", stream::connect(addr, tls, 8 * 1024)).await??;
        let mut sender = KvSender {
            reader,
            writer,
            sent: vec![false; header.layout.n_layers as usize],
            header,
            io_timeout,
            grant: None,
        };
        let hello = frame::encode_hello(&sender.header);
        timed(
            io_timeout,
            "send the header",
            frame::write_all_parts(&mut sender.writer, &[&hello]),
        )
        .await?
        .map_err(|e| KvTransferError::io("send the header", e))?;
        sender
            .expect_reply(FrameKind::Accept, "read the receiver's answer to the header")
            .await?;
        if sender.header.mode == TransferMode::Direct {
            sender.grant = Some(sender.read_grant().await?);
        }
        Ok(sender)
    }

    /// Direct mode: the receiver's pool descriptor, which says where to write the header's destination blocks.
    pub fn grant(&self) -> Option<&[u8]> {
        self.grant.as_deref()
    }

    /// Direct mode: tells the receiver that `layer`'s blocks are in its pool. Call it only once the device finished
    /// writing them.
    pub async fn landed(&mut self, layer: u32) -> Result<(), KvTransferError> {
        if self.header.mode != TransferMode::Direct {
            return Err(KvTransferError::InvalidLayer {
                layer,
                reason: "a payload transfer sends its layers, it does not report them landed".to_owned(),
            });
        }
        self.check_unsent(layer)?;
        let frame = frame::encode_frame(FrameKind::Landed, &layer.to_le_bytes());
        self.write_frame(&frame, "send a Landed frame").await?;
        self.sent[layer as usize] = true;
        Ok(())
    }

    async fn read_grant(&mut self) -> Result<Vec<u8>, KvTransferError> {
        let waiting_for = "read the receiver's grant of its pool";
        let (kind, len) = timed(self.io_timeout, waiting_for, frame::read_frame_header(&mut self.reader))
            .await?
            .map_err(|e| KvTransferError::io(waiting_for, e))?;
        match FrameKind::from_wire(kind) {
            Some(FrameKind::Grant) if len as usize <= frame::MAX_GRANT_LEN => {
                let mut body = vec![0u8; len as usize];
                timed(
                    self.io_timeout,
                    waiting_for,
                    tokio::io::AsyncReadExt::read_exact(&mut self.reader, &mut body),
                )
                .await?
                .map_err(|e| KvTransferError::io(waiting_for, e))?;
                Ok(body)
            }
            Some(FrameKind::Grant) => Err(KvTransferError::BadFrameLength {
                kind: "Grant",
                len,
                constraint: "over the 64 KiB a pool descriptor may take".to_owned(),
            }),
            Some(FrameKind::Abort) => Err(self.read_abort(len, waiting_for).await),
            _ => Err(KvTransferError::UnexpectedFrame {
                expected: "Grant",
                got: kind,
            }),
        }
    }

    /// Refuses layers out of range or sent before.
    fn check_unsent(&self, layer: u32) -> Result<(), KvTransferError> {
        let n_layers = self.header.layout.n_layers;
        match self.sent.get(layer as usize) {
            None => Err(KvTransferError::InvalidLayer {
                layer,
                reason: format!("the model has {n_layers} layers"),
            }),
            Some(true) => Err(KvTransferError::InvalidLayer {
                layer,
                reason: "already sent".to_owned(),
            }),
            Some(false) => Ok(()),
        }
    }

    /// Writes one whole frame, explaining a failure by the receiver's Abort when it sent one.
    async fn write_frame(&mut self, frame: &[u8], what: &'static str) -> Result<(), KvTransferError> {
        let written = timed(
            self.io_timeout,
            what,
            frame::write_all_parts(&mut self.writer, &[frame]),
        )
        .await?;
        if let Err(error) = written {
            return Err(self.explain_write_failure(KvTransferError::io(what, error)).await);
        }
        Ok(())
    }

    pub fn header(&self) -> &KvTransferHeader {
        &self.header
    }

    /// Sends one layer: `keys` and `values` each hold the header's blocks back to back,
    /// `dest_blocks.len() · n_kv_heads · block_size · head_dim` floats.
    pub async fn send_layer(&mut self, layer: u32, keys: &[f32], values: &[f32]) -> Result<(), KvTransferError> {
        if self.header.mode == TransferMode::Direct {
            return Err(KvTransferError::InvalidLayer {
                layer,
                reason: "a direct transfer writes into the receiver's pool; report the layer landed".to_owned(),
            });
        }
        self.check_unsent(layer)?;
        let expected = self.header.layer_floats();
        for (field, got) in [("keys", keys.len()), ("values", values.len())] {
            if got != expected {
                return Err(KvTransferError::PayloadLength {
                    layer,
                    field,
                    got,
                    expected,
                });
            }
        }
        // validate() bounded a layer frame to fit u32.
        let body_len = (LAYER_PREFIX_LEN + 2 * expected * 4) as u32;
        let mut head = [0u8; frame::FRAME_HEADER_LEN + LAYER_PREFIX_LEN];
        head[..frame::FRAME_HEADER_LEN].copy_from_slice(&frame::frame_header(FrameKind::Layer, body_len));
        head[frame::FRAME_HEADER_LEN..][..4].copy_from_slice(&layer.to_le_bytes());
        head[frame::FRAME_HEADER_LEN + 4..].copy_from_slice(&(self.header.dest_blocks.len() as u32).to_le_bytes());
        let (keys, values) = (frame::f32_wire_bytes(keys), frame::f32_wire_bytes(values));
        let written = timed(
            self.io_timeout,
            "send a layer",
            frame::write_all_parts(&mut self.writer, &[&head, &keys, &values]),
        )
        .await?;
        if let Err(error) = written {
            return Err(self
                .explain_write_failure(KvTransferError::io("send a layer", error))
                .await);
        }
        self.sent[layer as usize] = true;
        Ok(())
    }

    /// Ends the transfer and waits until the receiver confirms every layer arrived. Fails without sending End if
    /// a layer was never sent (the dropped connection then fails the transfer on the receiver too).
    pub async fn finish(mut self) -> Result<(), KvTransferError> {
        let missing = self.sent.iter().filter(|&&s| !s).count() as u32;
        if let Some(first_missing) = self.sent.iter().position(|&s| !s) {
            return Err(KvTransferError::Incomplete {
                missing,
                n_layers: self.header.layout.n_layers,
                first_missing: first_missing as u32,
            });
        }
        let end = frame::frame_header(FrameKind::End, 0);
        self.write_frame(&end, "send End").await?;
        self.expect_reply(FrameKind::Complete, "read the receiver's confirmation")
            .await
    }

    /// Tells the receiver why the transfer stops (prefill failed, request cancelled) and closes the connection.
    pub async fn abort(mut self, reason: &str) -> Result<(), KvTransferError> {
        let abort = frame::encode_abort(reason);
        timed(self.io_timeout, "send Abort", async {
            frame::write_all_parts(&mut self.writer, &[&abort]).await?;
            self.writer.shutdown().await
        })
        .await?
        .map_err(|e| KvTransferError::io("send Abort", e))
    }

    /// A write fails when the receiver closed the connection, usually right after sending an Abort that says
    /// why; that reason is worth more to the caller than "connection reset".
    async fn explain_write_failure(&mut self, write_error: KvTransferError) -> KvTransferError {
        let previous = std::mem::replace(&mut self.io_timeout, ABORT_REASON_WAIT);
        let reply = self
            .expect_reply(FrameKind::Abort, "read why the receiver closed")
            .await;
        self.io_timeout = previous;
        match reply {
            Err(aborted @ KvTransferError::PeerAborted { .. }) => aborted,
            _ => write_error,
        }
    }

    /// The receiver's Abort (its header already read) as the error to return.
    async fn read_abort(&mut self, len: u32, waiting_for: &'static str) -> KvTransferError {
        let read = timed(
            self.io_timeout,
            waiting_for,
            frame::read_abort_reason(&mut self.reader, len),
        )
        .await;
        match read {
            Ok(Ok(reason)) => KvTransferError::PeerAborted { reason },
            Ok(Err(error)) | Err(error) => error,
        }
    }

    async fn expect_reply(&mut self, expected: FrameKind, waiting_for: &'static str) -> Result<(), KvTransferError> {
        let (kind, len) = timed(self.io_timeout, waiting_for, frame::read_frame_header(&mut self.reader))
            .await?
            .map_err(|e| KvTransferError::io(waiting_for, e))?;
        match FrameKind::from_wire(kind) {
            Some(kind) if kind == expected && len == 0 => Ok(()),
            Some(FrameKind::Abort) => Err(self.read_abort(len, waiting_for).await),
            _ => Err(KvTransferError::UnexpectedFrame {
                expected: expected.name(),
                got: kind,
            }),
        }
    }
}

async fn timed<T>(
    after: Duration,
    waiting_for: &'static str,
    work: impl Future<Output = T>,
) -> Result<T, KvTransferError> {
    tokio::time::timeout(after, work)
        .await
        .map_err(|_| KvTransferError::Timeout { waiting_for, after })
}
