//! One generation stream (a request, or one of its `n` samples): its tokens, KV blocks and stopping state.

use std::sync::Arc;

use cleave_tokens::{BlockHash, BlockHasher, Tokenizer};
use serde::Serialize;

use super::remote::{AwaitingKv, KvExport, RequestKind};
use super::text::TextStream;
use crate::kv::BlockId;
use crate::sampling::{Sampler, StopCriteria, TokenLogprob, ValidSampling};

pub type RequestId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the model's context reached.
    Length,
    /// Aborted by the caller.
    Abort,
    /// A prefill-only request (`RequestKind::ExportKv`) computed and handed over its prompt's KV; it samples nothing.
    Prefilled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache instead of being computed.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Finish {
    pub reason: FinishReason,
    pub usage: Usage,
}

/// What one step produced for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqOutput {
    pub request: RequestId,
    /// Which of the request's `n` samples.
    pub index: u32,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<Finish>,
}

/// A request as the scheduler accepts it: validated, tokenized.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    pub sampling: ValidSampling,
    /// Lower runs first; preemption takes the highest value first.
    pub priority: i32,
    pub kind: RequestKind,
}

#[derive(Debug)]
pub(crate) struct Sequence {
    pub request: RequestId,
    pub index: u32,
    pub priority: i32,
    /// Admission order; earlier arrivals are admitted first and preempted last.
    pub arrival: u64,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Leading tokens whose keys and values are in the cache.
    pub computed: usize,
    pub blocks: Vec<BlockId>,
    /// Chained hashes of every full block of `tokens`.
    pub hashes: Vec<BlockHash>,
    hasher: BlockHasher,
    /// Leading blocks already published to (or taken from) the prefix cache.
    pub registered: usize,
    pub cached_tokens: usize,
    /// Samples still to fork off when the prompt is done (`n - 1` for a fresh request).
    pub forks_pending: u32,
    pub sampler: Sampler,
    pub stop: StopCriteria,
    pub text: TextStream,
    pub mode: SeqMode,
}

/// Where a sequence's prompt KV comes from, or goes.
#[derive(Debug)]
pub(crate) enum SeqMode {
    /// Computed here (what is not in the prefix cache), then sampled.
    Local,
    /// A prefill worker is shipping it into the sequence's blocks; the sequence waits outside the batch.
    AwaitingKv(AwaitingKv),
    /// Computed here for another worker: each layer's blocks go out as soon as the last chunk computes them.
    Export(KvExport),
}

impl Sequence {
    pub fn new(req: NewRequest, arrival: u64, block_size: usize, hash_seed: u64, tokenizer: Arc<Tokenizer>) -> Self {
        let mut hasher = BlockHasher::new(block_size, hash_seed);
        let hashes = hasher.extend(&req.prompt);
        let ValidSampling { params, stop, n } = req.sampling;
        let mode = match req.kind {
            RequestKind::Generate => SeqMode::Local,
            RequestKind::ExportKv(export) => SeqMode::Export(export),
        };
        Sequence {
            mode,
            request: req.id,
            index: 0,
            priority: req.priority,
            arrival,
            prompt_len: req.prompt.len(),
            sampler: Sampler::new(params, &req.prompt, 0),
            text: TextStream::new(tokenizer, stop.stop_strings.clone()),
            tokens: req.prompt,
            computed: 0,
            blocks: Vec::new(),
            hashes,
            hasher,
            registered: 0,
            cached_tokens: 0,
            forks_pending: n - 1,
            stop,
        }
    }

    /// A sibling sample sharing this sequence's computed prompt; it owns no blocks yet.
    pub fn fork(&self, index: u32, tokenizer: Arc<Tokenizer>) -> Self {
        Sequence {
            request: self.request,
            index,
            priority: self.priority,
            arrival: self.arrival,
            tokens: self.tokens.clone(),
            prompt_len: self.prompt_len,
            computed: 0,
            blocks: Vec::new(),
            hashes: self.hashes.clone(),
            hasher: self.hasher.clone(),
            registered: 0,
            cached_tokens: self.cached_tokens,
            forks_pending: 0,
            sampler: Sampler::new(
                self.sampler.params().clone(),
                &self.tokens[..self.prompt_len],
                u64::from(index),
            ),
            text: TextStream::new(tokenizer, self.stop.stop_strings.clone()),
            stop: self.stop.clone(),
            mode: SeqMode::Local,
        }
    }

    /// A prefill-only sequence, which computes its prompt for another worker and samples nothing.
    pub fn exports(&self) -> bool {
        matches!(self.mode, SeqMode::Export(_))
    }

    /// Hands the prompt's last logits to an export's receiver (one that went away has aborted the request).
    pub fn send_export_logits(&self, row: &[f32]) {
        if let SeqMode::Export(KvExport {
            logits: Some(logits), ..
        }) = &self.mode
        {
            let _ = logits.send(row.to_vec());
        }
    }

    /// Whether this chunk's last row needs logits: a generating sequence's always, an export's when its receiver
    /// asked for the prompt's last logits.
    pub fn wants_logits(&self) -> bool {
        match &self.mode {
            SeqMode::Export(export) => export.logits.is_some(),
            _ => true,
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run through the model before the next sample.
    pub fn uncomputed(&self) -> usize {
        self.tokens.len() - self.computed
    }

    pub fn push_token(&mut self, token: u32) {
        self.tokens.push(token);
        if let Some(h) = self.hasher.push(token) {
            self.hashes.push(h);
        }
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached_tokens,
            completion_tokens: self.generated(),
        }
    }

    pub fn output(&self) -> SeqOutput {
        SeqOutput {
            request: self.request,
            index: self.index,
            token_ids: Vec::new(),
            text: String::new(),
            logprobs: Vec::new(),
            finish: None,
        }
    }
}
