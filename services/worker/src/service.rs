//! The `Worker` gRPC service over an `Engine`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cleave_engine::kv::KvEventRecord;
use cleave_engine::{Engine, GenerationStream};
use cleave_proto::v1;
use cleave_proto::v1::worker_server::{Worker, WorkerServer};
use futures_util::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};

use cleave_proto::sampling_spec;

use crate::convert::{response, status};

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Load reports are sent at least this often, and no more often than `MIN_LOAD_INTERVAL`.
const DEFAULT_LOAD_INTERVAL: Duration = Duration::from_millis(200);
const MIN_LOAD_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct WorkerService {
    engine: Arc<Engine>,
    block_size: u32,
    /// Router request id → engine request id, for `Abort`. Entries leave when their stream ends.
    requests: Arc<Mutex<HashMap<String, u64>>>,
}

impl WorkerService {
    pub fn new(engine: Arc<Engine>, block_size: usize) -> Self {
        WorkerService {
            engine,
            block_size: u32::try_from(block_size).unwrap_or(u32::MAX),
            requests: Arc::default(),
        }
    }
}

/// Serves the worker API on `listener` until `shutdown` resolves.
pub async fn serve(
    service: WorkerService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(WorkerServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Removes a request's abort entry when its stream ends, however it ends.
struct Registration {
    requests: Arc<Mutex<HashMap<String, u64>>>,
    request_id: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut map) = self.requests.lock() {
            map.remove(&self.request_id);
        }
    }
}

fn output_stream(stream: GenerationStream, registration: Option<Registration>) -> RpcStream<v1::GenerateResponse> {
    Box::pin(futures_util::stream::unfold(
        (stream, registration),
        |(mut stream, reg)| async move {
            let item = stream.next().await?;
            Some((item.map(response).map_err(|e| status(&e)), (stream, reg)))
        },
    ))
}

#[tonic::async_trait]
impl Worker for WorkerService {
    type GenerateStream = RpcStream<v1::GenerateResponse>;
    type SubscribeKvEventsStream = RpcStream<v1::KvEventBatch>;
    type SubscribeLoadStream = RpcStream<v1::LoadReport>;

    async fn generate(
        &self,
        request: Request<v1::WorkerGenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        if req.remote_prefill.is_some() {
            return Err(Status::unimplemented(
                "remote_prefill: this worker cannot receive remote KV yet",
            ));
        }
        let sampling = req.sampling.unwrap_or_default();
        let spec = sampling_spec(&sampling);
        let stream = self
            .engine
            .submit(req.prompt_token_ids, &spec, sampling.priority)
            .map_err(|e| status(&e))?;
        let registration = if req.request_id.is_empty() {
            None
        } else {
            let mut map = self
                .requests
                .lock()
                .map_err(|_| Status::internal("request table poisoned"))?;
            if map.contains_key(&req.request_id) {
                return Err(Status::already_exists(format!(
                    "request_id '{}' is already running",
                    req.request_id
                )));
            }
            map.insert(req.request_id.clone(), stream.id());
            Some(Registration {
                requests: self.requests.clone(),
                request_id: req.request_id,
            })
        };
        Ok(Response::new(output_stream(stream, registration)))
    }

    async fn prefill(&self, _request: Request<v1::PrefillRequest>) -> Result<Response<v1::PrefillResponse>, Status> {
        Err(Status::unimplemented(
            "Prefill: KV export to a decode worker is not available on this worker yet",
        ))
    }

    async fn abort(&self, request: Request<v1::AbortRequest>) -> Result<Response<v1::AbortResponse>, Status> {
        let id = request.into_inner().request_id;
        let engine_id = self
            .requests
            .lock()
            .map_err(|_| Status::internal("request table poisoned"))?
            .get(&id)
            .copied();
        if let Some(engine_id) = engine_id {
            self.engine.abort(engine_id);
        }
        Ok(Response::new(v1::AbortResponse {
            found: engine_id.is_some(),
        }))
    }

    async fn subscribe_kv_events(
        &self,
        request: Request<v1::SubscribeKvEventsRequest>,
    ) -> Result<Response<Self::SubscribeKvEventsStream>, Status> {
        let from = request.into_inner().from_seq;
        // Subscribe before reading the backlog so no event falls between the two.
        let live = self.engine.subscribe_kv_events();
        let backlog = if from == 0 {
            Vec::new()
        } else {
            self.engine
                .kv_events_since(from)
                .await
                .map_err(|e| status(&e))?
                .map_err(|gap| {
                    Status::out_of_range(format!(
                        "from_seq {from} is not held (oldest {}, next {}); resume from a KvSnapshot",
                        gap.oldest, gap.next
                    ))
                })?
        };
        let next = backlog.last().map_or(from, |r| r.seq + 1);
        let first = (!backlog.is_empty()).then(|| Ok(batch(&backlog)));
        let live = futures_util::stream::unfold((live, next), |(mut live, next)| async move {
            loop {
                match live.recv().await {
                    Ok(record) if record.seq < next => continue,
                    Ok(record) => return Some((Ok(batch(&[record])), (live, record.seq + 1))),
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
        let snapshot = self.engine.kv_snapshot().await.map_err(|e| status(&e))?;
        Ok(Response::new(v1::KvSnapshotResponse {
            block_hashes: snapshot.hashes.iter().map(|h| h.0).collect(),
            next_seq: snapshot.next_seq,
            block_size: self.block_size,
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
        let engine = self.engine.clone();
        let stream = futures_util::stream::unfold((engine, true), move |(engine, first)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let report = engine.stats().await.map(|s| v1::LoadReport {
                running: s.running as u32,
                waiting: s.waiting as u32,
                free_blocks: s.free_blocks as u32,
                total_blocks: s.total_blocks as u32,
                queued_prefill_tokens: s.queued_prefill_tokens as u64,
            });
            Some((report.map_err(|e| status(&e)), (engine, false)))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn batch(records: &[KvEventRecord]) -> v1::KvEventBatch {
    use cleave_engine::kv::KvEvent;
    v1::KvEventBatch {
        events: records
            .iter()
            .map(|r| match r.event {
                KvEvent::Stored { hash } => v1::KvEvent {
                    seq: r.seq,
                    block_hash: hash.0,
                    removed: false,
                },
                KvEvent::Removed { hash } => v1::KvEvent {
                    seq: r.seq,
                    block_hash: hash.0,
                    removed: true,
                },
            })
            .collect(),
    }
}
