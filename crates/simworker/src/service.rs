//! The `cleave.v1.Worker` gRPC service over the simulator, with the real worker's semantics
//! (services/worker/src/service.rs): validation errors, duplicate request ids, abort, resumable KV events with
//! OUT_OF_RANGE on a gap, snapshots, periodic load reports. `Prefill` is UNIMPLEMENTED and a `Generate` naming a
//! remote prefill worker is prefilled locally: KV transfer is not modelled.
//!
//! Cost per `Generate`: one validation, a few short state locks per token, no task and no channel.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cleave_proto::sampling_spec;
use cleave_proto::v1;
use cleave_proto::v1::worker_server::{Worker, WorkerServer};
use cleave_sampling::ModelLimits;
use futures_util::Stream;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::config::{SimConfig, SimConfigError};
use crate::sequence::{SimRequest, SimSequence};
use crate::state::Shared;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Load reports are sent at least this often, and no more often than `MIN_LOAD_INTERVAL` (as the real worker).
const DEFAULT_LOAD_INTERVAL: Duration = Duration::from_millis(200);
const MIN_LOAD_INTERVAL: Duration = Duration::from_millis(10);

/// A simulated worker; clones share one simulated engine.
#[derive(Debug, Clone)]
pub struct SimWorker {
    shared: Arc<Shared>,
}

/// What a simulated worker holds now, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    pub running: usize,
    pub waiting: usize,
    pub free_blocks: usize,
    pub total_blocks: usize,
    pub queued_prefill_tokens: u64,
    /// `Generate` calls accepted since the worker started.
    pub accepted: u64,
}

impl SimWorker {
    pub fn new(config: SimConfig) -> Result<Self, SimConfigError> {
        config.validate()?;
        Ok(SimWorker {
            shared: Arc::new(Shared::new(config)),
        })
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.config
    }

    pub fn stats(&self) -> SimStats {
        self.shared.with_state(|s| SimStats {
            running: s.running,
            waiting: s.waiting,
            free_blocks: s.kv.available(),
            total_blocks: s.kv.total(),
            queued_prefill_tokens: s.queued_prefill_tokens,
            accepted: s.accepted,
        })
    }

    /// Checks a request the way the engine does and turns it into the simulator's terms.
    fn validate(&self, req: v1::WorkerGenerateRequest) -> Result<SimRequest, Status> {
        // `remote_prefill` is ignored: the simulator prefills locally, as a real worker does when remote prefill
        // fails, so a router that chose a prefill worker still gets its tokens.
        let config = &self.shared.config;
        let sampling = req.sampling.unwrap_or_default();
        let limits = ModelLimits {
            max_context: config.max_context,
            vocab_size: u32::MAX as usize,
        };
        let valid = sampling_spec(&sampling)
            .validate(req.prompt_token_ids.len(), limits)
            .map_err(|e| Status::invalid_argument(format!("invalid argument '{}': {}", e.field, e.message)))?;
        let max_tokens = valid.stop.max_tokens;
        let needed = (req.prompt_token_ids.len() + max_tokens).div_ceil(config.block_size);
        if needed > config.kv_blocks {
            return Err(Status::resource_exhausted(format!(
                "the request needs {needed} KV blocks of {} tokens at its max_tokens; the simulated cache has {} — \
                 lower max_tokens",
                config.block_size, config.kv_blocks
            )));
        }
        Ok(SimRequest {
            request_id: req.request_id,
            prompt: req.prompt_token_ids,
            max_tokens,
            n: valid.n,
            stop_token_ids: valid.stop.stop_token_ids,
        })
    }
}

/// Serves the simulated worker API on `listener` until `shutdown` resolves.
pub async fn serve(
    config: SimConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_worker(SimWorker::new(config)?, listener, shutdown).await
}

/// Serves an existing simulated worker (keep a clone to read its [`SimWorker::stats`]).
pub async fn serve_worker(
    worker: SimWorker,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    // Without TCP_NODELAY a token written while the previous segment awaits its (delayed) ACK waits up to 40 ms.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(WorkerServer::new(worker))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] SimConfigError),
    #[error("the simulated worker's gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

#[tonic::async_trait]
impl Worker for SimWorker {
    type GenerateStream = RpcStream<v1::GenerateResponse>;
    type SubscribeKvEventsStream = RpcStream<v1::KvEventBatch>;
    type SubscribeLoadStream = RpcStream<v1::LoadReport>;

    async fn generate(
        &self,
        request: Request<v1::WorkerGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let request = self.validate(request.into_inner())?;
        let cancel = CancellationToken::new();
        let registered = !request.request_id.is_empty();
        if registered && !self.shared.register(&request.request_id, &cancel) {
            return Err(Status::already_exists(format!(
                "request_id '{}' is already running",
                request.request_id
            )));
        }
        let sequence = SimSequence::new(self.shared.clone(), request, cancel, registered);
        let stream = futures_util::stream::unfold(sequence, |mut seq| async move {
            let item = seq.next().await?;
            Some((item, seq))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn prefill(&self, _request: Request<v1::PrefillRequest>) -> Result<Response<v1::PrefillResponse>, Status> {
        Err(Status::unimplemented(
            "Prefill: the simulated worker does not model remote prefill yet",
        ))
    }

    async fn abort(&self, request: Request<v1::AbortRequest>) -> Result<Response<v1::AbortResponse>, Status> {
        let found = self.shared.abort(&request.into_inner().request_id);
        Ok(Response::new(v1::AbortResponse { found }))
    }

    async fn subscribe_kv_events(
        &self,
        request: Request<v1::SubscribeKvEventsRequest>,
    ) -> Result<Response<Self::SubscribeKvEventsStream>, Status> {
        let from = request.into_inner().from_seq;
        // Subscribe before reading the backlog so no event falls between the two.
        let live = self.shared.subscribe_kv_events();
        let backlog = if from == 0 {
            Vec::new()
        } else {
            self.shared.with_state(|s| s.kv.events_since(from)).map_err(|gap| {
                Status::out_of_range(format!(
                    "from_seq {from} is not held (oldest {}, next {}); resume from a KvSnapshot",
                    gap.oldest, gap.next
                ))
            })?
        };
        let next = backlog.last().map_or(from, |e| e.seq + 1);
        let first = (!backlog.is_empty()).then(|| Ok(v1::KvEventBatch { events: backlog }));
        let live = futures_util::stream::unfold((live, next), |(mut live, next)| async move {
            loop {
                match live.recv().await {
                    Ok(event) if event.seq < next => continue,
                    Ok(event) => {
                        let next = event.seq + 1;
                        return Some((Ok(v1::KvEventBatch { events: vec![event] }), (live, next)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let msg = format!("subscriber fell behind; resume from_seq {next} or take a KvSnapshot");
                        return Some((Err(Status::out_of_range(msg)), (live, u64::MAX)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Response::new(Box::pin(futures_util::StreamExt::chain(
            futures_util::stream::iter(first),
            live,
        ))))
    }

    async fn kv_snapshot(
        &self,
        _request: Request<v1::KvSnapshotRequest>,
    ) -> Result<Response<v1::KvSnapshotResponse>, Status> {
        let (block_hashes, next_seq) = self.shared.with_state(|s| (s.kv.cached_hashes(), s.kv.next_seq()));
        Ok(Response::new(v1::KvSnapshotResponse {
            block_hashes,
            next_seq,
            block_size: u32::try_from(self.shared.config.block_size).unwrap_or(u32::MAX),
        }))
    }

    async fn subscribe_load(
        &self,
        request: Request<v1::SubscribeLoadRequest>,
    ) -> Result<Response<Self::SubscribeLoadStream>, Status> {
        let interval = match request.into_inner().interval_ms {
            0 => DEFAULT_LOAD_INTERVAL,
            ms => Duration::from_millis(u64::from(ms)).max(MIN_LOAD_INTERVAL),
        };
        let worker = self.clone();
        let stream = futures_util::stream::unfold((worker, true), move |(worker, first)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let s = worker.stats();
            let report = v1::LoadReport {
                running: saturate(s.running),
                waiting: saturate(s.waiting),
                free_blocks: saturate(s.free_blocks),
                total_blocks: saturate(s.total_blocks),
                queued_prefill_tokens: s.queued_prefill_tokens,
            };
            Some((Ok(report), (worker, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
