//! The `Worker` gRPC service over an `Engine`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cleave_engine::kv::KvEventRecord;
use cleave_engine::{Engine, GenerationStream};
use cleave_proto::v1;
use cleave_proto::v1::worker_server::{Worker, WorkerServer};
use cleave_telemetry::KvTransferMetrics;
use futures_util::Stream;
use tokio::sync::broadcast;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use cleave_proto::sampling_spec;

use crate::convert::{response, status};
use crate::kv_inbox::KvInbox;
use cleave_cluster::tls::ClusterTls;

use crate::remote_prefill::{PrefillClients, RemotePrefillContext, RemotePrefillTask};

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Load reports are sent at least this often, and no more often than `MIN_LOAD_INTERVAL`.
const DEFAULT_LOAD_INTERVAL: Duration = Duration::from_millis(200);
const MIN_LOAD_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
pub struct WorkerService {
    pub(crate) engine: Arc<Engine>,
    block_size: u32,
    /// The model's name as the cluster knows it; a KV transfer between workers of different models is refused.
    pub(crate) model: Arc<str>,
    /// Router request id → engine request id, for `Abort`. Entries leave when their stream ends.
    requests: Arc<Mutex<HashMap<String, u64>>>,
    /// Set on workers that receive remote KV (decode and both roles).
    remote: Option<RemotePrefillContext>,
    /// Counts the KV transfers this worker sends as a prefill worker.
    pub(crate) kv_metrics: KvTransferMetrics,
    /// The cluster's mutual TLS, for the connections this worker opens to other workers.
    pub(crate) tls: Option<ClusterTls>,
    /// Decode workers' KV pools this worker writes into directly (CUDA IPC).
    pub(crate) peer_pools: crate::peer_pools::PeerPools,
    /// NCCL links to decode workers' GPUs (enabled with [`WorkerService::with_nccl_links`]).
    pub(crate) nccl_links: crate::nccl_links::NcclLinks,
}

impl WorkerService {
    pub fn new(engine: Arc<Engine>, block_size: usize) -> Self {
        WorkerService {
            engine,
            block_size: u32::try_from(block_size).unwrap_or(u32::MAX),
            model: Arc::from("default"),
            requests: Arc::default(),
            remote: None,
            kv_metrics: KvTransferMetrics::default(),
            tls: None,
            peer_pools: Default::default(),
            nccl_links: Default::default(),
        }
    }

    /// Sends KV over these NCCL links when a decode worker offers them (see [`crate::nccl_links`]).
    pub fn with_nccl_links(mut self, links: crate::nccl_links::NcclLinks) -> Self {
        self.nccl_links = links;
        self
    }

    /// Dials other workers (prefill workers' gRPC, decode workers' KV listeners) over the cluster's mutual TLS.
    /// Call before [`WorkerService::with_kv_inbox`].
    pub fn with_cluster_tls(mut self, tls: ClusterTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Counts the KV transfers this worker sends in `metrics` (see [`crate::metrics::register_worker_metrics`]).
    pub fn with_kv_metrics(mut self, metrics: KvTransferMetrics) -> Self {
        self.kv_metrics = metrics;
        self
    }

    /// Names the model; prefill and decode workers exchange KV only when their names and layouts match.
    pub fn with_model(mut self, model: &str) -> Self {
        self.model = Arc::from(model);
        if let Some(remote) = &mut self.remote {
            remote.model = self.model.clone();
        }
        self
    }

    /// Lets `Generate` take `remote_prefill`: KV arrives through `inbox`, and a prompt whose KV has not arrived
    /// within `timeout` is prefilled here.
    pub fn with_kv_inbox(mut self, inbox: Arc<KvInbox>, timeout: Duration) -> Self {
        self.remote = Some(RemotePrefillContext {
            engine: self.engine.clone(),
            inbox,
            clients: PrefillClients::new(self.tls.clone()),
            model: self.model.clone(),
            timeout,
        });
        self
    }

    /// Makes `request_id` abortable through `Abort` until the returned guard drops; an empty id registers nothing.
    pub(crate) fn register(&self, request_id: &str, engine_id: u64) -> Result<Option<Registration>, Status> {
        if request_id.is_empty() {
            return Ok(None);
        }
        let mut map = self
            .requests
            .lock()
            .map_err(|_| Status::internal("request table poisoned"))?;
        if map.contains_key(request_id) {
            return Err(Status::already_exists(format!(
                "request_id '{request_id}' is already running"
            )));
        }
        map.insert(request_id.to_owned(), engine_id);
        Ok(Some(Registration {
            requests: self.requests.clone(),
            request_id: request_id.to_owned(),
        }))
    }
}

/// Serves the worker API on `listener` in plain text until `shutdown` resolves.
pub async fn serve(
    service: WorkerService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_with(service, listener, None, shutdown).await
}

/// Serves the worker API on `listener` until `shutdown` resolves; with `tls` (the cluster's mutual TLS), only to
/// clients presenting a certificate from the cluster CA. The standard health service answers probes.
pub async fn serve_with(
    service: WorkerService,
    listener: tokio::net::TcpListener,
    tls: Option<&ClusterTls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    // Without TCP_NODELAY a streamed message can wait ~40 ms for the peer's delayed ACK (Nagle).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls.grpc_server())?;
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<WorkerServer<WorkerService>>().await;
    builder
        .add_service(health_service)
        .add_service(WorkerServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Removes a request's abort entry when its stream ends, however it ends.
pub(crate) struct Registration {
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

/// What lives exactly as long as a `Generate` stream.
struct StreamGuards {
    _registration: Option<Registration>,
    _remote: Option<RemotePrefillTask>,
    trace: StreamTrace,
}

/// A `Generate` stream's spans: `worker.generate` for the whole request and `worker.decode` from its first token
/// to its end; both end when the stream is dropped, with the generated token count.
struct StreamTrace {
    request: tracing::Span,
    decode: Option<tracing::Span>,
    generated: usize,
}

impl StreamTrace {
    fn new(request: tracing::Span) -> Self {
        Self {
            request,
            decode: None,
            generated: 0,
        }
    }

    fn observe(&mut self, response: &v1::GenerateResponse) {
        if !response.token_ids.is_empty() && self.decode.is_none() {
            self.decode = Some(tracing::info_span!(
                parent: &self.request,
                "worker.decode",
                generated_tokens = tracing::field::Empty
            ));
        }
        self.generated += response.token_ids.len();
        if let Some(usage) = &response.usage {
            self.request.record("cached_tokens", usage.cached_tokens);
        }
    }
}

impl Drop for StreamTrace {
    fn drop(&mut self) {
        if let Some(decode) = &self.decode {
            decode.record("generated_tokens", self.generated);
        }
        self.request.record("generated_tokens", self.generated);
    }
}

fn output_stream(stream: GenerationStream, guards: StreamGuards) -> RpcStream<v1::GenerateResponse> {
    Box::pin(futures_util::stream::unfold(
        (stream, guards),
        |(mut stream, mut guards)| async move {
            let item = stream.next().await?.map(response);
            if let Ok(response) = &item {
                guards.trace.observe(response);
            }
            Some((item.map_err(|e| status(&e)), (stream, guards)))
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
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "worker.generate",
            otel.kind = "server",
            request_id = %req.request_id,
            prompt_tokens = req.prompt_token_ids.len(),
            remote_prefill = tracing::field::Empty,
            cached_tokens = tracing::field::Empty,
            generated_tokens = tracing::field::Empty,
        );
        cleave_telemetry::trace::set_parent(&span, &metadata);
        let sampling = req.sampling.unwrap_or_default();
        let spec = sampling_spec(&sampling);
        let prefill_url = req.remote_prefill.map(|r| r.prefill_addr);
        let (stream, remote) = match (prefill_url, &self.remote) {
            (Some(url), Some(remote)) => {
                span.record("remote_prefill", url.as_str());
                remote
                    .start(&req.request_id, &url, req.prompt_token_ids, &spec, sampling.priority)
                    .instrument(span.clone())
                    .await?
            }
            (url, _) => {
                if url.is_some() {
                    tracing::debug!(request_id = %req.request_id, "remote_prefill ignored: this worker has no KV listener");
                }
                let stream = self
                    .engine
                    .submit(req.prompt_token_ids, &spec, sampling.priority)
                    .map_err(|e| status(&e))?;
                (stream, None)
            }
        };
        let guards = StreamGuards {
            _registration: self.register(&req.request_id, stream.id())?,
            _remote: remote,
            trace: StreamTrace::new(span),
        };
        Ok(Response::new(output_stream(stream, guards)))
    }

    async fn prefill(&self, request: Request<v1::PrefillRequest>) -> Result<Response<v1::PrefillResponse>, Status> {
        let (metadata, _, req) = request.into_parts();
        let span = tracing::info_span!(
            "worker.prefill",
            otel.kind = "server",
            request_id = %req.request_id,
            prompt_tokens = req.prompt_token_ids.len(),
            cached_tokens = tracing::field::Empty,
        );
        cleave_telemetry::trace::set_parent(&span, &metadata);
        let response = self.run_prefill(req).instrument(span.clone()).await?;
        span.record("cached_tokens", response.cached_tokens);
        Ok(Response::new(response))
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
                // Sequences waiting for remote KV hold blocks and a batch slot is theirs as soon as it lands.
                running: (s.running + s.remote_prefill.awaiting) as u32,
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
