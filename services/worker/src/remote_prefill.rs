//! The decode side of a disaggregated request: admit it waiting for KV, ask the prefill worker to compute and
//! ship that KV into the blocks just allocated, then let the engine decode.
//!
//! Invariant: every outcome ends the wait exactly once — a complete transfer, a failed or refused one, an
//! unreachable prefill worker, or no KV by the deadline all call `finish_remote_kv`, and anything but success
//! prefills the prompt locally in the same blocks. A client that goes away drops the [`RemotePrefillTask`], which
//! cancels the `Prefill` call (the prefill worker aborts its work) while the dropped stream frees the blocks.
//! Cost: one task and one `Prefill` call per remote request; gRPC channels to prefill workers are reused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cleave_cluster::tls::{ClusterTls, peer_endpoint};
use cleave_engine::sampling::SamplingSpec;
use cleave_engine::scheduler::RemoteDone;
use cleave_engine::{Engine, GenerationStream};
use cleave_proto::v1;
use cleave_proto::v1::worker_client::WorkerClient;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::Channel;
use tracing::Instrument;

use crate::convert::status;
use crate::kv_inbox::{ExpectedTransfer, KvInbox};

/// How long a decode worker waits for a prompt's KV before it prefills locally.
pub const DEFAULT_REMOTE_PREFILL_TIMEOUT: Duration = Duration::from_secs(30);

/// gRPC clients of prefill workers by URL, connected lazily (over the cluster's mutual TLS when it is on) and
/// reused by every request.
#[derive(Debug, Clone, Default)]
pub struct PrefillClients {
    clients: Arc<Mutex<HashMap<String, WorkerClient<Channel>>>>,
    tls: Option<ClusterTls>,
}

impl PrefillClients {
    /// Clients that dial over `tls` when it is given.
    pub fn new(tls: Option<ClusterTls>) -> Self {
        Self {
            clients: Arc::default(),
            tls,
        }
    }

    fn get(&self, url: &str) -> Result<WorkerClient<Channel>, Status> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| Status::internal("prefill client table poisoned"))?;
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let endpoint = peer_endpoint(self.tls.as_ref(), url)
            .map_err(|e| Status::invalid_argument(format!("remote_prefill.prefill_addr: {e}")))?;
        let client = WorkerClient::new(endpoint.connect_timeout(Duration::from_secs(2)).connect_lazy());
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }
}

/// The task that drives one remote prefill; dropping it cancels the prefill.
#[derive(Debug)]
pub struct RemotePrefillTask(JoinHandle<()>);

impl Drop for RemotePrefillTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the decode side needs to run remote prefills.
#[derive(Debug, Clone)]
pub struct RemotePrefillContext {
    pub engine: Arc<Engine>,
    pub inbox: Arc<KvInbox>,
    pub clients: PrefillClients,
    pub model: Arc<str>,
    pub timeout: Duration,
}

impl RemotePrefillContext {
    /// Submits the request waiting for remote KV and starts the prefill; without a KV target (nothing to send,
    /// no free blocks now) the request simply prefills here.
    pub async fn start(
        &self,
        request_id: &str,
        prefill_url: &str,
        prompt: Vec<u32>,
        spec: &SamplingSpec,
        priority: i32,
    ) -> Result<(GenerationStream, Option<RemotePrefillTask>), Status> {
        let client = self.clients.get(prefill_url)?;
        let (stream, target) = self
            .engine
            .submit_remote(prompt.clone(), spec, priority)
            .await
            .map_err(|e| status(&e))?;
        let Some(target) = target else {
            return Ok((stream, None));
        };
        let transfer_id = self.inbox.transfer_id(stream.id());
        let blocks: Arc<[u32]> = target.blocks.into();
        let expected = self.inbox.expect(transfer_id.clone(), stream.id(), blocks.clone());
        let request = v1::PrefillRequest {
            request_id: transfer_id.clone(),
            prompt_token_ids: prompt,
            destination: Some(v1::KvDestination {
                kv_addr: self.inbox.addr().to_owned(),
                transport: self.inbox.transports().join(","),
                host_id: crate::kv_inbox::host_id().to_owned(),
                block_ids: blocks.to_vec(),
                first_block: u32::try_from(target.first_block).unwrap_or(u32::MAX),
                transfer_id,
            }),
            model: self.model.to_string(),
            block_size: u32::try_from(self.engine.block_size()).unwrap_or(u32::MAX),
            return_logits: true,
        };
        tracing::debug!(
            request_id,
            prefill = prefill_url,
            blocks = blocks.len(),
            "remote prefill"
        );
        let span = tracing::info_span!(
            "worker.remote_prefill",
            prefill_worker = prefill_url,
            blocks = blocks.len(),
            outcome = tracing::field::Empty,
        );
        let task = tokio::spawn(
            drive(
                self.engine.clone(),
                client,
                request,
                expected,
                stream.id(),
                self.timeout,
            )
            .instrument(span),
        );
        Ok((stream, Some(RemotePrefillTask(task))))
    }
}

/// Logits sent as little-endian f32 bytes; `None` when there are none or they are cut mid-value (the decode
/// worker then computes the last prompt token itself).
fn f32_row(bytes: &[u8]) -> Option<Vec<f32>> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Calls `Prefill`, waits for the transfer, and ends the engine's wait either way.
async fn drive(
    engine: Arc<Engine>,
    mut client: WorkerClient<Channel>,
    request: v1::PrefillRequest,
    mut expected: ExpectedTransfer,
    engine_request: u64,
    timeout: Duration,
) {
    let started = std::time::Instant::now();
    let prefill = async {
        let mut request = tonic::Request::new(request);
        cleave_telemetry::trace::inject(request.metadata_mut());
        let response = client
            .prefill(request)
            .await
            .map_err(|s| format!("Prefill failed ({:?}): {}", s.code(), s.message()))?;
        let answered = started.elapsed();
        expected.outcome().await?;
        tracing::debug!(
            answered_us = answered.as_micros() as u64,
            landed_us = started.elapsed().as_micros() as u64,
            "remote prefill: Prefill answered, transfer outcome in"
        );
        let response = response.into_inner();
        Ok(RemoteDone {
            prefill_cached: response.cached_tokens as usize,
            logits: f32_row(&response.last_logits),
        })
    };
    let result = tokio::time::timeout(timeout, prefill)
        .await
        .unwrap_or_else(|_| Err(format!("no KV within {timeout:?}")));
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("fell back to local prefill: {e}"),
    };
    tracing::Span::current().record("outcome", outcome.as_str());
    engine.finish_remote_kv(engine_request, result);
}

#[cfg(test)]
mod tests {
    use super::f32_row;

    #[test]
    fn logits_cross_as_little_endian_bytes() {
        let row = [1.5f32, -0.25, f32::MIN_POSITIVE, 3.0e38];
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(f32_row(&bytes).unwrap(), row);
        assert_eq!(f32_row(&[]), None);
        assert_eq!(f32_row(&bytes[..7]), None, "a row cut mid-value is dropped");
    }
}
