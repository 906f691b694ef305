//! One simulated request: waits for KV blocks, "prefills" its uncached tokens, then emits one token per decode
//! step at the modelled times, as the stream of `GenerateResponse`s the `Generate` RPC returns.
//!
//! The sequence is driven by the RPC's response stream itself (no task, no channel): it advances when polled, and
//! dropping the stream — client gone, RPC reset — drops the sequence, which releases its blocks and counters.
//! Invariants: deadlines are absolute (each token's deadline is the previous deadline plus one step), so timer
//! lateness never accumulates; a sequence is counted in exactly one of waiting/running until it is dropped.
//! Without free blocks for its next token a decoding sequence is preempted like the engine does: it releases its
//! blocks, waits, and recomputes what is not cached when admitted again. The `n` samples of a request share one
//! simulated sequence (one set of blocks): each step emits one response per sample, all with the same token.
//! Cost: waiting sequences are all woken when blocks free up (fine for a simulator, O(waiting) per release).

use std::collections::VecDeque;
use std::sync::Arc;

use cleave_proto::v1;
use cleave_tokens::{BlockHash, BlockHasher};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::kv::HeldBlock;
use crate::state::Shared;

/// What a validated request asks of the simulator.
#[derive(Debug, Clone)]
pub(crate) struct SimRequest {
    pub request_id: String,
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub n: u32,
    pub stop_token_ids: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    /// Admitted; the next token is due at this deadline, after the prefill of `uncached` tokens.
    Prefilling {
        due: Instant,
        uncached: u64,
    },
    /// Decoding; the last token was due at `last`.
    Decoding {
        last: Instant,
    },
    Done,
}

#[derive(Debug)]
pub(crate) struct SimSequence {
    shared: Arc<Shared>,
    request: SimRequest,
    cancel: CancellationToken,
    /// Whether `request.request_id` is in the abort table.
    registered_id: bool,
    hasher: BlockHasher,
    /// Chained hashes of every full block of prompt + generated tokens.
    hashes: Vec<BlockHash>,
    blocks: Vec<HeldBlock>,
    /// Leading blocks already published to the prefix cache.
    published: usize,
    generated: usize,
    cached_tokens: usize,
    phase: Phase,
    /// Prefill tokens this sequence counts in the shared `queued_prefill_tokens`.
    queued: u64,
    pending: VecDeque<Result<v1::GenerateResponse, Status>>,
}

impl SimSequence {
    /// A new sequence, counted as waiting. `registered_id`: the caller put its id in the abort table.
    pub fn new(shared: Arc<Shared>, request: SimRequest, cancel: CancellationToken, registered_id: bool) -> Self {
        let mut hasher = BlockHasher::new(shared.config.block_size, 0);
        let hashes = hasher.extend(&request.prompt);
        let queued = request.prompt.len() as u64;
        shared.with_state(|s| {
            s.waiting += 1;
            s.queued_prefill_tokens += queued;
            s.accepted += 1;
        });
        SimSequence {
            shared,
            request,
            cancel,
            registered_id,
            hasher,
            hashes,
            blocks: Vec::new(),
            published: 0,
            generated: 0,
            cached_tokens: 0,
            phase: Phase::Waiting,
            queued,
            pending: VecDeque::new(),
        }
    }

    /// The next response, `None` once the sequence has finished.
    pub async fn next(&mut self) -> Option<Result<v1::GenerateResponse, Status>> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            let step = match self.phase {
                Phase::Done => return None,
                Phase::Waiting => self.admit().await,
                Phase::Prefilling { due, uncached } => self.prefill(due, uncached).await,
                Phase::Decoding { last } => self.decode(last).await,
            };
            if step.is_err() {
                self.finish_cancelled();
            }
        }
    }

    fn tokens_len(&self) -> usize {
        self.request.prompt.len() + self.generated
    }

    /// Waits until the blocks for every token so far fit, reusing the cached prefix; then starts the prefill.
    async fn admit(&mut self) -> Result<(), Cancelled> {
        let bs = self.shared.config.block_size;
        let tokens = self.tokens_len();
        let reusable = ((tokens - 1) / bs).min(self.hashes.len());
        loop {
            let freed = self.shared.blocks_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let admitted = self.shared.with_state(|s| {
                let mut blocks = s.kv.acquire_prefix(&self.hashes[..reusable]);
                let fresh = tokens.div_ceil(bs) - blocks.len();
                if s.kv.available() < fresh {
                    s.kv.release_all(&blocks);
                    return None;
                }
                for _ in 0..fresh {
                    blocks.extend(s.kv.allocate());
                }
                let cached = (blocks.len() - fresh) * bs;
                let uncached = (tokens - cached) as u64;
                s.waiting -= 1;
                s.running += 1;
                s.queued_prefill_tokens = s.queued_prefill_tokens - self.queued + uncached;
                Some((blocks, cached, uncached))
            });
            match admitted {
                Some((blocks, cached, uncached)) => {
                    self.blocks = blocks;
                    self.published = cached / bs;
                    self.queued = uncached;
                    if self.generated == 0 {
                        self.cached_tokens = cached;
                    }
                    let due = Instant::now() + self.shared.config.first_token_after(uncached as usize);
                    self.phase = Phase::Prefilling { due, uncached };
                    return Ok(());
                }
                None => {
                    tokio::select! {
                        () = self.cancel.cancelled() => return Err(Cancelled),
                        () = freed => {}
                    }
                }
            }
        }
    }

    async fn prefill(&mut self, due: Instant, uncached: u64) -> Result<(), Cancelled> {
        self.wait_until(due).await?;
        self.shared.with_state(|s| s.queued_prefill_tokens -= uncached);
        self.queued = 0;
        self.emit(due);
        Ok(())
    }

    async fn decode(&mut self, last: Instant) -> Result<(), Cancelled> {
        let bs = self.shared.config.block_size;
        // This step feeds the last generated token: its KV needs a slot.
        let needed = self.tokens_len().div_ceil(bs);
        let (grown, running) = self.shared.with_state(|s| {
            while self.blocks.len() < needed {
                match s.kv.allocate() {
                    Some(b) => self.blocks.push(b),
                    None => return (false, s.running),
                }
            }
            (true, s.running)
        });
        if !grown {
            self.preempt();
            return Ok(());
        }
        let due = last + self.shared.config.decode_step(running);
        self.wait_until(due).await?;
        self.emit(due);
        Ok(())
    }

    /// Sleeps until `deadline` (not at all if it has passed), unless the request is aborted first.
    async fn wait_until(&self, deadline: Instant) -> Result<(), Cancelled> {
        if self.cancel.is_cancelled() {
            return Err(Cancelled);
        }
        if deadline <= Instant::now() {
            return Ok(());
        }
        tokio::select! {
            () = self.cancel.cancelled() => Err(Cancelled),
            () = tokio::time::sleep_until(deadline) => Ok(()),
        }
    }

    /// Emits the next token (one response per sample), publishes the blocks now computed, and finishes if due.
    fn emit(&mut self, due: Instant) {
        let config = &self.shared.config;
        let token = config.tokens.token(self.generated);
        self.generated += 1;
        self.hashes.extend(self.hasher.push(token));
        let stopped = self.request.stop_token_ids.contains(&token);
        let finish = if stopped {
            Some(v1::FinishReason::Stop)
        } else if self.generated >= self.request.max_tokens || self.tokens_len() >= config.max_context {
            Some(v1::FinishReason::Length)
        } else {
            None
        };
        let text = if stopped {
            String::new()
        } else {
            config.token_text.clone()
        };
        let usage = finish.map(|_| v1::Usage {
            prompt_tokens: saturate(self.request.prompt.len()),
            cached_tokens: saturate(self.cached_tokens),
            completion_tokens: saturate(self.generated),
        });
        for index in 0..self.request.n {
            self.pending.push_back(Ok(v1::GenerateResponse {
                index,
                token_ids: vec![token],
                text: text.clone(),
                logprobs: Vec::new(),
                finish_reason: finish.unwrap_or(v1::FinishReason::Unspecified) as i32,
                usage,
            }));
        }
        // Every token but the one just sampled has its KV computed.
        let computed_blocks = ((self.tokens_len() - 1) / config.block_size).min(self.hashes.len());
        if computed_blocks > self.published {
            self.shared.with_state(|s| {
                for b in self.published..computed_blocks {
                    s.kv.register(&mut self.blocks[b], self.hashes[b]);
                }
            });
            self.published = computed_blocks;
        }
        if finish.is_some() {
            self.release();
            self.phase = Phase::Done;
        } else {
            self.phase = Phase::Decoding { last: due };
        }
    }

    /// Out of blocks mid-decode: give them back and wait to be admitted again.
    fn preempt(&mut self) {
        let blocks = std::mem::take(&mut self.blocks);
        let queued = self.tokens_len() as u64;
        self.shared.with_state(|s| {
            s.kv.release_all(&blocks);
            s.running -= 1;
            s.waiting += 1;
            s.queued_prefill_tokens += queued;
        });
        self.queued = queued;
        self.published = 0;
        self.phase = Phase::Waiting;
        self.shared.blocks_freed.notify_waiters();
    }

    fn finish_cancelled(&mut self) {
        self.release();
        self.phase = Phase::Done;
        self.pending.push_back(Err(Status::cancelled(format!(
            "request '{}' was aborted",
            self.request.request_id
        ))));
    }

    /// Leaves the waiting/running counts and frees the blocks; idempotent.
    fn release(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        let blocks = std::mem::take(&mut self.blocks);
        let waiting = self.phase == Phase::Waiting;
        let queued = std::mem::take(&mut self.queued);
        self.shared.with_state(|s| {
            s.kv.release_all(&blocks);
            if waiting {
                s.waiting -= 1;
            } else {
                s.running -= 1;
            }
            s.queued_prefill_tokens -= queued;
        });
        self.phase = Phase::Done;
        if !blocks.is_empty() {
            self.shared.blocks_freed.notify_waiters();
        }
        if self.registered_id {
            self.shared.unregister(&self.request.request_id);
            self.registered_id = false;
        }
    }
}

impl Drop for SimSequence {
    fn drop(&mut self) {
        self.release();
    }
}

/// The request was aborted.
#[derive(Debug)]
struct Cancelled;

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
