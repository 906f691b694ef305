//! Sampling and stopping parameters, and their validation at the edge.
//!
//! `SamplingSpec` is what a caller asks for (every field optional); `validate` turns it into `SamplingParams` and
//! `StopCriteria` or an `InvalidArgument` error naming the field. Past this point the engine trusts the values.

use serde::{Deserialize, Serialize};

/// A field outside its allowed range, named as the API names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid argument '{field}': {message}")]
pub struct InvalidArgument {
    pub field: &'static str,
    pub message: String,
}

impl InvalidArgument {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

/// At most this many alternatives per position may be requested with `logprobs`.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// At most this many parallel samples per request.
pub const MAX_N: u32 = 16;

/// A caller's sampling request, before validation. Absent fields take the defaults of OpenAI's API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SamplingSpec {
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Return the chosen token's log-probability and this many top alternatives.
    pub logprobs: Option<u32>,
    pub n: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means no top-k cut.
    pub top_k: u32,
    pub min_p: f32,
    pub seed: Option<u64>,
    pub repetition_penalty: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub logprobs: Option<u32>,
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logprobs: None,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0 || self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct StopCriteria {
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
}

/// What a validated request may use: the model's context and vocabulary.
#[derive(Debug, Clone, Copy)]
pub struct ModelLimits {
    pub max_context: usize,
    pub vocab_size: usize,
}

/// A validated sampling request.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSampling {
    pub params: SamplingParams,
    pub stop: StopCriteria,
    pub n: u32,
}

impl SamplingSpec {
    /// Checks every field against its range and the prompt against the model, naming the first offending field.
    pub fn validate(&self, prompt_len: usize, limits: ModelLimits) -> Result<ValidSampling, InvalidArgument> {
        if prompt_len == 0 {
            return Err(InvalidArgument::new("prompt", "the prompt is empty"));
        }
        if prompt_len >= limits.max_context {
            return Err(InvalidArgument::new(
                "prompt",
                format!(
                    "the prompt has {prompt_len} tokens; the model's context is {}",
                    limits.max_context
                ),
            ));
        }
        let room = limits.max_context - prompt_len;
        let max_tokens = match self.max_tokens {
            Some(0) => return Err(InvalidArgument::new("max_tokens", "must be at least 1")),
            Some(m) if m as usize > room => {
                return Err(InvalidArgument::new(
                    "max_tokens",
                    format!(
                        "{m} new tokens after a {prompt_len}-token prompt exceed the model's context of {} tokens",
                        limits.max_context
                    ),
                ));
            }
            Some(m) => m as usize,
            None => room,
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !temperature.is_finite() || !(0.0..=100.0).contains(&temperature) {
            return Err(InvalidArgument::new(
                "temperature",
                format!("must be in [0, 100], got {temperature}"),
            ));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(InvalidArgument::new("top_p", format!("must be in (0, 1], got {top_p}")));
        }
        let min_p = self.min_p.unwrap_or(0.0);
        if !(0.0..=1.0).contains(&min_p) {
            return Err(InvalidArgument::new("min_p", format!("must be in [0, 1], got {min_p}")));
        }
        let repetition_penalty = self.repetition_penalty.unwrap_or(1.0);
        if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
            return Err(InvalidArgument::new(
                "repetition_penalty",
                format!("must be > 0, got {repetition_penalty}"),
            ));
        }
        let presence_penalty = self.presence_penalty.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&presence_penalty) {
            return Err(InvalidArgument::new(
                "presence_penalty",
                format!("must be in [-2, 2], got {presence_penalty}"),
            ));
        }
        let frequency_penalty = self.frequency_penalty.unwrap_or(0.0);
        if !(-2.0..=2.0).contains(&frequency_penalty) {
            return Err(InvalidArgument::new(
                "frequency_penalty",
                format!("must be in [-2, 2], got {frequency_penalty}"),
            ));
        }
        if let Some(n) = self.logprobs
            && n > MAX_TOP_LOGPROBS
        {
            return Err(InvalidArgument::new(
                "logprobs",
                format!("at most {MAX_TOP_LOGPROBS} alternatives, got {n}"),
            ));
        }
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_N {
            return Err(InvalidArgument::new("n", format!("must be in [1, {MAX_N}], got {n}")));
        }
        if let Some(&id) = self.stop_token_ids.iter().find(|&&id| id as usize >= limits.vocab_size) {
            return Err(InvalidArgument::new(
                "stop_token_ids",
                format!("token id {id} is outside the vocabulary"),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(InvalidArgument::new("stop", "stop strings must not be empty"));
        }
        Ok(ValidSampling {
            params: SamplingParams {
                temperature,
                top_p,
                top_k: self.top_k.unwrap_or(0),
                min_p,
                seed: self.seed,
                repetition_penalty,
                presence_penalty,
                frequency_penalty,
                logprobs: self.logprobs,
            },
            stop: StopCriteria {
                max_tokens,
                stop_strings: self.stop.clone(),
                stop_token_ids: self.stop_token_ids.clone(),
                ignore_eos: self.ignore_eos,
            },
            n,
        })
    }
}

#[cfg(test)]
mod tests;
