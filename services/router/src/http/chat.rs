//! `POST /v1/chat/completions`: messages rendered with the model's chat template, answered as one assistant
//! message per choice (JSON) or as `chat.completion.chunk` events (the first chunk of each choice carries the role).
//!
//! `content` may be a string or a list of text parts; other part types are refused naming the message. With
//! `logprobs: true`, each token's log-probability and its `top_logprobs` best alternatives come back.
//! `max_completion_tokens` wins over the older `max_tokens` when both are sent; errors name the one the client used.

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
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: String,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    messages: Vec<Message>,
    max_completion_tokens: Option<u32>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
}

pub(super) async fn handle(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    match chat(&state, &headers, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

fn messages(messages: Vec<Message>) -> Result<Vec<v1::ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "at least one message is required"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        if part.kind != "text" {
                            return Err(ApiError::invalid(
                                format!("messages[{i}].content"),
                                format!("content parts of type '{}' are not supported", part.kind),
                            ));
                        }
                        text.push_str(&part.text);
                    }
                    text
                }
            };
            Ok(v1::ChatMessage { role: m.role, content })
        })
        .collect()
}

async fn chat(state: &HttpState, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    let value = json_value(body)?;
    let req: ChatRequest = fields(&value)?;
    let common: CommonFields = fields(&value)?;
    let deadline = deadline(headers)?;
    let messages = messages(req.messages)?;
    let want_logprobs = req.logprobs.unwrap_or(false);
    if req.top_logprobs.is_some() && !want_logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "top_logprobs requires logprobs: true",
        ));
    }
    let max_tokens_name = if req.max_completion_tokens.is_some() {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let streaming = common.streaming();
    let include_usage = common.include_usage();
    let n = common.n.unwrap_or(1);
    let max_tokens = req.max_completion_tokens.or(common.max_tokens);
    let proto = v1::GenerateRequest {
        messages,
        max_tokens,
        logprobs: want_logprobs.then(|| req.top_logprobs.unwrap_or(0)),
        ..common.into_proto()
    };
    let rename = |field: &str| match field {
        "prompt" => "messages".to_string(),
        "max_tokens" => max_tokens_name.to_string(),
        "logprobs" => "top_logprobs".to_string(),
        other => other.to_string(),
    };
    let frontend = state.frontend.clone();
    let model = frontend.model().name.clone();
    let started = frontend
        .generate(proto, deadline)
        .await
        .map_err(|e| ApiError::from_router(e, rename))?;
    let id = format!("chatcmpl-{}", started.request_id);
    let created = unix_now();
    if streaming {
        let mut started_choices: Vec<bool> = vec![false; n as usize];
        let render = move |source: ChunkSource<'_>| {
            let (choices, usage) = match source {
                ChunkSource::Response(r) => {
                    let i = r.index as usize;
                    if i >= started_choices.len() {
                        started_choices.resize(i + 1, false);
                    }
                    let mut delta = serde_json::Map::new();
                    if !std::mem::replace(&mut started_choices[i], true) {
                        delta.insert("role".into(), json!("assistant"));
                    }
                    if !r.text.is_empty() || delta.contains_key("role") {
                        delta.insert("content".into(), json!(r.text));
                    }
                    let lp = want_logprobs.then(|| json!({"content": chat_logprobs(&frontend, &r.logprobs)}));
                    let choice = json!({
                        "index": r.index,
                        "delta": delta,
                        "logprobs": lp,
                        "finish_reason": finish_reason(r.finish_reason),
                    });
                    (vec![choice], Value::Null)
                }
                ChunkSource::Usage(u) => (Vec::new(), json!(u)),
            };
            let chunk = json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": null,
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
            let lp = want_logprobs.then(|| json!({"content": chat_logprobs(&frontend, &c.logprobs), "refusal": null}));
            json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text, "refusal": null},
                "logprobs": lp,
                "finish_reason": finish_reason(c.finish_reason),
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage,
    }))
    .into_response())
}

/// OpenAI's chat `logprobs.content` entries.
fn chat_logprobs(frontend: &Frontend, logprobs: &[v1::TokenLogprob]) -> Vec<Value> {
    let entry = |id: u32, logprob: f32| {
        let token = token_text(frontend, id);
        let bytes = token.as_bytes().to_vec();
        (token, logprob, bytes)
    };
    logprobs
        .iter()
        .map(|lp| {
            let (token, logprob, bytes) = entry(lp.token_id, lp.logprob);
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|t| {
                    let (token, logprob, bytes) = entry(t.token_id, t.logprob);
                    json!({"token": token, "logprob": logprob, "bytes": bytes})
                })
                .collect();
            json!({"token": token, "logprob": logprob, "bytes": bytes, "top_logprobs": top})
        })
        .collect()
}
