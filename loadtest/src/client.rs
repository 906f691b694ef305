//! One streamed request against the router's public API (`cleave.v1.Generation/Generate`, or the OpenAI-compatible
//! HTTP API for `openai://` and `http://…/v1` targets — see `openai.rs`), timed: when it was sent,
//! when each token-carrying message arrived, what `usage` said, and how it failed.
//!
//! Invariant: times are taken with `Instant::now()` right after each message is decoded, relative to the run's
//! epoch; nothing between two messages but the decode, so the client adds no latency of its own beyond the
//! transport. Cost: one gRPC stream per request; one `f64` kept per message.

use std::time::{Duration, Instant};

use cleave_proto::v1;
use cleave_proto::v1::generation_client::GenerationClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::LoadError;
use crate::metrics::RequestRecord;
use crate::openai::OpenAiClient;
use crate::workload::RequestSpec;

/// Connections to one target, used round-robin.
#[derive(Debug, Clone)]
pub struct TargetClient {
    pub url: String,
    pub model: String,
    clients: Vec<GenerationClient<Channel>>,
    /// Set for OpenAI-compatible HTTP targets; `clients` is empty then.
    openai: Option<OpenAiClient>,
}

/// Whether `url` names an OpenAI-compatible HTTP endpoint rather than the gRPC API.
pub fn is_openai_url(url: &str) -> bool {
    url.starts_with("openai://") || url.trim_end_matches('/').ends_with("/v1")
}

/// `grpc://host:port` → `http://host:port` (tonic's scheme); `http(s)://` passes through.
pub fn http_url(url: &str) -> String {
    match url.strip_prefix("grpc://") {
        Some(rest) => format!("http://{rest}"),
        None if url.contains("://") => url.to_string(),
        None => format!("http://{url}"),
    }
}

impl TargetClient {
    /// Opens `connections` lazily-connected HTTP/2 channels (TCP_NODELAY: the latencies measured are the
    /// server's, not Nagle's).
    pub fn new(url: &str, model: &str, connections: usize) -> Result<TargetClient, LoadError> {
        if is_openai_url(url) {
            return Ok(TargetClient {
                url: url.into(),
                model: model.into(),
                clients: Vec::new(),
                openai: Some(OpenAiClient::new(url)?),
            });
        }
        let endpoint = Endpoint::from_shared(http_url(url))
            .map_err(|e| LoadError::Target {
                url: url.into(),
                message: e.to_string(),
            })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5));
        let clients = (0..connections.max(1))
            .map(|_| GenerationClient::new(endpoint.connect_lazy()))
            .collect();
        Ok(TargetClient {
            url: url.into(),
            model: model.into(),
            clients,
            openai: None,
        })
    }

    /// Waits until the target generates: `ListModels` answers and a one-token request succeeds (a router
    /// answers the first before it reaches any worker), up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), LoadError> {
        if let Some(openai) = &self.openai {
            return openai.wait_ready(&self.url, timeout).await;
        }
        let deadline = Instant::now() + timeout;
        let mut client = self.clients[0].clone();
        loop {
            let tried = async {
                client.list_models(v1::ListModelsRequest {}).await?;
                let probe = v1::GenerateRequest {
                    model: self.model.clone(),
                    prompt: "Hello".into(),
                    max_tokens: Some(1),
                    ignore_eos: true,
                    ..Default::default()
                };
                let mut stream = client.generate(probe).await?.into_inner();
                while stream.message().await?.is_some() {}
                Ok::<(), tonic::Status>(())
            }
            .await;
            match tried {
                Ok(()) => return Ok(()),
                Err(status) if Instant::now() >= deadline => {
                    return Err(LoadError::Target {
                        url: self.url.clone(),
                        message: format!("not ready after {timeout:?}: {}", status.message()),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Sends request `id` and times its stream; never fails — errors are part of the record.
    pub async fn send(&self, id: u64, spec: &RequestSpec, epoch: Instant, timeout: Duration) -> RequestRecord {
        if let Some(openai) = &self.openai {
            return openai.send(&self.model, id, spec, epoch, timeout).await;
        }
        let mut client = self.clients[id as usize % self.clients.len()].clone();
        let request = v1::GenerateRequest {
            model: self.model.clone(),
            prompt: spec.prompt.clone(),
            max_tokens: Some(spec.max_tokens),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        };
        let sent = Instant::now();
        let mut record = RequestRecord::new(id, spec, sent.duration_since(epoch).as_secs_f64());
        let mut last = sent;
        let body = async {
            let mut stream = client.generate(request).await?.into_inner();
            while let Some(message) = stream.message().await? {
                let now = Instant::now();
                if !message.token_ids.is_empty() || !message.text.is_empty() {
                    let tokens = message.token_ids.len().max(1) as u32;
                    if record.ttft_ms.is_none() {
                        record.ttft_ms = Some(ms(now - sent));
                    } else {
                        record.itl_ms.push(ms(now - last));
                    }
                    record.output_tokens += tokens;
                    last = now;
                }
                if let Some(usage) = message.usage {
                    record.prompt_tokens = Some(usage.prompt_tokens);
                    record.cached_tokens = Some(usage.cached_tokens);
                }
            }
            Ok::<(), tonic::Status>(())
        };
        let outcome = tokio::time::timeout(timeout, body).await;
        record.e2e_ms = ms(Instant::now() - sent);
        match outcome {
            Ok(Ok(())) => record.finish(),
            Ok(Err(status)) => record.fail(&format!("{:?}", status.code()), status.message()),
            Err(_) => record.fail("DeadlineExceeded", "client timeout"),
        }
        record
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
