//! Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, seeded randomness, and
//! log-probabilities of the model's own distribution.
//!
//! One `Sampler` per sequence holds its random stream and the token counts its penalties need, so a seeded
//! request reproduces exactly whatever else shares its batch. Cost per step: O(vocab) plus a sort of the
//! candidates that survive top-k (all of them when only top-p is set).

use std::collections::HashMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::SamplingParams;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
    /// Occurrences of each generated token (for presence and frequency penalties).
    output_counts: HashMap<u32, u32>,
    /// Every token seen, prompt included (for the repetition penalty).
    seen: HashMap<u32, ()>,
}

impl Sampler {
    /// `stream` separates the parallel samples (`n > 1`) of one seeded request.
    pub fn new(params: SamplingParams, prompt: &[u32], stream: u64) -> Self {
        let rng = match params.seed {
            Some(seed) => ChaCha8Rng::seed_from_u64(seed.wrapping_add(stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
            None => ChaCha8Rng::from_rng(&mut rand::rng()),
        };
        let seen = if params.repetition_penalty != 1.0 {
            prompt.iter().map(|&t| (t, ())).collect()
        } else {
            HashMap::new()
        };
        Sampler {
            params,
            rng,
            output_counts: HashMap::new(),
            seen,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token and records it for the penalties of later steps.
    pub fn sample(&mut self, logits: &[f32]) -> (u32, Option<TokenLogprob>) {
        let token = if self.params.is_greedy() && !self.params.has_penalties() {
            argmax(logits)
        } else {
            let mut adjusted = logits.to_vec();
            self.apply_penalties(&mut adjusted);
            if self.params.is_greedy() {
                argmax(&adjusted)
            } else {
                self.draw(&mut adjusted)
            }
        };
        let logprob = self
            .params
            .logprobs
            .map(|top_n| logprobs(logits, token, top_n as usize));
        *self.output_counts.entry(token).or_insert(0) += 1;
        if self.params.repetition_penalty != 1.0 {
            self.seen.insert(token, ());
        }
        (token, logprob)
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in self.seen.keys() {
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &count) in &self.output_counts {
                logits[t as usize] -= p.frequency_penalty * count as f32 + p.presence_penalty;
            }
        }
    }

    /// Temperature, then the top-k / top-p / min-p cuts, then a draw from what remains.
    fn draw(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        let mut candidates: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l * inv_t)).collect();
        let by_logit_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && (p.top_k as usize) < candidates.len() {
            candidates.select_nth_unstable_by(p.top_k as usize - 1, by_logit_desc);
            candidates.truncate(p.top_k as usize);
        }
        candidates.sort_unstable_by(by_logit_desc);
        let max = candidates[0].1;
        let mut probs: Vec<f32> = candidates.iter().map(|&(_, l)| (l - max).exp()).collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);
        let mut keep = probs.len();
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            keep = probs
                .iter()
                .position(|&x| {
                    cumulative += x;
                    cumulative >= p.top_p
                })
                .map_or(probs.len(), |i| i + 1);
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = keep.min(probs.iter().take_while(|&&x| x >= floor).count().max(1));
        }
        let kept_total: f32 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f32>() * kept_total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            if u < x {
                return candidates[i].0;
            }
            u -= x;
        }
        candidates[keep - 1].0
    }
}

/// The highest logit's index; the lowest index wins ties, as `torch.argmax` does.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-probabilities under the model's unmodified distribution.
fn logprobs(logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_z = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let mut top: Vec<(u32, f32)> = Vec::new();
    if top_n > 0 {
        let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
        let n = top_n.min(idx.len());
        idx.select_nth_unstable_by(n - 1, |&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        idx.truncate(n);
        idx.sort_unstable_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
        top = idx.into_iter().map(|t| (t, logits[t as usize] - log_z)).collect();
    }
    TokenLogprob {
        token_id: token,
        logprob: logits[token as usize] - log_z,
        top,
    }
}

#[cfg(test)]
mod tests;
