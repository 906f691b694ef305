//! Shared by the engine's integration tests: the real default model and the golden data made by transformers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions
#![allow(dead_code)] // each test binary uses a different subset

use std::path::PathBuf;
use std::sync::Arc;

use cleave_engine::kv::KvCache;
use cleave_engine::sampling::{SamplingSpec, argmax};
use cleave_engine::{LlamaModel, SeqChunk};
use cleave_tokens::Tokenizer;
use serde::Deserialize;

pub fn load_model() -> (LlamaModel, Arc<Tokenizer>) {
    let (file, model) = LlamaModel::load_gguf(&cleave_testkit::default_model_path()).expect("the default model loads");
    let tokenizer = Tokenizer::from_gguf(&file).expect("the default model's tokenizer builds");
    (model, Arc::new(tokenizer))
}

#[derive(Debug, Deserialize)]
pub struct Golden {
    pub new_tokens: usize,
    pub prompts: Vec<GoldenPrompt>,
}

#[derive(Debug, Deserialize)]
pub struct GoldenPrompt {
    pub name: String,
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
    pub margins: Vec<f32>,
    pub messages: Option<Vec<serde_json::Value>>,
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

pub fn golden() -> Golden {
    let text = std::fs::read_to_string(golden_dir().join("golden.json")).expect("golden.json");
    serde_json::from_str(&text).expect("golden.json parses")
}

/// Logits transformers computed at the first generated position.
pub fn golden_logits(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(golden_dir().join(format!("logits_{name}.f32"))).expect("golden logits");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Below this top-1/top-2 logit gap, f32 summation order may legitimately flip a greedy choice.
pub const NEAR_TIE: f32 = 0.01;

/// Asserts `got` equals the golden greedy ids. A divergence is accepted only at a step whose golden margin is a
/// near-tie (after which the continuations are unrelated, so comparison stops there).
pub fn assert_greedy_matches(p: &GoldenPrompt, got: &[u32]) {
    assert_eq!(
        got.len(),
        p.output_ids.len(),
        "{}: generated {} tokens",
        p.name,
        got.len()
    );
    if let Some(step) = got.iter().zip(&p.output_ids).position(|(a, b)| a != b) {
        let margin = p.margins[step];
        assert!(
            margin < NEAR_TIE,
            "{}: token {step} is {} but transformers chose {} with a margin of {margin} (not a near-tie)\n got {got:?}\nwant {:?}",
            p.name,
            got[step],
            p.output_ids[step],
            p.output_ids
        );
        eprintln!(
            "{}: diverged at step {step} on a near-tie (margin {margin}); equal before it",
            p.name
        );
    }
}

/// Greedy sampling of `max_tokens` tokens, EOS ignored, as the golden data was made.
pub fn greedy(max_tokens: u32) -> SamplingSpec {
    SamplingSpec {
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    }
}

/// Greedy decoding straight on the model, no scheduler: one prefill of `prompt`, then `n` single-token steps
/// through the paged KV cache. Returns the logits at the first generated position and the `n` generated ids.
pub fn greedy_on_model(model: &LlamaModel, prompt: &[u32], n: usize, block_size: usize) -> (Vec<f32>, Vec<u32>) {
    let n_blocks = (prompt.len() + n).div_ceil(block_size);
    let blocks: Vec<u32> = (0..n_blocks as u32).collect();
    let mut kv = KvCache::new(model.kv_shape(n_blocks, block_size));
    let step = |tokens: &[u32], start_pos: usize, kv: &mut KvCache| {
        model
            .forward(
                &[SeqChunk {
                    tokens,
                    start_pos,
                    blocks: &blocks,
                    want_logits: true,
                }],
                kv,
            )
            .unwrap()
    };
    let first_logits = step(prompt, 0, &mut kv);
    let mut tokens = prompt.to_vec();
    let mut next = argmax(&first_logits);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next);
        tokens.push(next);
        let pos = tokens.len() - 1;
        next = argmax(&step(&tokens[pos..], pos, &mut kv));
    }
    (first_logits, out)
}
