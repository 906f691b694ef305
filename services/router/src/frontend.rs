//! The request path every public API shares (gRPC `Generation` and the OpenAI-compatible HTTP API): check the
//! model, render the chat template, tokenize, validate the sampling fields, admit, route, forward to the decode
//! worker, and stream its answer back under the request's deadline.
//!
//! Invariants: a request that fails any check reaches no worker; a refused request is answered at once (no
//! queueing inside the router); when the deadline passes, the worker stream is dropped — which resets the call to
//! the worker, which aborts the sequence and frees its KV blocks — and the client's stream ends with
//! `DEADLINE_EXCEEDED`. Every request, refused or served, is counted once in the router's metrics ([`observe`]).
//! Cost: tokenization and block hashing of the prompt, O(prompt) per request.

mod observe;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cleave_proto::sampling_spec;
use cleave_proto::v1;
use cleave_telemetry::RouterMetrics;
use cleave_tokens::{ChatMessage, block_hashes};
use futures_util::Stream;
use tokio::time::Instant;
use tonic::Status;
use tracing::Instrument;

use crate::WorkerRole;
use crate::admission::{AdmissionConfig, QueueGauge, QueuedPermit};
use crate::error::{RouterError, worker_failure};
use crate::model::RouterModel;
use crate::pool::{PendingFirstToken, RouteError, WorkerPool};
use observe::RequestObserver;

/// The worker's responses, ending with an error status when the worker fails or the deadline passes.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<v1::GenerateResponse, Status>> + Send>>;

/// A request on its way: its router-assigned id and the worker's response stream.
pub struct Generation {
    pub request_id: String,
    pub stream: ResponseStream,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("request_id", &self.request_id)
            .finish()
    }
}

#[derive(Debug)]
pub struct Frontend {
    model: Arc<RouterModel>,
    pool: Arc<WorkerPool>,
    /// Distinguishes this router's request ids from other replicas'.
    router_id: String,
    next_request: AtomicU64,
    admission: AdmissionConfig,
    queue: QueueGauge,
    metrics: RouterMetrics,
}

impl Frontend {
    pub fn new(model: Arc<RouterModel>, pool: Arc<WorkerPool>, router_id: String) -> Self {
        Frontend {
            model,
            pool,
            router_id,
            next_request: AtomicU64::new(1),
            admission: AdmissionConfig::default(),
            queue: QueueGauge::default(),
            metrics: RouterMetrics::default(),
        }
    }

    /// Records this frontend's requests in `metrics` (by default they go to metrics registered nowhere).
    pub fn with_metrics(mut self, metrics: RouterMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &RouterMetrics {
        &self.metrics
    }

    pub fn with_admission(mut self, admission: AdmissionConfig) -> Self {
        self.admission = admission;
        self
    }

    pub fn model(&self) -> &RouterModel {
        &self.model
    }

    pub fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// Requests admitted and waiting for their first token.
    pub fn queued_requests(&self) -> usize {
        self.queue.queued()
    }

    /// Ready to serve: at least one decode-capable worker is reachable.
    pub fn ready(&self) -> bool {
        self.pool.reachable_where(|role| role != WorkerRole::Prefill) > 0
    }

    pub fn models(&self) -> Vec<v1::ModelInfo> {
        vec![v1::ModelInfo {
            id: self.model.name.clone(),
            max_context: self.model.limits.max_context as u32,
        }]
    }

    /// Empty means this router's model.
    pub fn check_model(&self, model: &str) -> Result<(), RouterError> {
        if model.is_empty() || model == self.model.name {
            Ok(())
        } else {
            Err(RouterError::UnknownModel {
                requested: model.to_string(),
                served: self.model.name.clone(),
            })
        }
    }

    /// The prompt's token ids and text: a raw prompt, or chat messages rendered with the model's template.
    pub fn prompt(&self, prompt: &str, messages: &[v1::ChatMessage]) -> Result<(Vec<u32>, String), RouterError> {
        let text = match (prompt.is_empty(), messages.is_empty()) {
            (false, true) => prompt.to_string(),
            (true, false) => {
                if let Some(i) = messages.iter().position(|m| m.role.is_empty()) {
                    return Err(RouterError::invalid("messages", format!("message {i} has no role")));
                }
                let chat: Vec<ChatMessage> = messages
                    .iter()
                    .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
                    .collect();
                self.model
                    .tokenizer
                    .apply_chat_template(&chat, true)
                    .map_err(|e| RouterError::invalid("messages", e))?
            }
            (true, true) => return Err(RouterError::invalid("prompt", "give either prompt or messages")),
            (false, false) => {
                return Err(RouterError::invalid(
                    "prompt",
                    "give either prompt or messages, not both",
                ));
            }
        };
        let ids = self
            .model
            .tokenizer
            .encode(&text, true)
            .map_err(|e| RouterError::invalid("prompt", e))?;
        Ok((ids, text))
    }

    /// Validates, admits and routes `req`, and starts it on its decode worker. With a `deadline`, the call to the
    /// worker and every later response must come before it.
    pub async fn generate(
        &self,
        req: v1::GenerateRequest,
        deadline: Option<Instant>,
    ) -> Result<Generation, RouterError> {
        self.generate_traced(req, deadline, None).await
    }

    /// [`Frontend::generate`], traced as a child of the W3C trace context in `incoming` (a client's gRPC
    /// metadata) when it carries one.
    pub async fn generate_traced(
        &self,
        req: v1::GenerateRequest,
        deadline: Option<Instant>,
        incoming: Option<&tonic::metadata::MetadataMap>,
    ) -> Result<Generation, RouterError> {
        let span = observe::request_span();
        if let Some(metadata) = incoming {
            cleave_telemetry::trace::set_parent(&span, metadata);
        }
        let mut observer = RequestObserver::new(self.metrics.clone(), span.clone());
        match self.start(req, deadline, &mut observer).instrument(span).await {
            Ok(started) => Ok(Generation {
                request_id: started.request_id,
                stream: supervise(started.stream, started.addr, deadline, started.permit, observer),
            }),
            Err(e) => {
                observer.end(e.code());
                Err(e)
            }
        }
    }

    async fn start(
        &self,
        req: v1::GenerateRequest,
        deadline: Option<Instant>,
        observer: &mut RequestObserver,
    ) -> Result<Started, RouterError> {
        self.check_model(&req.model)?;
        let (prompt_ids, _) = self.prompt(&req.prompt, &req.messages)?;
        sampling_spec(&req)
            .validate(prompt_ids.len(), self.model.limits)
            .map_err(|e| RouterError::invalid(e.field, e.message))?;
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(RouterError::DeadlineExceeded);
        }
        let overloaded = |reason: String| RouterError::Overloaded {
            reason,
            retry_after: self.admission.retry_after,
        };
        let permit = self
            .queue
            .try_enter(self.admission.max_queued_requests)
            .ok_or_else(|| {
                overloaded(format!(
                    "{} requests are already waiting for their first token on this router",
                    self.admission.max_queued_requests
                ))
            })?;
        observer.admitted(req.n.unwrap_or(1));
        let hashes = block_hashes(&prompt_ids, self.pool.block_size(), 0);
        let route = self.pool.route(&hashes, prompt_ids.len()).map_err(|e| match e {
            RouteError::NoWorker => RouterError::NoWorker,
            saturated @ RouteError::Saturated { .. } => overloaded(saturated.to_string()),
        })?;
        let request_id = format!(
            "{}-{}",
            self.router_id,
            self.next_request.fetch_add(1, Ordering::Relaxed)
        );
        let plan = &route.plan;
        observer.routed(plan.reason, prompt_ids.len());
        let span = observer.span();
        span.record("request_id", request_id.as_str());
        span.record("model", self.model.name.as_str());
        span.record("decode_worker", route.addr.as_str());
        span.record("routing_cost", plan.decode.cost);
        if let Some(prefill) = &route.prefill_addr {
            span.record("prefill_worker", prefill.as_str());
        }
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
            priority = req.priority,
            deadline_ms = deadline.map(|d| d.saturating_duration_since(Instant::now()).as_millis() as u64),
            "routed"
        );
        let forward = v1::WorkerGenerateRequest {
            request_id: request_id.clone(),
            prompt_token_ids: prompt_ids,
            // Priority and every sampling field travel as the client sent them.
            sampling: Some(v1::GenerateRequest {
                prompt: String::new(),
                messages: Vec::new(),
                ..req
            }),
            remote_prefill: route
                .prefill_addr
                .map(|prefill_addr| v1::RemotePrefill { prefill_addr }),
        };
        let mut request = tonic::Request::new(forward);
        cleave_telemetry::trace::inject(request.metadata_mut());
        if let Some(d) = deadline {
            // The worker learns the deadline too (grpc-timeout), so its own work is bounded even if we vanish.
            request.set_timeout(
                d.saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            );
        }
        let mut client = route.client;
        let addr = route.addr;
        let pending = route.pending;
        let call = client.generate(request);
        let response = match deadline {
            Some(d) => tokio::time::timeout_at(d, call)
                .await
                .map_err(|_| RouterError::DeadlineExceeded)?,
            None => call.await,
        };
        let stream = response
            .map_err(|s| RouterError::Worker(worker_failure(&addr, s)))?
            .into_inner();
        Ok(Started {
            request_id,
            stream,
            addr,
            permit: (permit, pending),
        })
    }
}

/// A request its decode worker accepted.
struct Started {
    request_id: String,
    stream: tonic::Streaming<v1::GenerateResponse>,
    addr: String,
    permit: (QueuedPermit, PendingFirstToken),
}

/// What the response stream carries between polls.
struct Supervised {
    /// `None` once the stream ended, failed or timed out: dropping it resets the worker call.
    inner: Option<tonic::Streaming<v1::GenerateResponse>>,
    addr: String,
    deadline: Option<Instant>,
    /// Held until the first response: the request is "queued" (on this router and on its worker) until then.
    permit: Option<(QueuedPermit, PendingFirstToken)>,
    observer: RequestObserver,
}

/// The worker's stream, with its failures named, the queue permit released on the first response, and the
/// deadline enforced by dropping the worker stream.
fn supervise(
    inner: tonic::Streaming<v1::GenerateResponse>,
    addr: String,
    deadline: Option<Instant>,
    permit: (QueuedPermit, PendingFirstToken),
    observer: RequestObserver,
) -> ResponseStream {
    let state = Supervised {
        inner: Some(inner),
        addr,
        deadline,
        permit: Some(permit),
        observer,
    };
    Box::pin(futures_util::stream::unfold(state, |mut state| async move {
        let inner = state.inner.as_mut()?;
        let next = match state.deadline {
            Some(d) => match tokio::time::timeout_at(d, inner.message()).await {
                Ok(next) => next,
                Err(_) => {
                    state.inner = None;
                    state.permit = None;
                    let status = Status::deadline_exceeded("the request's deadline passed; it was aborted");
                    state.observer.end(status.code());
                    return Some((Err(status), state));
                }
            },
            None => inner.message().await,
        };
        state.permit = None;
        match next {
            Ok(Some(response)) => {
                state.observer.response(&response);
                Some((Ok(response), state))
            }
            Ok(None) => {
                state.observer.end(tonic::Code::Ok);
                None
            }
            Err(status) => {
                state.inner = None;
                let status = worker_failure(&state.addr, status);
                state.observer.end(status.code());
                Some((Err(status), state))
            }
        }
    }))
}
