//! Workloads: what the requests of a stage look like — synthetic lengths, long-context prompts, many users sharing
//! a few long system prompts, multi-turn chat sessions whose prompt grows turn by turn over a shared prefix, and
//! replay of a JSONL trace (Mooncake's shape: `timestamp` ms, `input_length`, `output_length`, optional `hash_ids`
//! of shared prefix blocks and `session_id`).
//!
//! Invariant: requests are built before a stage starts, from the campaign seed only, so building them costs no time
//! inside the measurement and two runs of a campaign send the same prompts. Text shared between requests (system
//! prompts, earlier turns, trace blocks) is byte-identical, so it is a token prefix the cluster can cache.
//! Cost: O(total prompt words) memory and time per stage.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::LoadError;
use crate::lengths::LengthDist;
use crate::prompt::words;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub name: String,
    #[serde(flatten)]
    pub kind: WorkloadKind,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkloadKind {
    /// Independent prompts of sampled lengths.
    Synthetic { input: LengthDist, output: LengthDist },
    /// A long document followed by a short question, each request a different document.
    LongContext {
        context: LengthDist,
        #[serde(default = "question_len")]
        question: LengthDist,
        output: LengthDist,
    },
    /// `system_prompts` system prompts of `system_len` words, shared by all users; each request is one of them
    /// (picked at random) followed by the user's own message.
    SharedPrefix {
        system_prompts: usize,
        system_len: u32,
        input: LengthDist,
        output: LengthDist,
    },
    /// `sessions` chats of `turns` turns, interleaved; turn k's prompt is turns 0..k (user message and a reply of
    /// the sampled output length) plus the new user message. A finished session starts a new chat.
    Sessions {
        sessions: usize,
        turns: usize,
        input: LengthDist,
        output: LengthDist,
    },
    /// Replay of a JSONL trace; `block_tokens` is the size of one `hash_ids` block (Mooncake: 512).
    Trace {
        path: PathBuf,
        #[serde(default = "block_tokens")]
        block_tokens: u32,
    },
}

fn question_len() -> LengthDist {
    LengthDist::Fixed { value: 32 }
}

fn block_tokens() -> u32 {
    512
}

/// One request, ready to send.
#[derive(Debug, Clone)]
pub struct RequestSpec {
    pub prompt: String,
    pub max_tokens: u32,
    /// Prompt length in words (≈ tokens); the report uses the router's `usage.prompt_tokens`.
    pub input_words: u32,
    pub session: Option<u64>,
    /// Trace timestamp in seconds.
    pub at_s: Option<f64>,
}

/// One line of a trace file.
#[derive(Debug, Clone, Deserialize)]
pub struct TraceLine {
    /// Milliseconds.
    pub timestamp: f64,
    pub input_length: u32,
    pub output_length: u32,
    #[serde(default)]
    pub hash_ids: Vec<u64>,
    #[serde(default)]
    pub session_id: Option<u64>,
}

impl WorkloadSpec {
    pub fn validate(&self) -> Result<(), LoadError> {
        let f = |x: &str| format!("workloads.{}.{x}", self.name);
        match &self.kind {
            WorkloadKind::Synthetic { input, output } => {
                input.validate(&f("input"))?;
                output.validate(&f("output"))
            }
            WorkloadKind::LongContext {
                context,
                question,
                output,
            } => {
                context.validate(&f("context"))?;
                question.validate(&f("question"))?;
                output.validate(&f("output"))
            }
            WorkloadKind::SharedPrefix {
                system_prompts,
                input,
                output,
                ..
            } => {
                if *system_prompts == 0 {
                    return Err(LoadError::invalid(f("system_prompts"), "must be >= 1"));
                }
                input.validate(&f("input"))?;
                output.validate(&f("output"))
            }
            WorkloadKind::Sessions {
                sessions,
                turns,
                input,
                output,
            } => {
                if *sessions == 0 || *turns == 0 {
                    return Err(LoadError::invalid(f("sessions"), "sessions and turns must be >= 1"));
                }
                input.validate(&f("input"))?;
                output.validate(&f("output"))
            }
            WorkloadKind::Trace { block_tokens, .. } => {
                if *block_tokens == 0 {
                    return Err(LoadError::invalid(f("block_tokens"), "must be >= 1"));
                }
                Ok(())
            }
        }
    }

    pub fn label(&self) -> String {
        match &self.kind {
            WorkloadKind::Synthetic { input, output } => {
                format!("synthetic in {} out {}", input.label(), output.label())
            }
            WorkloadKind::LongContext { context, output, .. } => {
                format!("long context {} out {}", context.label(), output.label())
            }
            WorkloadKind::SharedPrefix {
                system_prompts,
                system_len,
                input,
                ..
            } => format!(
                "{system_prompts} shared system prompts of {system_len} + user {}",
                input.label()
            ),
            WorkloadKind::Sessions { sessions, turns, .. } => format!("{sessions} chat sessions × {turns} turns"),
            WorkloadKind::Trace { path, .. } => format!("trace {}", path.display()),
        }
    }

    /// The first `n` requests of this workload (fewer for a shorter trace).
    pub fn build(&self, n: usize, seed: u64) -> Result<Vec<RequestSpec>, LoadError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let sub = |parts: &[u64]| mix(seed, parts);
        let plain = |prompt: String, words: u32, max_tokens: u32| RequestSpec {
            prompt,
            max_tokens,
            input_words: words,
            session: None,
            at_s: None,
        };
        Ok(match &self.kind {
            WorkloadKind::Synthetic { input, output } => (0..n)
                .map(|i| {
                    let len = input.sample(&mut rng);
                    plain(words(sub(&[1, i as u64]), len), len, output.sample(&mut rng))
                })
                .collect(),
            WorkloadKind::LongContext {
                context,
                question,
                output,
            } => (0..n)
                .map(|i| {
                    let (c, q) = (context.sample(&mut rng), question.sample(&mut rng));
                    let prompt = format!(
                        "Document:{}\nQuestion:{}",
                        words(sub(&[2, i as u64]), c),
                        words(sub(&[3, i as u64]), q)
                    );
                    plain(prompt, c + q + 2, output.sample(&mut rng))
                })
                .collect(),
            WorkloadKind::SharedPrefix {
                system_prompts,
                system_len,
                input,
                output,
            } => (0..n)
                .map(|i| {
                    let which = rand::Rng::random_range(&mut rng, 0..*system_prompts) as u64;
                    let len = input.sample(&mut rng);
                    let prompt = format!(
                        "{}\nUser:{}",
                        words(sub(&[4, which]), *system_len),
                        words(sub(&[5, i as u64]), len)
                    );
                    RequestSpec {
                        session: Some(which),
                        ..plain(prompt, system_len + len + 1, output.sample(&mut rng))
                    }
                })
                .collect(),
            WorkloadKind::Sessions {
                sessions,
                turns,
                input,
                output,
            } => {
                let mut history: Vec<(String, u32)> = vec![(String::new(), 0); *sessions];
                (0..n)
                    .map(|i| {
                        let session = i % sessions;
                        let round = i / sessions;
                        let (chat, turn) = (round / turns, round % turns);
                        let id = (chat * sessions + session) as u64;
                        if turn == 0 {
                            history[session] = (String::new(), 0);
                        }
                        let (user_len, reply_len) = (input.sample(&mut rng), output.sample(&mut rng));
                        let h = &mut history[session];
                        h.0.push_str("\nUser:");
                        h.0.push_str(&words(sub(&[6, id, turn as u64]), user_len));
                        h.1 += user_len + 1;
                        let request = RequestSpec {
                            session: Some(id),
                            ..plain(h.0.clone(), h.1, reply_len)
                        };
                        // The reply the next turn carries in its history (the simulated assistant's words).
                        h.0.push_str("\nAssistant:");
                        h.0.push_str(&words(sub(&[7, id, turn as u64]), reply_len));
                        h.1 += reply_len + 1;
                        request
                    })
                    .collect()
            }
            WorkloadKind::Trace { path, block_tokens } => trace_requests(&read_trace(path)?, n, *block_tokens, seed),
        })
    }
}

/// A seed derived from the campaign seed and a path of integers (splitmix-style, stable across runs).
fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &p in parts {
        h = (h ^ p).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 29;
    }
    h
}

pub fn read_trace(path: &Path) -> Result<Vec<TraceLine>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: TraceLine = serde_json::from_str(line).map_err(|e| LoadError::Trace {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        if parsed.input_length == 0 || parsed.output_length == 0 {
            return Err(LoadError::Trace {
                path: path.to_path_buf(),
                line: i + 1,
                message: "input_length and output_length must be >= 1".into(),
            });
        }
        lines.push(parsed);
    }
    Ok(lines)
}

/// Trace lines as requests: `hash_ids` blocks become shared text blocks (the same id, the same words); without
/// them a `session_id` extends that session's previous prompt when it fits; the rest is words of its own.
pub fn trace_requests(lines: &[TraceLine], n: usize, block_tokens: u32, seed: u64) -> Vec<RequestSpec> {
    let mut sessions: HashMap<u64, (String, u32)> = HashMap::new();
    lines
        .iter()
        .take(n)
        .enumerate()
        .map(|(i, line)| {
            let mut text = String::new();
            let mut len = 0u32;
            for &id in &line.hash_ids {
                if len >= line.input_length {
                    break;
                }
                let take = block_tokens.min(line.input_length - len);
                text.push_str(&words(mix(seed, &[8, id]), take));
                len += take;
            }
            if line.hash_ids.is_empty()
                && let Some(s) = line.session_id
                && let Some((prev, prev_len)) = sessions.get(&s)
                && *prev_len <= line.input_length
            {
                text.push_str(prev);
                len = *prev_len;
            }
            if len < line.input_length {
                text.push_str(&words(mix(seed, &[9, i as u64]), line.input_length - len));
                len = line.input_length;
            }
            if let Some(s) = line.session_id {
                sessions.insert(s, (text.clone(), len));
            }
            RequestSpec {
                prompt: text,
                max_tokens: line.output_length,
                input_words: len,
                session: line.session_id,
                at_s: Some(line.timestamp / 1000.0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
