//! What a decode worker holds for one transfer: its header, its layers as they arrive, and finally its outcome.
//!
//! Invariant: layers come out in arrival order, each exactly once, and every transfer ends in exactly one
//! [`TransferOutcome`]. Cost: one bounded channel of layers and one of spare buffers per transfer.

use std::net::SocketAddr;

use tokio::sync::{mpsc, oneshot};

use super::{KvSink, KvTransferError, KvTransferHeader};

/// One layer's keys and values for the transfer's destination blocks, in the order of `dest_blocks`. In direct mode
/// the layer is already in the pool and both are empty.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPayload {
    pub layer: u32,
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
}

#[derive(Debug)]
pub enum TransferOutcome {
    /// Every layer arrived and the sender was told so.
    Complete,
    /// The sender gave up (prefill failed or the request was cancelled).
    Aborted { reason: String, layers_received: Vec<u32> },
    Failed {
        error: KvTransferError,
        layers_received: Vec<u32>,
    },
}

/// A connection whose header was refused or unreadable; the sender has been told why.
#[derive(Debug)]
pub struct RejectedTransfer {
    pub peer: SocketAddr,
    pub error: KvTransferError,
}

/// A transfer whose header this worker accepted; its layers stream in while the sender computes the next ones.
#[derive(Debug)]
pub struct IncomingTransfer {
    pub(super) header: KvTransferHeader,
    pub(super) peer: SocketAddr,
    pub(super) layers: mpsc::Receiver<LayerPayload>,
    pub(super) outcome: oneshot::Receiver<TransferOutcome>,
    pub(super) spent: mpsc::Sender<LayerPayload>,
    /// Direct mode: hands the pool descriptor to the connection, which sends it to the sender.
    pub(super) grant: Option<oneshot::Sender<Vec<u8>>>,
}

impl IncomingTransfer {
    pub fn header(&self) -> &KvTransferHeader {
        &self.header
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Direct mode: lets the sender write the header's destination blocks straight into this worker's pool, which
    /// `descriptor` describes. A direct transfer that is dropped or never granted is refused.
    pub fn grant(&mut self, descriptor: Vec<u8>) -> Result<(), KvTransferError> {
        if descriptor.len() > super::frame::MAX_GRANT_LEN {
            return Err(KvTransferError::InvalidHeader {
                field: "grant",
                reason: format!("a {}-byte descriptor is over 64 KiB", descriptor.len()),
            });
        }
        let grant = self.grant.take().ok_or_else(|| KvTransferError::InvalidHeader {
            field: "mode",
            reason: "only a direct transfer is granted, and once".to_owned(),
        })?;
        grant.send(descriptor).map_err(|_| KvTransferError::TaskEnded)
    }

    /// The next layer to arrive; `None` once the transfer ended, then [`Self::outcome`] says how.
    pub async fn next_layer(&mut self) -> Option<LayerPayload> {
        self.layers.recv().await
    }

    /// Hands a consumed layer's buffers back, so a later layer is read into memory that is already mapped
    /// instead of a fresh allocation (which costs page faults on every layer). Optional; extra buffers are dropped.
    pub fn recycle(&self, payload: LayerPayload) {
        let _ = self.spent.try_send(payload);
    }

    /// How the transfer ended. Called before `next_layer` returned `None`, it discards the layers not yet taken
    /// and the transfer fails, because the consumer stopped listening.
    pub async fn outcome(mut self) -> TransferOutcome {
        self.layers.close();
        self.outcome.await.unwrap_or(TransferOutcome::Failed {
            error: KvTransferError::TaskEnded,
            layers_received: vec![],
        })
    }

    /// Writes every layer into `sink` as it arrives, then returns the outcome. A sink error stops the transfer
    /// and the sender is told why.
    pub async fn write_into<S: KvSink>(mut self, sink: &S) -> TransferOutcome {
        let mut written = Vec::new();
        while let Some(payload) = self.layers.recv().await {
            let header = &self.header;
            if let Err(source) = sink.write_layer(
                &header.transfer_id,
                payload.layer,
                &header.dest_blocks,
                &payload.keys,
                &payload.values,
            ) {
                self.layers.close();
                let error = KvTransferError::Sink {
                    layer: payload.layer,
                    source: Box::new(source),
                };
                written.sort_unstable();
                return TransferOutcome::Failed {
                    error,
                    layers_received: written,
                };
            }
            written.push(payload.layer);
            self.recycle(payload);
        }
        self.outcome().await
    }
}
