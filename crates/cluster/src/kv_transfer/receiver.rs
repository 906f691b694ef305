//! The decode side's listener: binds, accepts, and hands each connection to its own task (`connection.rs`), whose
//! accepted transfers come out of [`KvReceiver::next`] in arrival order.
//!
//! Invariant: the listener lives exactly as long as the [`KvReceiver`]; connection tasks already running finish
//! (or hit their deadline) on their own. Cost: one task per listener plus one per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::connection::serve_connection;
use super::{IncomingTransfer, KvLayout, KvTransferError, RejectedTransfer};

/// How the decode worker's end of the transport behaves.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// This worker's KV layout; a header that differs in any field is refused.
    pub layout: KvLayout,
    /// Blocks in this worker's pool; destination block ids must be below it.
    pub pool_blocks: u32,
    /// Longest wait for any one frame (the Hello, one layer, End).
    pub read_timeout: Duration,
    /// Longest a whole transfer may take, from accepting the connection to End.
    pub transfer_deadline: Duration,
    /// Layers received but not yet taken by the consumer, per transfer.
    pub layer_queue: usize,
    /// Mutual TLS on every connection (the cluster's); plain TCP when `None`.
    pub tls: Option<crate::tls::ClusterTls>,
    /// The element type of this worker's pool when it grants senders direct writes into it (CUDA IPC); `None`
    /// refuses direct transfers.
    pub direct: Option<super::KvDtype>,
}

impl ReceiverConfig {
    pub fn new(layout: KvLayout, pool_blocks: u32) -> Self {
        ReceiverConfig {
            layout,
            pool_blocks,
            read_timeout: Duration::from_secs(10),
            transfer_deadline: Duration::from_secs(60),
            layer_queue: 4,
            tls: None,
            direct: None,
        }
    }
}

/// Accepts transfers until dropped; dropping it closes the listener.
#[derive(Debug)]
pub struct KvReceiver {
    incoming: mpsc::Receiver<Result<IncomingTransfer, RejectedTransfer>>,
    accept_loop: JoinHandle<()>,
}

impl Drop for KvReceiver {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl KvReceiver {
    /// Binds the listener (port 0 picks a free port) and starts accepting; returns the bound address.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        config: ReceiverConfig,
    ) -> Result<(SocketAddr, KvReceiver), KvTransferError> {
        config.layout.validate()?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| KvTransferError::io("bind the listener", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| KvTransferError::io("read the bound address", e))?;
        let (tx, incoming) = mpsc::channel(64);
        let accept_loop = tokio::spawn(accept_loop(listener, Arc::new(config), tx));
        Ok((local, KvReceiver { incoming, accept_loop }))
    }

    /// The next transfer whose header arrived, or a connection that was refused.
    pub async fn next(&mut self) -> Option<Result<IncomingTransfer, RejectedTransfer>> {
        self.incoming.recv().await
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<ReceiverConfig>,
    incoming: mpsc::Sender<Result<IncomingTransfer, RejectedTransfer>>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(stream, peer, config.clone(), incoming.clone()));
            }
            Err(error) => {
                // Usually descriptor exhaustion: back off rather than spin, the listener itself is still fine.
                tracing::warn!(%error, "kv transfer: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
