//! The `Engine` calls that move KV between engines of different workers: remote KV written in or landed directly
//! (CUDA IPC, NCCL links), the pool's CUDA-IPC descriptor and peers' pools mapped, NCCL link endpoints.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{Command, Engine};
use crate::backend::{KvLinkEndpoint, LandedCopy, PeerKv};
use crate::error::EngineError;
use crate::scheduler::{RemoteDone, RequestId};

impl Engine {
    /// Writes one layer of remote KV into the blocks `submit_remote` named for `request`. A write for a request
    /// that is no longer waiting (aborted, fell back) is dropped.
    pub fn write_remote_kv(
        &self,
        request: RequestId,
        layer: u32,
        blocks: Arc<[u32]>,
        keys: Vec<f32>,
        values: Vec<f32>,
    ) {
        let _ = self.commands.send(Command::WriteRemoteKv {
            request,
            layer,
            blocks,
            keys,
            values,
        });
    }

    /// Ends the wait for remote KV: `Ok(prefill_cached_tokens)` after a complete transfer, `Err(reason)` after a
    /// failed one (the prompt is then prefilled here). Writes sent before this call are applied before it.
    pub fn finish_remote_kv(&self, request: RequestId, result: Result<RemoteDone, String>) {
        let _ = self.commands.send(Command::FinishRemoteKv { request, result });
    }

    /// This engine's KV pool descriptor for CUDA IPC (see [`Backend::export_kv_pool`]); `None` when KV reaches it
    /// over TCP only.
    pub async fn export_kv_pool(&self) -> Result<Option<Vec<u8>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::ExportKvPool(reply))
            .map_err(|_| EngineError::Unavailable)?;
        rx.await.map_err(|_| EngineError::Unavailable)?
    }

    /// Maps another worker's pool (its `export_kv_pool` descriptor) for `submit_export`'s peer copies.
    pub async fn open_peer_kv(&self, descriptor: Vec<u8>) -> Result<PeerKv, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::OpenPeerKv { descriptor, reply })
            .map_err(|_| EngineError::Unavailable)?;
        rx.await.map_err(|_| EngineError::Unavailable)?
    }

    /// This engine's end of NCCL KV links (see [`Backend::kv_link_endpoint`]); `None` when it can have none.
    pub async fn kv_link_endpoint(&self) -> Option<KvLinkEndpoint> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(Command::KvLinkEndpoint(reply)).ok()?;
        rx.await.ok().flatten()
    }

    /// Lets the sender at the other end of `link` write `request`'s destination `blocks` (exactly those it waits
    /// on) and queues the receipt of every layer; each copy says when its layer is in place — then report it with
    /// [`Engine::direct_layer_landed`]. Until [`Engine::end_direct_writes`], the blocks are never reused.
    pub async fn receive_kv(
        &self,
        request: RequestId,
        link: PeerKv,
        blocks: Arc<[u32]>,
    ) -> Result<Vec<LandedCopy>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::ReceiveKv {
                request,
                link,
                blocks,
                reply,
            })
            .map_err(|_| EngineError::Unavailable)?;
        rx.await.map_err(|_| EngineError::Unavailable)?
    }

    /// Lets a peer write `request`'s destination blocks directly; false when the request no longer waits (the peer
    /// must then be refused). Until [`Engine::end_direct_writes`], those blocks are never reused.
    pub async fn allow_direct_writes(&self, request: RequestId) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::AllowDirectWrites { request, reply })
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// A peer finished writing `layer` of `request` into `blocks` directly.
    pub fn direct_layer_landed(&self, request: RequestId, layer: u32, blocks: Arc<[u32]>) {
        let _ = self
            .commands
            .send(Command::DirectLayerLanded { request, layer, blocks });
    }

    /// The peer allowed by `allow_direct_writes` stopped writing (its connection closed).
    pub fn end_direct_writes(&self, request: RequestId) {
        let _ = self.commands.send(Command::EndDirectWrites(request));
    }
}
