//! The GPU benchmark behind `cleave bench --device cuda`: load time, the memory roofline (device-to-device copy
//! bandwidth and the batch-1 decode rate it allows), prefill of one long prompt, and decode at several batch sizes.
//!
//! It drives the backend's forward pass directly with hand-placed block tables, so the numbers are the device path
//! alone: every step includes uploading the batch layout and copying the logits back to the host, and excludes the
//! scheduler and host-side sampling (reported separately by the CPU benchmark).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CudaBackend, CudaOptions};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::error::EngineError;
use crate::kv::BlockId;
use crate::model::SeqChunk;

#[derive(Debug, Clone)]
pub struct CudaBenchConfig {
    pub prompt_tokens: usize,
    pub batches: Vec<usize>,
    /// Tokens already in each decoding sequence's context.
    pub decode_context: usize,
    /// Timed decode steps per batch size.
    pub decode_steps: usize,
    pub kv_cache_bytes: usize,
    pub runs: usize,
}

impl Default for CudaBenchConfig {
    fn default() -> Self {
        CudaBenchConfig {
            prompt_tokens: 2048,
            batches: vec![1, 32],
            decode_context: 128,
            decode_steps: 64,
            kv_cache_bytes: 8 << 30,
            runs: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DecodeResult {
    pub batch: usize,
    pub step_ms: f64,
    pub tokens_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CudaBenchReport {
    pub device: String,
    pub model: String,
    pub params: usize,
    pub weights_bytes: usize,
    pub kv_bytes: usize,
    pub load_s: f64,
    pub kernels_compiled: bool,
    pub kernels_s: f64,
    pub copy_gb_s: f64,
    /// Batch-1 decode rate if every step only read the weights once at copy bandwidth.
    pub roofline_tokens_per_s: f64,
    pub prefill_tokens: usize,
    pub prefill_ms: f64,
    pub prefill_tokens_per_s: f64,
    pub decode: Vec<DecodeResult>,
    /// One-row GEMMs over a 28672 × 4096 bf16 matrix: (output dtype, GB/s of weights read).
    pub gemv_gb_s: Vec<(String, f64)>,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// Token ids spread over the vocabulary (the values do not change the cost).
fn tokens(n: usize, salt: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + salt * 104_729) % vocab) as u32).collect()
}

/// Builds a synthetic model of `config`'s shape and measures it.
pub fn run_cuda_bench(
    name: &str,
    model: ModelConfig,
    options: &CudaOptions<'_>,
    config: &CudaBenchConfig,
) -> Result<CudaBenchReport, EngineError> {
    let started = Instant::now();
    let mut backend = CudaBackend::synthetic(model.clone(), 0x5eed, options)?;
    let load_s = started.elapsed().as_secs_f64();
    let copy = backend.copy_bandwidth(1 << 30, 10)?;
    let bs = backend.kv_shape().block_size;
    let vocab = model.vocab_size;
    let runs = config.runs.max(1);

    // Prefill: one prompt in one forward pass.
    let blocks: Vec<BlockId> = (0..config.prompt_tokens.div_ceil(bs) as u32).collect();
    let prompt = tokens(config.prompt_tokens, 1, vocab);
    let mut times = Vec::new();
    for _ in 0..=runs {
        let chunk = SeqChunk {
            tokens: &prompt,
            start_pos: 0,
            blocks: &blocks,
            want_logits: true,
        };
        let t0 = Instant::now();
        backend.forward_plain(&[chunk])?;
        backend.synchronize()?;
        times.push(t0.elapsed());
    }
    times.remove(0); // the first run pays lazy allocations
    let prefill = median(times);

    let mut decode = Vec::new();
    for &batch in &config.batches {
        let ctx = config.decode_context;
        let per_seq = (ctx + config.decode_steps + 1).div_ceil(bs);
        if batch * per_seq > backend.kv_shape().n_blocks {
            return Err(EngineError::invalid(
                "batches",
                format!(
                    "batch {batch} needs {} KV blocks; the pool has {}",
                    batch * per_seq,
                    backend.kv_shape().n_blocks
                ),
            ));
        }
        let tables: Vec<Vec<BlockId>> = (0..batch)
            .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
            .collect();
        let contexts: Vec<Vec<u32>> = (0..batch).map(|s| tokens(ctx, s + 2, vocab)).collect();
        let fill: Vec<SeqChunk<'_>> = (0..batch)
            .map(|s| SeqChunk {
                tokens: &contexts[s],
                start_pos: 0,
                blocks: &tables[s],
                want_logits: false,
            })
            .collect();
        backend.forward_plain(&fill)?;
        let step_tokens: Vec<[u32; 1]> = (0..batch).map(|s| [(s as u32 * 31) % vocab as u32]).collect();
        let mut steps = Vec::new();
        for i in 0..config.decode_steps + 2 {
            let chunks: Vec<SeqChunk<'_>> = (0..batch)
                .map(|s| SeqChunk {
                    tokens: &step_tokens[s],
                    start_pos: ctx + i,
                    blocks: &tables[s],
                    want_logits: true,
                })
                .collect();
            let t0 = Instant::now();
            backend.forward_plain(&chunks)?;
            steps.push(t0.elapsed());
        }
        steps.drain(..2); // warm-up steps
        let step = median(steps);
        decode.push(DecodeResult {
            batch,
            step_ms: step.as_secs_f64() * 1e3,
            tokens_per_s: batch as f64 / step.as_secs_f64(),
        });
    }

    let gemv = backend.gemv_probe()?;
    let weights_bytes = backend.weights_bytes();
    Ok(CudaBenchReport {
        gemv_gb_s: gemv,
        device: backend.device_name().to_owned(),
        model: name.to_owned(),
        params: model.n_params(),
        weights_bytes,
        kv_bytes: backend.kv_bytes(),
        load_s,
        kernels_compiled: backend.kernel_info().compiled,
        kernels_s: backend.kernel_info().elapsed.as_secs_f64(),
        copy_gb_s: copy / 1e9,
        // A batch-1 step reads every weight (the convention, embedding table included) but for the experts
        // the token is not routed to.
        roofline_tokens_per_s: copy / (weights_bytes - 2 * model.unrouted_expert_params()).max(1) as f64,
        prefill_tokens: config.prompt_tokens,
        prefill_ms: prefill.as_secs_f64() * 1e3,
        prefill_tokens_per_s: config.prompt_tokens as f64 / prefill.as_secs_f64(),
        decode,
    })
}

impl std::fmt::Display for CudaBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "device            {}", self.device)?;
        writeln!(
            f,
            "model             {} ({:.2} B params, {:.2} GB bf16 weights, {:.1} GB KV pool)",
            self.model,
            self.params as f64 / 1e9,
            self.weights_bytes as f64 / 1e9,
            self.kv_bytes as f64 / 1e9
        )?;
        writeln!(
            f,
            "load              {:.2} s (kernels {} in {:.2} s)",
            self.load_s,
            if self.kernels_compiled {
                "compiled"
            } else {
                "from cache"
            },
            self.kernels_s
        )?;
        writeln!(
            f,
            "copy bandwidth    {:.0} GB/s → batch-1 roofline {:.1} tokens/s",
            self.copy_gb_s, self.roofline_tokens_per_s
        )?;
        writeln!(
            f,
            "prefill           {} tokens in {:.1} ms → {:.0} tokens/s",
            self.prefill_tokens, self.prefill_ms, self.prefill_tokens_per_s
        )?;
        for (what, gb_s) in &self.gemv_gb_s {
            writeln!(f, "one-row GEMM      {what}: {gb_s:.0} GB/s of weights")?;
        }
        for d in &self.decode {
            writeln!(
                f,
                "decode batch {:<4} {:.2} ms/step → {:.1} tokens/s{}",
                d.batch,
                d.step_ms,
                d.tokens_per_s,
                if d.batch == 1 {
                    format!(
                        " ({:.0}% of roofline)",
                        100.0 * d.tokens_per_s / self.roofline_tokens_per_s
                    )
                } else {
                    String::new()
                }
            )?;
        }
        Ok(())
    }
}
