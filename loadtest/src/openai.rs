//! One streamed request against an OpenAI-compatible HTTP endpoint (`POST /v1/completions` with `"stream": true`),
//! timed the same way as the gRPC client: each server-sent event carrying text is a token arrival, the usage chunk
//! (`stream_options.include_usage`) gives prompt and cached tokens, and an HTTP error status becomes the gRPC-style
//! code the reports count (429 → ResourceExhausted, 504 → DeadlineExceeded, …).
//!
//! Invariant: the body is read frame by frame as it arrives and split into events on blank lines, so an event's time
//! is when its last byte arrived. Cost: one HTTP/1.1 connection per request in flight (the pool keeps them alive).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::LoadError;
use crate::metrics::RequestRecord;
use crate::workload::RequestSpec;

#[derive(Debug, Clone)]
pub struct OpenAiClient {
    /// `http://host:port`, without the `/v1`.
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The gRPC code name an HTTP status stands for, as the reports count errors.
fn code_for(status: u16) -> &'static str {
    match status {
        400 | 422 => "InvalidArgument",
        401 => "Unauthenticated",
        404 => "NotFound",
        429 => "ResourceExhausted",
        503 => "Unavailable",
        504 => "DeadlineExceeded",
        _ => "Internal",
    }
}

impl OpenAiClient {
    /// `openai://host:port` or `http://host:port/v1`.
    pub fn new(url: &str) -> Result<OpenAiClient, LoadError> {
        let base = match url.strip_prefix("openai://") {
            Some(rest) => format!("http://{}", rest.trim_end_matches('/')),
            None => url.trim_end_matches('/').trim_end_matches("/v1").to_owned(),
        };
        if !base.starts_with("http://") {
            return Err(LoadError::Target {
                url: url.into(),
                message: "an OpenAI target is openai://HOST:PORT or http://HOST:PORT/v1".into(),
            });
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        Ok(OpenAiClient {
            base,
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    fn request(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> hyper::Request<Full<Bytes>> {
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut req = hyper::Request::new(Full::new(body));
        *req.method_mut() = if method == "POST" {
            hyper::Method::POST
        } else {
            hyper::Method::GET
        };
        if let Ok(uri) = format!("{}{path}", self.base).parse() {
            *req.uri_mut() = uri;
        }
        req.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        req
    }

    /// Waits until `/ready` answers 200, up to `timeout`.
    pub async fn wait_ready(&self, url: &str, timeout: Duration) -> Result<(), LoadError> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self
                .client
                .request(self.request("GET", "/ready", None))
                .await
                .map(|r| r.status().as_u16());
            match status {
                Ok(200) => return Ok(()),
                other if Instant::now() >= deadline => {
                    return Err(LoadError::Target {
                        url: url.into(),
                        message: format!("not ready after {timeout:?}: {other:?}"),
                    });
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Sends request `id` and times its event stream; errors become part of the record.
    pub async fn send(
        &self,
        model: &str,
        id: u64,
        spec: &RequestSpec,
        epoch: Instant,
        timeout: Duration,
    ) -> RequestRecord {
        let body = serde_json::json!({
            "model": model,
            "prompt": spec.prompt,
            "max_tokens": spec.max_tokens,
            "temperature": 0.0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let sent = Instant::now();
        let mut record = RequestRecord::new(id, spec, sent.duration_since(epoch).as_secs_f64());
        let mut last = sent;
        let exchange = async {
            let response = self
                .client
                .request(self.request("POST", "/v1/completions", Some(body)))
                .await
                .map_err(|e| ("Unavailable", e.to_string()))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            if status != 200 {
                let bytes = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                return Err((code_for(status), String::from_utf8_lossy(&bytes).into_owned()));
            }
            let mut pending = String::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ("Unavailable", e.to_string()))?;
                let Some(data) = frame.data_ref() else { continue };
                pending.push_str(&String::from_utf8_lossy(data));
                let now = Instant::now();
                while let Some(end) = pending.find("\n\n") {
                    let event: String = pending.drain(..end + 2).collect();
                    let Some(payload) = event.trim().strip_prefix("data:").map(str::trim) else {
                        continue;
                    };
                    if payload == "[DONE]" {
                        return Ok(());
                    }
                    let Ok(chunk) = serde_json::from_str::<serde_json::Value>(payload) else {
                        continue;
                    };
                    if let Some(error) = chunk.get("error") {
                        return Err(("Internal", error.to_string()));
                    }
                    let text = chunk["choices"][0]["text"].as_str().unwrap_or_default();
                    if !text.is_empty() {
                        if record.ttft_ms.is_none() {
                            record.ttft_ms = Some(ms(now - sent));
                        } else {
                            record.itl_ms.push(ms(now - last));
                        }
                        record.output_tokens += 1;
                        last = now;
                    }
                    if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
                        record.prompt_tokens = usage["prompt_tokens"].as_u64().map(|v| v as u32);
                        record.cached_tokens = usage["prompt_tokens_details"]["cached_tokens"]
                            .as_u64()
                            .map(|v| v as u32);
                    }
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        record.e2e_ms = ms(Instant::now() - sent);
        match outcome {
            Ok(Ok(())) => record.finish(),
            Ok(Err((code, message))) => record.fail(code, &message),
            Err(_) => record.fail("DeadlineExceeded", "client timeout"),
        }
        record
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
