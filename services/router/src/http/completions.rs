//! `POST /v1/completions`: a raw prompt, completed as JSON or as server-sent events.
//!
//! `logprobs: k` returns each token's log-probability and its `k` best alternatives (OpenAI's legacy shape:
//! `tokens`, `token_logprobs`, `top_logprobs`, `text_offset`). Unsupported options (`echo`, `suffix`, `best_of`
//! other than `n`, several prompts) are refused with a 400 naming them rather than ignored.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use cleave_proto::v1;
use serde::Deserialize;
use serde_json::{Value, json};

use super::errors::ApiError;
use super::request::{CommonFields, deadline, fields, json_value};
use super::sse::{ChunkSource, collect, finish_reason, relay};
use super::{HttpState, token_text, unix_now};
use crate::frontend::Frontend;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    prompt: Prompt,
    logprobs: Option<u32>,
    echo: Option<bool>,
    suffix: Option<String>,
    best_of: Option<u32>,
}

pub(super) async fn handle(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    match complete(&state, &headers, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn complete(state: &HttpState, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let value = json_value(body)?;
    let req: CompletionRequest = fields(&value)?;
    let common: CommonFields = fields(&value)?;
    let deadline = deadline(headers)?;
    let prompt = match req.prompt {
        Prompt::One(p) => p,
        Prompt::Many(mut v) if v.len() == 1 => v.remove(0),
        Prompt::Many(_) => return Err(ApiError::invalid("prompt", "one prompt per request is supported")),
    };
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid("suffix", "suffix is not supported"));
    }
    if let Some(best_of) = req.best_of
        && best_of != common.n.unwrap_or(1)
    {
        return Err(ApiError::invalid("best_of", "best_of must equal n"));
    }
    let streaming = common.streaming();
    let include_usage = common.include_usage();
    let n = common.n.unwrap_or(1);
    let logprobs = req.logprobs;
    let proto = v1::GenerateRequest {
        prompt,
        logprobs,
        ..common.into_proto()
    };
    let frontend = state.frontend.clone();
    let model = frontend.model().name.clone();
    let started = frontend
        .generate(proto, deadline)
        .await
        .map_err(|e| ApiError::from_router(e, str::to_string))?;
    let id = format!("cmpl-{}", started.request_id);
    let created = unix_now();
    if streaming {
        let mut offsets = vec![0usize; n as usize];
        let render = move |source: ChunkSource<'_>| {
            let (choices, usage) = match source {
                ChunkSource::Response(r) => {
                    let i = r.index as usize;
                    if i >= offsets.len() {
                        offsets.resize(i + 1, 0);
                    }
                    let lp = logprobs.map(|_| legacy_logprobs(&frontend, &r.logprobs, &mut offsets[i]));
                    let choice = json!({
                        "index": r.index,
                        "text": r.text,
                        "logprobs": lp,
                        "finish_reason": finish_reason(r.finish_reason),
                    });
                    (vec![choice], Value::Null)
                }
                ChunkSource::Usage(u) => (Vec::new(), json!(u)),
            };
            let chunk = json!({
                "id": id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            });
            Some(chunk.to_string())
        };
        return Ok(relay(started.stream, include_usage, render).into_response());
    }
    let (choices, usage) = collect(started.stream, n).await?;
    let choices: Vec<Value> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let lp = logprobs.map(|_| legacy_logprobs(&frontend, &c.logprobs, &mut 0));
            json!({
                "index": i,
                "text": c.text,
                "logprobs": lp,
                "finish_reason": finish_reason(c.finish_reason),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage,
    }))
    .into_response())
}

/// OpenAI's legacy completions `logprobs` object; `offset` is the choice's text length so far.
fn legacy_logprobs(frontend: &Frontend, logprobs: &[v1::TokenLogprob], offset: &mut usize) -> Value {
    let mut tokens = Vec::with_capacity(logprobs.len());
    let mut token_logprobs = Vec::with_capacity(logprobs.len());
    let mut top_logprobs = Vec::with_capacity(logprobs.len());
    let mut text_offset = Vec::with_capacity(logprobs.len());
    for lp in logprobs {
        let text = token_text(frontend, lp.token_id);
        text_offset.push(*offset);
        *offset += text.len();
        tokens.push(text);
        token_logprobs.push(lp.logprob);
        let top: serde_json::Map<String, Value> = lp
            .top
            .iter()
            .map(|t| (token_text(frontend, t.token_id), json!(t.logprob)))
            .collect();
        top_logprobs.push(top);
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}
