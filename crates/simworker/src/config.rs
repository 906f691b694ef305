//! The simulated worker's timing and capacity model.
//!
//! A request admitted at `t0` (once its prompt's KV blocks fit) emits its first token at
//! `t0 + time_to_first_token + uncached_prompt_tokens × prefill_per_token`, and each later token one decode step
//! after the previous token's *deadline* (not after it was actually sent), a step lasting
//! `inter_token_latency + per_running_slowdown × running_sequences`. Deadlines are absolute, so timer lateness
//! never accumulates. Invariant: a config that passed [`SimConfig::validate`] has a non-zero block size and a
//! KV capacity of at least one block.

use std::time::Duration;

/// Which token ids the simulated model emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenPattern {
    /// The same token id every step.
    Repeat(u32),
    /// `first, first + 1, …, first + period − 1`, then again from `first`.
    Cycle { first: u32, period: u32 },
}

impl TokenPattern {
    /// The token emitted at generation step `step` (0 = the first generated token).
    pub fn token(&self, step: usize) -> u32 {
        match *self {
            TokenPattern::Repeat(id) => id,
            TokenPattern::Cycle { first, period } => first.wrapping_add((step % period.max(1) as usize) as u32),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Prefill compute per prompt token not found in the prefix cache.
    pub prefill_per_token: Duration,
    /// Fixed part of the time to first token (scheduling, the first forward pass).
    pub time_to_first_token: Duration,
    /// One decode step with a single running sequence.
    pub inter_token_latency: Duration,
    /// Extra decode-step time per running sequence (a batch grows slower as it grows).
    pub per_running_slowdown: Duration,
    /// Tokens per KV block; the prefix cache hashes full blocks (seed 0, like the engine).
    pub block_size: usize,
    /// KV capacity in blocks.
    pub kv_blocks: usize,
    /// Prompt plus generated tokens a sequence may reach; `max_tokens` unset means "up to this".
    pub max_context: usize,
    pub tokens: TokenPattern,
    /// Text sent with each token (the simulator has no tokenizer).
    pub token_text: String,
    /// KV events kept for subscribers that resume from a sequence number.
    pub kv_event_log: usize,
}

impl Default for SimConfig {
    /// A small GPU worker: 2 ms TTFT, 10 µs/token prefill, 5 ms steps, 16-token blocks, 64k tokens of KV.
    fn default() -> Self {
        SimConfig {
            prefill_per_token: Duration::from_micros(10),
            time_to_first_token: Duration::from_millis(2),
            inter_token_latency: Duration::from_millis(5),
            per_running_slowdown: Duration::ZERO,
            block_size: 16,
            kv_blocks: 4096,
            max_context: 8192,
            tokens: TokenPattern::Cycle {
                first: 1000,
                period: 16,
            },
            token_text: " tok".into(),
            kv_event_log: 1 << 16,
        }
    }
}

impl SimConfig {
    /// No simulated compute at all: every token is sent as soon as the request is admitted (router benchmarks).
    pub fn instant() -> Self {
        SimConfig {
            prefill_per_token: Duration::ZERO,
            time_to_first_token: Duration::ZERO,
            inter_token_latency: Duration::ZERO,
            ..SimConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), SimConfigError> {
        if self.block_size == 0 {
            return Err(SimConfigError::new("block_size", "must be at least 1"));
        }
        if self.kv_blocks == 0 {
            return Err(SimConfigError::new("kv_blocks", "must be at least 1"));
        }
        if self.max_context < 2 {
            return Err(SimConfigError::new("max_context", "must be at least 2"));
        }
        if self.kv_event_log == 0 {
            return Err(SimConfigError::new("kv_event_log", "must be at least 1"));
        }
        Ok(())
    }

    /// Time from admission to the first token for a prompt with this many uncached tokens.
    pub fn first_token_after(&self, uncached_tokens: usize) -> Duration {
        self.time_to_first_token + self.prefill_per_token * saturate(uncached_tokens)
    }

    /// One decode step while `running` sequences share the batch.
    pub fn decode_step(&self, running: usize) -> Duration {
        self.inter_token_latency + self.per_running_slowdown * saturate(running)
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A [`SimConfig`] field out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid simulated worker config '{field}': {message}")]
pub struct SimConfigError {
    pub field: &'static str,
    pub message: String,
}

impl SimConfigError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        SimConfigError {
            field,
            message: message.into(),
        }
    }
}
