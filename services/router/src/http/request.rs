//! What both generation endpoints parse the same way: the JSON body (errors name the field at fault), the `stop`
//! field's two shapes, `stream_options`, and the `X-Request-Timeout` header that sets a request's deadline.
//!
//! Invariant: a body that does not deserialize is a 400 whose `param` is the JSON path of the offending field.

use std::time::Duration;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::errors::ApiError;

/// Header carrying a request's deadline, in seconds from its arrival (decimals allowed, e.g. `2.5`).
pub const TIMEOUT_HEADER: &str = "x-request-timeout";

/// Parses a request body as JSON (a syntax error is a 400 without a `param`), then reads `T`'s fields from it
/// (a missing or mistyped field is a 400 naming it). Endpoints read their own fields and [`CommonFields`] from the
/// same value, each with exact paths in its errors (serde's `flatten` would lose them).
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    fields(&json_value(body)?)
}

pub fn json_value(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError {
        param: None,
        ..ApiError::invalid("", format!("the request body is not valid JSON: {e}"))
    })
}

pub fn fields<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError {
            param: None,
            ..ApiError::invalid("", "the request body must be a JSON object")
        });
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            let field = if path == "." {
                field.to_string()
            } else {
                format!("{path}.{field}")
            };
            return ApiError::invalid(field.clone(), format!("invalid argument '{field}': required"));
        }
        ApiError::invalid(path.clone(), format!("invalid argument '{path}': {message}"))
    })
}

/// The deadline set by [`TIMEOUT_HEADER`], if any.
pub fn deadline(headers: &HeaderMap) -> Result<Option<Instant>, ApiError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::invalid(
            TIMEOUT_HEADER,
            format!("the {TIMEOUT_HEADER} header must be a positive number of seconds"),
        )
    };
    let secs: f64 = value.to_str().map_err(|_| bad())?.trim().parse().map_err(|_| bad())?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(bad());
    }
    let timeout = Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
    Ok(Some(Instant::now().checked_add(timeout).unwrap_or_else(Instant::now)))
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(stop: Option<Stop>) -> Vec<String> {
        match stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]`, with no choices and the request's usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields both endpoints share, as OpenAI (and vLLM's extensions: `top_k`, `min_p`,
/// `repetition_penalty`, `ignore_eos`, `stop_token_ids`, `priority`) name them.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CommonFields {
    #[serde(default)]
    pub model: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `-1` or `0` mean no top-k cut (vLLM's convention).
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    /// Lower runs first (the workers' queues order by it).
    pub priority: Option<i32>,
}

impl CommonFields {
    pub fn streaming(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options.unwrap_or_default().include_usage
    }

    /// The gRPC request with these fields; the caller sets the prompt or messages, `max_tokens` and `logprobs`.
    pub fn into_proto(self) -> cleave_proto::v1::GenerateRequest {
        cleave_proto::v1::GenerateRequest {
            model: self.model,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k.and_then(|k| u32::try_from(k).ok()).filter(|&k| k > 0),
            min_p: self.min_p,
            seed: self.seed,
            stop: Stop::into_vec(self.stop),
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            n: self.n,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            priority: self.priority.unwrap_or(0),
            ..Default::default()
        }
    }
}
