//! The prefill side of a disaggregated request: `Worker/Prefill` computes a prompt's KV and streams it, layer by
//! layer, into the blocks a decode worker named.
//!
//! The KV connection is opened and its layout accepted before any compute, so a mismatched pair fails in
//! milliseconds with the field that differs. The engine hands each layer over as soon as the prompt's last chunk
//! has computed it, and this task sends it while the engine computes the next layer. Invariant: the call returns
//! `Ok` only after the decode worker confirmed every layer; any failure aborts the transfer (the decode worker then
//! prefills locally), and a cancelled call drops the engine request, freeing its blocks. With `return_logits` (what
//! decode workers ask for) the whole prompt is computed and the last token's logits come back in the response, so
//! the decode worker samples the first token without a step of its own; otherwise it computes the prompt's last
//! token itself and this side computes `prompt_token_ids[..len - 1]`. Each transfer, finished or
//! failed, is counted in `cleave_worker_kv_transfer*{direction="sent"}`.
//!
//! Transport: the first of the decode worker's list this worker can use. CUDA IPC needs the same host and a GPU
//! engine holding the whole model here; the layers then never touch the host: each one is copied into the decode
//! worker's blocks on a transfer stream while the next layer computes, and a Landed frame follows once the copy is
//! done. NCCL (any host, GPU engines on both sides, a registry to meet through) works the same way over a link
//! (`nccl_links`): each layer is sent over it while the next computes, the decode worker receiving into its blocks;
//! a link whose transfer failed is aborted here and on the decode side, one that succeeded goes back to the pool.
//! Invariant of both direct paths: this side closes the connection only after every copy it queued has finished
//! (or, over a link, was ended by aborting it), so a decode worker may reuse the blocks once the connection ends
//! cleanly.

use std::sync::Arc;

use cleave_cluster::kv_transfer::{
    DEFAULT_IO_TIMEOUT, KvDtype, KvSender, KvTransferError, KvTransferHeader, TransferMode,
};
use cleave_engine::scheduler::{ExportedLayer, FinishReason, LayerData, PeerExport};
use cleave_engine::{EngineError, Export, ExportSpec, GenerationStream, PeerKv};
use cleave_proto::v1;
use cleave_telemetry::{KvDirection, KvTransferMetrics};
use tonic::Status;

use crate::convert::status;
use crate::kv_inbox::{CUDA_IPC, NEW_LINK, TCP, engine_layout, host_id};
use crate::nccl_links::{LINKS_PER_PEER, LeaseSlot, NCCL};
use crate::service::WorkerService;

impl WorkerService {
    pub(crate) async fn run_prefill(&self, req: v1::PrefillRequest) -> Result<v1::PrefillResponse, Status> {
        let dest = req
            .destination
            .ok_or_else(|| Status::invalid_argument("destination: required"))?;
        let layout = engine_layout(&self.engine, &self.model);
        if req.model != layout.model_id {
            return Err(Status::invalid_argument(format!(
                "model: this worker serves {:?}, not {:?}",
                layout.model_id, req.model
            )));
        }
        if req.block_size != layout.block_size {
            return Err(Status::invalid_argument(format!(
                "block_size: this worker uses {}-token blocks, not {}",
                layout.block_size, req.block_size
            )));
        }
        let started = std::time::Instant::now();
        let transport = self.pick_transport(&dest).await?;
        let direct = transport != Transport::Tcp;
        let mut prompt = req.prompt_token_ids;
        if req.return_logits {
            if prompt.is_empty() {
                return Err(Status::invalid_argument("prompt_token_ids: empty"));
            }
        } else {
            if prompt.len() < 2 {
                return Err(Status::invalid_argument(
                    "prompt_token_ids: at least 2 tokens (the decode worker computes the last one)",
                ));
            }
            prompt.pop();
        }
        let blocks = prompt.len().div_ceil(layout.block_size as usize);
        let first_block = dest.first_block as usize;
        if blocks.checked_sub(first_block) != Some(dest.block_ids.len()) {
            return Err(Status::invalid_argument(format!(
                "destination.block_ids: {} blocks from first_block {first_block} do not cover the {blocks} blocks of \
                 a {}-token prefill",
                dest.block_ids.len(),
                prompt.len()
            )));
        }
        let mut header = KvTransferHeader {
            transfer_id: dest.transfer_id,
            layout,
            dest_blocks: dest.block_ids,
            mode: TransferMode::Payload,
            link: String::new(),
        };
        if direct {
            header.mode = TransferMode::Direct;
            header.layout.dtype = KvDtype::Bf16;
        }
        let n_layers = header.layout.n_layers;
        let transport_name = match (transport, self.tls.is_some()) {
            (Transport::Tcp, true) => "tcp+tls",
            _ => transport.name(),
        };
        // Ends when this call returns: connect to the decode worker's confirmation of the last layer.
        let transfer_span = tracing::info_span!(
            "kv_transfer.send",
            peer = %dest.kv_addr,
            transport = transport_name,
            layers = n_layers,
            blocks = header.dest_blocks.len(),
            bytes = tracing::field::Empty,
        );
        let mut sent_record = SentTransfer::new(self.kv_metrics.clone(), transport.name());
        let layer_bytes = 2 * header.layer_floats() as u64 * if direct { 2 } else { 4 };
        let dest_blocks: Arc<[u32]> = header.dest_blocks.clone().into();
        let (mut sender, peer) = match transport {
            Transport::Nccl => {
                let (sender, link) = self.connect_over_link(&dest.kv_addr, header).await?;
                (sender, Some(link))
            }
            _ => {
                let sender =
                    KvSender::connect_with(dest.kv_addr.as_str(), header, DEFAULT_IO_TIMEOUT, self.tls.as_ref())
                        .await
                        .map_err(|e| transfer_status(&e))?;
                let pool = match sender.grant() {
                    Some(descriptor) => match self.peer_pools.open(&self.engine, &dest.kv_addr, descriptor).await {
                        Ok(pool) => Some(pool),
                        Err(e) => {
                            let reason = format!("cannot map the decode worker's KV pool: {e}");
                            let _ = sender.abort(&reason).await;
                            return Err(Status::failed_precondition(reason));
                        }
                    },
                    None => None,
                };
                (sender, pool.map(|pool| (pool, None)))
            }
        };
        let (peer, link_slot) = match peer {
            Some((pool, slot)) => (
                Some(PeerExport {
                    pool,
                    blocks: dest_blocks,
                }),
                slot,
            ),
            None => (None, None),
        };
        let link = peer.as_ref().map(|p| p.pool.clone()).filter(|_| link_slot.is_some());
        let spec = ExportSpec {
            first_block,
            priority: 0,
            peer,
            logits: req.return_logits,
        };
        let Export {
            mut stream,
            mut layers,
            mut logits,
        } = self.engine.submit_export(prompt, spec).map_err(|e| status(&e))?;
        let registration = self.register(&req.request_id, stream.id())?;
        let submitted = started.elapsed();

        let mut sent = 0;
        let mut failure = None;
        while sent < n_layers {
            let Some(layer) = layers.recv().await else { break };
            if let Err(reason) = ship(&mut sender, layer).await {
                failure = Some(reason);
                break;
            }
            sent_record.bytes += layer_bytes;
            sent += 1;
        }
        if sent < n_layers {
            let reason = match failure {
                Some(reason) => reason,
                // The engine dropped the request: its stream says why.
                None => match stream.next().await {
                    Some(Err(e)) => e.to_string(),
                    _ => "the engine stopped before computing every layer".to_owned(),
                },
            };
            if let Some(link) = &link {
                // Ends the sends the decode worker will never receive (it aborts its side on the Abort below).
                link.abort(&reason);
            }
            if direct {
                // Nothing may still be writing into the decode worker's blocks when the connection closes.
                drop(registration);
                quiesce(stream, layers).await;
            }
            let _ = sender.abort(&reason).await;
            return Err(Status::aborted(format!(
                "prefill stopped after {sent} of {n_layers} layers: {reason}"
            )));
        }
        let shipped = started.elapsed();
        if let Err(e) = sender.finish().await {
            if let Some(link) = &link {
                link.abort(&e.to_string());
            }
            return Err(transfer_status(&e));
        }
        if let (Some(slot), Some(link)) = (link_slot, link) {
            self.nccl_links.give_back(slot, link);
        }
        transfer_span.record("bytes", sent_record.bytes);
        drop(transfer_span);
        sent_record.ok = true;
        drop(sent_record);
        let finished = started.elapsed();
        let last_logits = if req.return_logits {
            let row = logits.recv().await.unwrap_or_default();
            row.iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            Vec::new()
        };
        tracing::debug!(
            transport = transport_name,
            submitted_us = submitted.as_micros() as u64,
            shipped_us = shipped.as_micros() as u64,
            finished_us = finished.as_micros() as u64,
            logits_us = started.elapsed().as_micros() as u64,
            "prefill sent: connected and submitted, every layer shipped, transfer complete, logits ready"
        );
        match stream.next().await {
            Some(Ok(out)) => match out.finish {
                Some(finish) if finish.reason == FinishReason::Prefilled => Ok(v1::PrefillResponse {
                    cached_tokens: u32::try_from(finish.usage.cached_tokens).unwrap_or(u32::MAX),
                    last_logits,
                }),
                _ => Err(Status::internal("the prefill request ended without its usage")),
            },
            Some(Err(e)) => Err(status(&e)),
            None => Err(Status::internal("the prefill request ended without its usage")),
        }
    }
}

/// How a prefill worker moves a transfer's KV.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// Layer payloads over the KV connection.
    Tcp,
    /// Straight into the decode worker's pool, mapped here (same host).
    CudaIpc,
    /// Over an NCCL link to the decode worker's GPU, which scatters each layer into its blocks.
    Nccl,
}

impl Transport {
    /// The name workers advertise it by (and metrics count it by).
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => TCP,
            Transport::CudaIpc => CUDA_IPC,
            Transport::Nccl => NCCL,
        }
    }
}

impl WorkerService {
    /// The first transport of the destination's list this worker can use.
    async fn pick_transport(&self, dest: &v1::KvDestination) -> Result<Transport, Status> {
        let offered: Vec<&str> = dest.transport.split(',').map(str::trim).collect();
        for transport in &offered {
            match *transport {
                CUDA_IPC => {
                    let usable = dest.host_id == host_id()
                        && !dest.host_id.is_empty()
                        && !self.peer_pools.refused(&dest.kv_addr)
                        && self.peer_pools.capable(&self.engine).await;
                    if usable {
                        return Ok(Transport::CudaIpc);
                    }
                }
                NCCL if self.nccl_links.enabled() => return Ok(Transport::Nccl),
                TCP => return Ok(Transport::Tcp),
                _ => {}
            }
        }
        Err(Status::invalid_argument(format!(
            "destination.transport: none of {:?} is spoken here (this worker speaks \"{TCP}\", \"{CUDA_IPC}\" to GPUs of \
             its host, and \"{NCCL}\" when its GPU engine has a registry to meet peers through)",
            dest.transport
        )))
    }

    /// Opens a direct transfer's KV connection over an NCCL link to the decode worker at `kv_addr`: an idle link,
    /// or a new one this side joins while the decode worker joins it on the Hello (which names it with
    /// [`NEW_LINK`]). An idle link the decode worker refuses (it restarted, so the link is dead) is aborted and the
    /// next one tried.
    async fn connect_over_link(
        &self,
        kv_addr: &str,
        mut header: KvTransferHeader,
    ) -> Result<(KvSender, (PeerKv, Option<LeaseSlot>)), Status> {
        for _ in 0..=LINKS_PER_PEER {
            let (idle, slot) = self
                .nccl_links
                .lease(kv_addr)
                .await
                .map_err(Status::failed_precondition)?;
            let joining = match idle {
                Some(link) => {
                    header.link = slot.name.clone();
                    Err(link)
                }
                None => {
                    header.link = format!("{}{NEW_LINK}", slot.name);
                    let (links, name) = (self.nccl_links.clone(), slot.name.clone());
                    Ok(tokio::spawn(async move { links.join_as_sender(&name).await }))
                }
            };
            let connected =
                KvSender::connect_with(kv_addr, header.clone(), DEFAULT_IO_TIMEOUT, self.tls.as_ref()).await;
            match (connected, joining) {
                (Ok(sender), Err(link)) => return Ok((sender, (link, Some(slot)))),
                (Ok(sender), Ok(task)) => {
                    let joined = task
                        .await
                        .unwrap_or_else(|e| Err(format!("joining the link failed: {e}")));
                    return match joined {
                        Ok(link) => Ok((sender, (link, Some(slot)))),
                        Err(reason) => {
                            let _ = sender.abort(&reason).await;
                            Err(Status::unavailable(format!("NCCL link to {kv_addr}: {reason}")))
                        }
                    };
                }
                (Err(e), Err(link)) => {
                    link.abort(&format!("the decode worker refused the transfer: {e}"));
                    if !matches!(e, KvTransferError::PeerAborted { .. }) {
                        return Err(transfer_status(&e));
                    }
                }
                (Err(e), Ok(task)) => {
                    task.abort();
                    return Err(transfer_status(&e));
                }
            }
        }
        Err(Status::unavailable(format!(
            "the decode worker at {kv_addr} refused every NCCL link"
        )))
    }
}

/// Sends one exported layer: its payload, or — once its copy into the peer's pool finished — its Landed frame.
async fn ship(sender: &mut KvSender, layer: ExportedLayer) -> Result<(), String> {
    match layer.data {
        LayerData::Host { keys, values } => sender
            .send_layer(layer.layer, &keys, &values)
            .await
            .map_err(|e| e.to_string()),
        LayerData::Copied(copy) => {
            let landed = tokio::task::spawn_blocking(move || copy.wait())
                .await
                .unwrap_or_else(|e| Err(EngineError::Internal(format!("waiting for a copy: {e}"))));
            landed.map_err(|e| e.to_string())?;
            sender.landed(layer.layer).await.map_err(|e| e.to_string())
        }
        LayerData::Failed(reason) => Err(reason),
    }
}

/// Ends an export whose transfer failed and waits until every copy it queued has finished: the engine request is
/// dropped (so no later pass exports), then the layers of a pass already running drain.
async fn quiesce(stream: GenerationStream, mut layers: tokio::sync::mpsc::UnboundedReceiver<ExportedLayer>) {
    drop(stream);
    while let Some(layer) = layers.recv().await {
        if let LayerData::Copied(copy) = layer.data {
            let _ = tokio::task::spawn_blocking(move || copy.wait()).await;
        }
    }
}

/// A KV-transfer failure as the decode worker's `Prefill` call sees it.
fn transfer_status(e: &KvTransferError) -> Status {
    match e {
        KvTransferError::Io { .. }
        | KvTransferError::Timeout { .. }
        | KvTransferError::DeadlineExceeded { .. }
        | KvTransferError::ConsumerGone
        | KvTransferError::TaskEnded => Status::unavailable(e.to_string()),
        KvTransferError::PeerAborted { .. } | KvTransferError::LayoutMismatch { .. } => {
            Status::failed_precondition(e.to_string())
        }
        _ => Status::internal(e.to_string()),
    }
}

/// Counts one outgoing transfer when dropped: `ok` once the decode worker confirmed every layer.
struct SentTransfer {
    metrics: KvTransferMetrics,
    transport: &'static str,
    started: std::time::Instant,
    bytes: u64,
    ok: bool,
}

impl SentTransfer {
    fn new(metrics: KvTransferMetrics, transport: &'static str) -> Self {
        SentTransfer {
            metrics,
            transport,
            started: std::time::Instant::now(),
            bytes: 0,
            ok: false,
        }
    }
}

impl Drop for SentTransfer {
    fn drop(&mut self) {
        self.metrics.record(
            KvDirection::Sent,
            self.transport,
            self.bytes,
            self.started.elapsed(),
            self.ok,
        );
    }
}
