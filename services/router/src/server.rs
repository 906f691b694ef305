//! The public `cleave.v1.Generation` service: a gRPC face on the shared request path ([`Frontend`]).
//!
//! The request goes to the routed decode worker; with remote prefill it names the prefill worker in
//! `remote_prefill`, and the decode worker calls it (the router never talks to a prefill worker on a request's path).
//!
//! Every check happens in the frontend, before a worker is involved: a bad request is `INVALID_ARGUMENT` naming the
//! field and reaches no worker; an overloaded cluster is `RESOURCE_EXHAUSTED` with `retry-after` metadata, at once.
//! The client's `grpc-timeout` is the request's deadline end to end. The response stream is the worker's stream; a
//! client that goes away drops it, which resets the call to the worker, which aborts the sequence and frees its KV.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cleave_proto::v1;

use crate::auth::ApiKeys;
use cleave_proto::v1::generation_server::{Generation, GenerationServer};
use futures_util::Stream;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::frontend::Frontend;
use crate::model::RouterModel;
use crate::pool::WorkerPool;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug, Clone)]
pub struct RouterService {
    frontend: Arc<Frontend>,
}

impl RouterService {
    pub fn new(model: Arc<RouterModel>, pool: Arc<WorkerPool>, router_id: String) -> Self {
        RouterService::from_frontend(Arc::new(Frontend::new(model, pool, router_id)))
    }

    /// A gRPC face on a request path shared with other APIs (the HTTP API takes the same `Frontend`).
    pub fn from_frontend(frontend: Arc<Frontend>) -> Self {
        RouterService { frontend }
    }

    pub fn frontend(&self) -> Arc<Frontend> {
        self.frontend.clone()
    }
}

/// The client's deadline from its `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n).
pub fn grpc_deadline(metadata: &MetadataMap) -> Option<Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

#[tonic::async_trait]
impl Generation for RouterService {
    type GenerateStream = RpcStream<v1::GenerateResponse>;

    async fn generate(&self, request: Request<v1::GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let deadline = grpc_deadline(request.metadata());
        let (metadata, _, req) = request.into_parts();
        let started = self
            .frontend
            .generate_traced(req, deadline, Some(&metadata))
            .await
            .map_err(|e| e.into_status())?;
        Ok(Response::new(started.stream))
    }

    async fn tokenize(&self, request: Request<v1::TokenizeRequest>) -> Result<Response<v1::TokenizeResponse>, Status> {
        let req = request.into_inner();
        let tokenized = self
            .frontend
            .check_model(&req.model)
            .and_then(|()| self.frontend.prompt(&req.prompt, &req.messages));
        let (token_ids, text) = tokenized.map_err(|e| e.into_status())?;
        Ok(Response::new(v1::TokenizeResponse { token_ids, text }))
    }

    async fn list_models(&self, _: Request<v1::ListModelsRequest>) -> Result<Response<v1::ListModelsResponse>, Status> {
        Ok(Response::new(v1::ListModelsResponse {
            models: self.frontend.models(),
        }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the router's gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// How the public gRPC server is secured.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// TLS (`--tls-cert`, `--tls-key`); plain text when `None`.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Unless open, every `Generation` call needs `authorization: Bearer <key>` metadata (health and reflection
    /// stay open for probes).
    pub api_keys: ApiKeys,
}

/// Serves `Generation`, the standard health service and server reflection on `listener` until `shutdown`, in
/// plain text and without API keys.
pub async fn serve(
    service: RouterService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_with(service, listener, ServeOptions::default(), shutdown).await
}

/// [`serve`] with TLS and API keys.
pub async fn serve_with(
    service: RouterService,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GenerationServer<RouterService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // Without TCP_NODELAY a streamed message can wait ~40 ms for the peer's delayed ACK (Nagle).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let keys = options.api_keys;
    let generation = GenerationServer::with_interceptor(service, move |request| keys.intercept(request));
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(generation)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// How the router is reached, for logs.
pub fn grpc_url(addr: SocketAddr) -> String {
    format!("grpc://{addr}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadline_in(value: &str) -> Option<Duration> {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", value.parse().ok()?);
        grpc_deadline(&metadata).map(|d| d.saturating_duration_since(Instant::now()))
    }

    #[test]
    fn grpc_timeout_units_parse_and_junk_is_no_deadline() {
        let near = |got: Option<Duration>, want: Duration| {
            got.is_some_and(|g| g <= want && g + Duration::from_millis(50) >= want)
        };
        assert!(near(deadline_in("1500m"), Duration::from_millis(1500)));
        assert!(near(deadline_in("2S"), Duration::from_secs(2)));
        assert!(near(deadline_in("1M"), Duration::from_secs(60)));
        assert!(near(deadline_in("1H"), Duration::from_secs(3600)));
        assert!(near(deadline_in("250000u"), Duration::from_millis(250)));
        assert!(deadline_in("").is_none());
        assert!(deadline_in("15").is_none());
        assert!(deadline_in("xS").is_none());
    }
}
