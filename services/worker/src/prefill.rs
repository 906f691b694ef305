//! The prefill side of a disaggregated request: `Worker/Prefill` computes a prompt's KV and streams it, layer by
//! layer, into the blocks a decode worker named.
//!
//! The KV connection is opened and its layout accepted before any compute, so a mismatched pair fails in
//! milliseconds with the field that differs. The engine hands each layer over as soon as the prompt's last chunk
//! has computed it, and this task sends it while the engine computes the next layer. Invariant: the call returns
//! `Ok` only after the decode worker confirmed every layer; any failure aborts the transfer (the decode worker then
//! prefills locally), and a cancelled call drops the engine request, freeing its blocks. The decode worker computes
//! the prompt's last token itself, so this side computes `prompt_token_ids[..len - 1]`. Each transfer, finished or
//! failed, is counted in `cleave_worker_kv_transfer*{direction="sent"}`.

use cleave_cluster::kv_transfer::{DEFAULT_IO_TIMEOUT, KvSender, KvTransferError, KvTransferHeader};
use cleave_engine::scheduler::FinishReason;
use cleave_proto::v1;
use cleave_telemetry::{KvDirection, KvTransferMetrics};
use tonic::Status;

use crate::convert::status;
use crate::kv_inbox::engine_layout;
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
        if dest.transport != "tcp" {
            return Err(Status::invalid_argument(format!(
                "destination.transport: {:?} is not spoken here (this worker speaks \"tcp\")",
                dest.transport
            )));
        }
        let mut prompt = req.prompt_token_ids;
        if prompt.len() < 2 {
            return Err(Status::invalid_argument(
                "prompt_token_ids: at least 2 tokens (the decode worker computes the last one)",
            ));
        }
        prompt.pop();
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
        let header = KvTransferHeader {
            transfer_id: dest.transfer_id,
            layout,
            dest_blocks: dest.block_ids,
        };
        let n_layers = header.layout.n_layers;
        // Ends when this call returns: connect to the decode worker's confirmation of the last layer.
        let transfer_span = tracing::info_span!(
            "kv_transfer.send",
            peer = %dest.kv_addr,
            transport = if self.tls.is_some() { "tcp+tls" } else { "tcp" },
            layers = n_layers,
            blocks = header.dest_blocks.len(),
            bytes = tracing::field::Empty,
        );
        let mut sent_record = SentTransfer::new(self.kv_metrics.clone());
        let mut sender = KvSender::connect_with(dest.kv_addr.as_str(), header, DEFAULT_IO_TIMEOUT, self.tls.as_ref())
            .await
            .map_err(|e| transfer_status(&e))?;
        let (mut stream, mut layers) = self
            .engine
            .submit_export(prompt, first_block, 0)
            .map_err(|e| status(&e))?;
        let _registration = self.register(&req.request_id, stream.id())?;

        let mut sent = 0;
        while sent < n_layers {
            let Some(layer) = layers.recv().await else { break };
            if let Err(e) = sender.send_layer(layer.layer, &layer.keys, &layer.values).await {
                return Err(transfer_status(&e));
            }
            sent_record.bytes += ((layer.keys.len() + layer.values.len()) * std::mem::size_of::<f32>()) as u64;
            sent += 1;
        }
        if sent < n_layers {
            // The engine dropped the request: its stream says why.
            let reason = match stream.next().await {
                Some(Err(e)) => e.to_string(),
                _ => "the engine stopped before computing every layer".to_owned(),
            };
            let _ = sender.abort(&reason).await;
            return Err(Status::aborted(format!(
                "prefill stopped after {sent} of {n_layers} layers: {reason}"
            )));
        }
        sender.finish().await.map_err(|e| transfer_status(&e))?;
        transfer_span.record("bytes", sent_record.bytes);
        drop(transfer_span);
        sent_record.ok = true;
        drop(sent_record);
        match stream.next().await {
            Some(Ok(out)) => match out.finish {
                Some(finish) if finish.reason == FinishReason::Prefilled => Ok(v1::PrefillResponse {
                    cached_tokens: u32::try_from(finish.usage.cached_tokens).unwrap_or(u32::MAX),
                }),
                _ => Err(Status::internal("the prefill request ended without its usage")),
            },
            Some(Err(e)) => Err(status(&e)),
            None => Err(Status::internal("the prefill request ended without its usage")),
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
    started: std::time::Instant,
    bytes: u64,
    ok: bool,
}

impl SentTransfer {
    fn new(metrics: KvTransferMetrics) -> Self {
        SentTransfer {
            metrics,
            started: std::time::Instant::now(),
            bytes: 0,
            ok: false,
        }
    }
}

impl Drop for SentTransfer {
    fn drop(&mut self) {
        self.metrics
            .record(KvDirection::Sent, self.bytes, self.started.elapsed(), self.ok);
    }
}
