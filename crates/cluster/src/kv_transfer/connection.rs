//! One accepted connection on the decode side: read and check the Hello, answer Accept or Abort, then read layer
//! frames and hand them to the [`IncomingTransfer`] until End, Abort, an error or the deadline.
//!
//! Invariant: no frame is allocated for before its length is checked against the accepted header, no wait outlives
//! the transfer deadline, and every accepted transfer gets exactly one outcome listing the layers that arrived.
//! Cost: one task, a 64 KiB read buffer, and at most `layer_queue` + 2 layers of memory.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::frame::{self, FrameKind, LAYER_PREFIX_LEN};
use super::stream::{self, KvReader, KvWriter};
use super::{
    IncomingTransfer, KvLayout, KvTransferError, KvTransferHeader, LayerPayload, ReceiverConfig, RejectedTransfer,
    TransferMode, TransferOutcome,
};

const ABORT_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bounds every wait of one connection by the per-frame timeout and the whole-transfer deadline.
struct Clock {
    deadline: Instant,
    config: Arc<ReceiverConfig>,
}

impl Clock {
    async fn frame<T>(&self, waiting_for: &'static str, work: impl Future<Output = T>) -> Result<T, KvTransferError> {
        let frame_deadline = (Instant::now() + self.config.read_timeout).min(self.deadline);
        match tokio::time::timeout_at(frame_deadline, work).await {
            Ok(value) => Ok(value),
            Err(_) if frame_deadline >= self.deadline => Err(self.deadline_exceeded(waiting_for)),
            Err(_) => Err(KvTransferError::Timeout {
                waiting_for,
                after: self.config.read_timeout,
            }),
        }
    }

    async fn until_deadline<T>(
        &self,
        waiting_for: &'static str,
        work: impl Future<Output = T>,
    ) -> Result<T, KvTransferError> {
        tokio::time::timeout_at(self.deadline, work)
            .await
            .map_err(|_| self.deadline_exceeded(waiting_for))
    }

    fn deadline_exceeded(&self, waiting_for: &'static str) -> KvTransferError {
        KvTransferError::DeadlineExceeded {
            waiting_for,
            deadline: self.config.transfer_deadline,
        }
    }
}

pub(super) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ReceiverConfig>,
    incoming: mpsc::Sender<Result<IncomingTransfer, RejectedTransfer>>,
) {
    let clock = Clock {
        deadline: Instant::now() + config.transfer_deadline,
        config,
    };
    let tls = clock.config.tls.as_ref().map(|tls| tls.kv_acceptor());
    let opened = clock
        .frame(
            "complete the TLS handshake",
            stream::accept(stream, tls.as_ref(), 64 * 1024),
        )
        .await;
    let (mut reader, mut writer) = match opened {
        Ok(Ok(halves)) => halves,
        Ok(Err(error)) | Err(error) => {
            tracing::debug!(%peer, %error, "kv transfer: refused a connection");
            let _ = clock
                .until_deadline("report a refusal", incoming.send(Err(RejectedTransfer { peer, error })))
                .await;
            return;
        }
    };

    let accepted = match read_hello(&mut reader, &clock).await {
        Ok(header) => write_reply(&mut writer, &clock, FrameKind::Accept)
            .await
            .map(|()| header),
        Err(error) => Err(error),
    };
    let header = match accepted {
        Ok(header) => header,
        Err(error) => {
            tracing::debug!(%peer, %error, "kv transfer: refused a connection");
            send_abort(&mut writer, &error.to_string()).await;
            let _ = clock
                .until_deadline("report a refusal", incoming.send(Err(RejectedTransfer { peer, error })))
                .await;
            return;
        }
    };

    let (layer_tx, layers) = mpsc::channel(clock.config.layer_queue.max(1));
    let (outcome_tx, outcome) = oneshot::channel();
    // Two spare layers suffice: in steady state the consumer returns one for each one the reader takes.
    let (spent, mut spare) = mpsc::channel(2);
    let (grant, granted) = oneshot::channel();
    let direct = header.mode == TransferMode::Direct;
    let transfer = IncomingTransfer {
        header: header.clone(),
        peer,
        layers,
        outcome,
        spent,
        grant: direct.then_some(grant),
    };
    let handed_over = clock
        .until_deadline("hand the transfer to the decode worker", incoming.send(Ok(transfer)))
        .await;
    if !matches!(handed_over, Ok(Ok(()))) {
        send_abort(&mut writer, "the decode worker is not taking transfers").await;
        return;
    }

    if direct {
        let sent = match clock
            .until_deadline("wait for the decode worker's grant", granted)
            .await
        {
            Ok(Ok(descriptor)) => {
                let frame = frame::encode_frame(FrameKind::Grant, &descriptor);
                clock
                    .frame("send the grant", frame::write_all_parts(&mut writer, &[&frame]))
                    .await
                    .and_then(|r| r.map_err(|e| KvTransferError::io("send the grant", e)))
            }
            Ok(Err(_)) => Err(KvTransferError::ConsumerGone),
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            send_abort(&mut writer, &format!("no direct writes for this transfer: {error}")).await;
            let _ = outcome_tx.send(TransferOutcome::Failed {
                error,
                layers_received: vec![],
            });
            return;
        }
    }

    let mut received = vec![false; header.layout.n_layers as usize];
    let ending = receive_layers(&mut reader, &header, &clock, &layer_tx, &mut spare, &mut received).await;
    drop(layer_tx);
    let layers_received = (0..received.len() as u32).filter(|&l| received[l as usize]).collect();
    let outcome = match ending {
        Ok(Ending::End) => match write_reply(&mut writer, &clock, FrameKind::Complete).await {
            Ok(()) => TransferOutcome::Complete,
            Err(error) => TransferOutcome::Failed { error, layers_received },
        },
        Ok(Ending::Aborted(reason)) => TransferOutcome::Aborted {
            reason,
            layers_received,
        },
        Err(error) => {
            tracing::debug!(%peer, transfer_id = %header.transfer_id, %error, "kv transfer: failed");
            send_abort(&mut writer, &error.to_string()).await;
            TransferOutcome::Failed { error, layers_received }
        }
    };
    let _ = outcome_tx.send(outcome);
}

async fn read_hello(reader: &mut KvReader, clock: &Clock) -> Result<KvTransferHeader, KvTransferError> {
    let config = &clock.config;
    let (kind, len) = clock
        .frame("read the header", frame::read_frame_header(reader))
        .await?
        .map_err(|e| KvTransferError::io("read the header", e))?;
    if kind != FrameKind::Hello as u8 {
        return Err(KvTransferError::UnexpectedFrame {
            expected: "a Hello frame",
            got: kind,
        });
    }
    let max = frame::hello_max_len(config.pool_blocks);
    if len as usize > max {
        return Err(KvTransferError::BadFrameLength {
            kind: "Hello",
            len,
            constraint: format!("over the {max} bytes a header for this worker's pool can take"),
        });
    }
    let mut body = vec![0u8; len as usize];
    clock
        .frame(
            "read the header",
            tokio::io::AsyncReadExt::read_exact(reader, &mut body),
        )
        .await?
        .map_err(|e| KvTransferError::io("read the header", e))?;
    let header = frame::decode_hello(&body)?;
    match (header.mode, config.direct) {
        (TransferMode::Payload, _) => config.layout.check_matches(&header.layout)?,
        (TransferMode::Direct, Some(dtype)) => KvLayout {
            dtype,
            ..config.layout.clone()
        }
        .check_matches(&header.layout)?,
        (TransferMode::Direct, None) => {
            return Err(KvTransferError::InvalidHeader {
                field: "mode",
                reason: "this worker takes no direct writes into its pool; send the layers".to_owned(),
            });
        }
    }
    header.validate(Some(config.pool_blocks))?;
    Ok(header)
}

enum Ending {
    End,
    Aborted(String),
}

async fn receive_layers(
    reader: &mut KvReader,
    header: &KvTransferHeader,
    clock: &Clock,
    layer_tx: &mpsc::Sender<LayerPayload>,
    spare: &mut mpsc::Receiver<LayerPayload>,
    received: &mut [bool],
) -> Result<Ending, KvTransferError> {
    loop {
        let (kind, len) = clock
            .frame("read the next frame", frame::read_frame_header(reader))
            .await?
            .map_err(|e| KvTransferError::io("the next frame", e))?;
        let direct = header.mode == TransferMode::Direct;
        match FrameKind::from_wire(kind) {
            Some(FrameKind::Landed) if direct => {
                let layer = read_landed(reader, len, clock, received).await?;
                received[layer as usize] = true;
                let payload = LayerPayload {
                    layer,
                    keys: Vec::new(),
                    values: Vec::new(),
                };
                clock
                    .until_deadline("hand a layer to the decode worker", layer_tx.send(payload))
                    .await?
                    .map_err(|_| KvTransferError::ConsumerGone)?;
            }
            Some(FrameKind::Layer) if !direct => {
                let buffers = spare.try_recv().ok();
                let payload = read_layer(reader, header, len, clock, received, buffers).await?;
                received[payload.layer as usize] = true;
                clock
                    .until_deadline("hand a layer to the decode worker", layer_tx.send(payload))
                    .await?
                    .map_err(|_| KvTransferError::ConsumerGone)?;
            }
            Some(FrameKind::End) if len == 0 => {
                return match received.iter().position(|&r| !r) {
                    None => Ok(Ending::End),
                    Some(first_missing) => Err(KvTransferError::Incomplete {
                        missing: received.iter().filter(|&&r| !r).count() as u32,
                        n_layers: received.len() as u32,
                        first_missing: first_missing as u32,
                    }),
                };
            }
            Some(FrameKind::Abort) => {
                let reason = clock
                    .frame("read an Abort reason", frame::read_abort_reason(reader, len))
                    .await??;
                return Ok(Ending::Aborted(reason));
            }
            _ => {
                return Err(KvTransferError::UnexpectedFrame {
                    expected: if direct {
                        "a Landed, End or Abort frame"
                    } else {
                        "a Layer, End or Abort frame"
                    },
                    got: kind,
                });
            }
        }
    }
}

/// A Landed frame's layer, checked against the header like a Layer frame's.
async fn read_landed(
    reader: &mut KvReader,
    len: u32,
    clock: &Clock,
    received: &[bool],
) -> Result<u32, KvTransferError> {
    if len != 4 {
        return Err(KvTransferError::BadFrameLength {
            kind: "Landed",
            len,
            constraint: "a layer number is exactly 4".to_owned(),
        });
    }
    let mut body = [0u8; 4];
    clock
        .frame(
            "read a Landed frame",
            tokio::io::AsyncReadExt::read_exact(reader, &mut body),
        )
        .await?
        .map_err(|e| KvTransferError::io("read a Landed frame", e))?;
    let layer = u32::from_le_bytes(body);
    check_new_layer(layer, received)?;
    Ok(layer)
}

/// `layer` exists and has not arrived yet.
fn check_new_layer(layer: u32, received: &[bool]) -> Result<(), KvTransferError> {
    match received.get(layer as usize) {
        None => Err(KvTransferError::InvalidLayer {
            layer,
            reason: format!("the model has {} layers", received.len()),
        }),
        Some(true) => Err(KvTransferError::InvalidLayer {
            layer,
            reason: "sent twice".to_owned(),
        }),
        Some(false) => Ok(()),
    }
}

async fn read_layer(
    reader: &mut KvReader,
    header: &KvTransferHeader,
    len: u32,
    clock: &Clock,
    received: &[bool],
    buffers: Option<LayerPayload>,
) -> Result<LayerPayload, KvTransferError> {
    let floats = header.layer_floats();
    let expected_len = (LAYER_PREFIX_LEN + 2 * floats * 4) as u64;
    if len as u64 != expected_len {
        return Err(KvTransferError::BadFrameLength {
            kind: "Layer",
            len,
            constraint: format!(
                "the header's {} blocks need exactly {expected_len}",
                header.dest_blocks.len()
            ),
        });
    }
    let mut prefix = [0u8; LAYER_PREFIX_LEN];
    clock
        .frame("read a layer", tokio::io::AsyncReadExt::read_exact(reader, &mut prefix))
        .await?
        .map_err(|e| KvTransferError::io("read a layer", e))?;
    let layer = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let n_blocks = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    check_new_layer(layer, received)?;
    if n_blocks as usize != header.dest_blocks.len() {
        return Err(KvTransferError::InvalidLayer {
            layer,
            reason: format!(
                "carries {n_blocks} blocks, the header lists {}",
                header.dest_blocks.len()
            ),
        });
    }
    let (mut keys, mut values) = buffers.map(|b| (b.keys, b.values)).unwrap_or_default();
    clock
        .frame("read a layer", async {
            frame::read_f32s_into(reader, &mut keys, floats).await?;
            frame::read_f32s_into(reader, &mut values, floats).await
        })
        .await?
        .map_err(|e| KvTransferError::io("read a layer", e))?;
    Ok(LayerPayload { layer, keys, values })
}

async fn write_reply(writer: &mut KvWriter, clock: &Clock, kind: FrameKind) -> Result<(), KvTransferError> {
    let reply = frame::frame_header(kind, 0);
    clock
        .frame("send a reply", frame::write_all_parts(writer, &[&reply]))
        .await?
        .map_err(|e| KvTransferError::io("send a reply", e))
}

/// Best effort: the peer may already be gone, and the local outcome is reported either way. Its own short timeout
/// because the transfer deadline may already have passed, which is often the very reason for the Abort.
async fn send_abort(writer: &mut KvWriter, reason: &str) {
    let abort = frame::encode_abort(reason);
    let _ = tokio::time::timeout(ABORT_WRITE_TIMEOUT, frame::write_all_parts(writer, &[&abort])).await;
}
