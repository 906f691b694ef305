//! The public `cleave.v1.Generation` service: validate, tokenize, route, forward, stream back.
//!
//! The request goes to the routed decode worker; with remote prefill it names the prefill worker in
//! `remote_prefill`, and the decode worker calls it (the router never talks to a prefill worker on a request's path).
//!
//! Every check happens here, before a worker is involved: a bad request is `INVALID_ARGUMENT` naming the field and
//! reaches no worker. The response stream is the worker's stream; a client that goes away drops it, which resets
//! the call to the worker, which aborts the sequence and frees its KV blocks.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cleave_proto::sampling_spec;
use cleave_proto::v1;
use cleave_proto::v1::generation_server::{Generation, GenerationServer};
use cleave_tokens::{ChatMessage, block_hashes};
use futures_util::Stream;
use tonic::{Request, Response, Status};

use crate::model::RouterModel;
use crate::pool::WorkerPool;

type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[derive(Debug)]
pub struct RouterService {
    model: Arc<RouterModel>,
    pool: Arc<WorkerPool>,
    /// Distinguishes this router's request ids from other replicas'.
    router_id: String,
    next_request: AtomicU64,
}

impl RouterService {
    pub fn new(model: Arc<RouterModel>, pool: Arc<WorkerPool>, router_id: String) -> Self {
        RouterService {
            model,
            pool,
            router_id,
            next_request: AtomicU64::new(1),
        }
    }

    fn check_model(&self, model: &str) -> Result<(), Status> {
        if model.is_empty() || model == self.model.name {
            Ok(())
        } else {
            Err(invalid(
                "model",
                format!("unknown model '{model}'; this router serves '{}'", self.model.name),
            ))
        }
    }

    /// The prompt's token ids and text: a raw prompt, or chat messages rendered with the model's template.
    fn prompt(&self, prompt: &str, messages: &[v1::ChatMessage]) -> Result<(Vec<u32>, String), Status> {
        let text = match (prompt.is_empty(), messages.is_empty()) {
            (false, true) => prompt.to_string(),
            (true, false) => {
                if let Some(i) = messages.iter().position(|m| m.role.is_empty()) {
                    return Err(invalid("messages", format!("message {i} has no role")));
                }
                let chat: Vec<ChatMessage> = messages
                    .iter()
                    .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect();
                self.model
                    .tokenizer
                    .apply_chat_template(&chat, true)
                    .map_err(|e| invalid("messages", e.to_string()))?
            }
            (true, true) => return Err(invalid("prompt", "give either prompt or messages")),
            (false, false) => return Err(invalid("prompt", "give either prompt or messages, not both")),
        };
        let ids = self
            .model
            .tokenizer
            .encode(&text, true)
            .map_err(|e| invalid("prompt", e.to_string()))?;
        Ok((ids, text))
    }
}

/// A worker's own refusals pass through; a worker that broke (connection reset, process gone) becomes `UNAVAILABLE`
/// naming it, so clients can tell "retry elsewhere" from "fix the request".
fn worker_failure(addr: &str, status: Status) -> Status {
    match status.code() {
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Unavailable => {
            Status::unavailable(format!("worker {addr} failed: {}", status.message()))
        }
        _ => status,
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid argument '{field}': {message}"))
}

#[tonic::async_trait]
impl Generation for RouterService {
    type GenerateStream = RpcStream<v1::GenerateResponse>;

    async fn generate(&self, request: Request<v1::GenerateRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let req = request.into_inner();
        self.check_model(&req.model)?;
        let (prompt_ids, _) = self.prompt(&req.prompt, &req.messages)?;
        sampling_spec(&req)
            .validate(prompt_ids.len(), self.model.limits)
            .map_err(|e| invalid(e.field, e.message))?;
        let hashes = block_hashes(&prompt_ids, self.pool.block_size(), 0);
        let route = self
            .pool
            .route(&hashes, prompt_ids.len())
            .ok_or_else(|| Status::unavailable("no decode worker is reachable; retry shortly"))?;
        let request_id = format!(
            "{}-{}",
            self.router_id,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        );
        let plan = &route.plan;
        tracing::debug!(
            %request_id,
            decode = %route.addr,
            prefill = route.prefill_addr.as_deref().unwrap_or("-"),
            prompt_tokens = prompt_ids.len(),
            cached_tokens = plan.decode.cached_tokens,
            decode_cost = plan.decode.cost,
            prefill_cached_tokens = plan.prefill.map(|p| p.cached_tokens),
            prefill_cost = plan.prefill.map(|p| p.cost),
            reason = %plan.reason,
            "routed"
        );
        let forward = v1::WorkerGenerateRequest {
            request_id,
            prompt_token_ids: prompt_ids,
            sampling: Some(v1::GenerateRequest {
                prompt: String::new(),
                messages: Vec::new(),
                ..req
            }),
            remote_prefill: route
                .prefill_addr
                .map(|prefill_addr| v1::RemotePrefill { prefill_addr }),
        };
        let mut client = route.client;
        let addr = route.addr;
        let stream = client
            .generate(forward)
            .await
            .map_err(|s| worker_failure(&addr, s))?
            .into_inner();
        Ok(Response::new(Box::pin(futures_util::StreamExt::map(
            stream,
            move |item| item.map_err(|s| worker_failure(&addr, s)),
        ))))
    }

    async fn tokenize(&self, request: Request<v1::TokenizeRequest>) -> Result<Response<v1::TokenizeResponse>, Status> {
        let req = request.into_inner();
        self.check_model(&req.model)?;
        let (token_ids, text) = self.prompt(&req.prompt, &req.messages)?;
        Ok(Response::new(v1::TokenizeResponse { token_ids, text }))
    }

    async fn list_models(&self, _: Request<v1::ListModelsRequest>) -> Result<Response<v1::ListModelsResponse>, Status> {
        let info = v1::ModelInfo {
            id: self.model.name.clone(),
            max_context: self.model.limits.max_context as u32,
        };
        Ok(Response::new(v1::ListModelsResponse { models: vec![info] }))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the router's gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves `Generation`, the standard health service and server reflection on `listener` until `shutdown`.
pub async fn serve(
    service: RouterService,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<GenerationServer<RouterService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(GenerationServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

/// How the router is reached, for logs.
pub fn grpc_url(addr: SocketAddr) -> String {
    format!("grpc://{addr}")
}
