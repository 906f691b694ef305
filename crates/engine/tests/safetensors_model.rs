//! Hugging Face model directories (config.json + model.safetensors + tokenizer.json), written by transformers with
//! random weights, against the logits transformers computed for them (fixtures/make_tiny_llama.py,
//! fixtures/make_tiny_mixtral.py). The shapes cover grouped-query attention, an untied output head, Llama-3 RoPE
//! scaling, and a Mixtral mixture of experts (8 experts, top-2 routing), also as llama.cpp lays it out in GGUF.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

use std::path::PathBuf;

use cleave_engine::kv::KvCache;
use cleave_engine::{EngineError, ModelFiles, SeqChunk, load_model};
use serde::Deserialize;

mod common;

#[derive(Deserialize)]
struct Reference {
    text: String,
    input_ids: Vec<u32>,
    vocab_size: usize,
    logits: Vec<f32>,
    greedy_ids: Vec<u32>,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures().join(format!("{name}-reference.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn tiny_llama_logits_and_greedy_tokens_match_transformers() {
    let r = reference("tiny-llama");
    let (model, tokenizer) = load_model(ModelFiles::HfDir(&fixtures().join("tiny-llama"))).unwrap();
    let cfg = model.config();
    assert_eq!((cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size), (4, 2, r.vocab_size));
    assert!(cfg.rope_scaling.is_some() && !cfg.tie_embeddings && !cfg.is_moe());
    assert_eq!(tokenizer.encode(&r.text, false).unwrap(), r.input_ids);
    matches_reference(&model, &r);
}

#[test]
fn tiny_mixtral_logits_and_greedy_tokens_match_transformers() {
    let r = reference("tiny-mixtral");
    let (model, tokenizer) = load_model(ModelFiles::HfDir(&fixtures().join("tiny-mixtral"))).unwrap();
    let cfg = model.config();
    assert_eq!((cfg.n_experts, cfg.n_experts_used, cfg.n_kv_heads), (8, 2, 4));
    assert_eq!(tokenizer.encode(&r.text, false).unwrap(), r.input_ids);
    matches_reference(&model, &r);
}

/// The same Mixtral as llama.cpp's converter writes it (architecture `llama` with `expert_count`, each projection's
/// experts stacked in one 3-D tensor, interleaved q/k rows): the GGUF loader matches transformers too.
#[test]
fn tiny_mixtral_from_gguf_with_stacked_experts_matches_transformers() {
    let r = reference("tiny-mixtral");
    let (_, model) = cleave_engine::LlamaModel::load_gguf(&fixtures().join("tiny-mixtral.gguf")).unwrap();
    let cfg = model.config();
    assert_eq!(
        (cfg.architecture.as_str(), cfg.n_experts, cfg.n_experts_used),
        ("llama", 8, 2)
    );
    matches_reference(&model, &r);
}

/// Logits at every prompt position within 1e-4 of transformers', and the same greedy continuation (from a single
/// prefill of the whole prompt).
fn matches_reference(model: &cleave_engine::LlamaModel, r: &Reference) {
    let worst = worst_logit_error(model, r);
    assert!(worst < 1e-4, "logits differ from transformers by up to {worst}");
    let (_, out) = common::greedy_on_model(model, &r.input_ids, r.greedy_ids.len(), 4);
    assert_eq!(out, r.greedy_ids);
}

/// The largest difference from transformers' logits over every prompt position, feeding the prompt one token at a
/// time so each position's logits come out.
fn worst_logit_error(model: &cleave_engine::LlamaModel, r: &Reference) -> f32 {
    let block_size = 4;
    let n_blocks = (r.input_ids.len() + r.greedy_ids.len()).div_ceil(block_size);
    let blocks: Vec<u32> = (0..n_blocks as u32).collect();
    let mut kv = KvCache::new(model.kv_shape(n_blocks, block_size));
    let mut worst = 0.0f32;
    for (pos, want) in r.logits.chunks_exact(r.vocab_size).enumerate() {
        let chunk = SeqChunk {
            tokens: &r.input_ids[pos..=pos],
            start_pos: pos,
            blocks: &blocks,
            want_logits: true,
        };
        let got = model.forward(&[chunk], &mut kv).unwrap();
        worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(worst, f32::max);
    }
    worst
}

fn copy_fixture(dir: &std::path::Path) {
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(fixtures().join("tiny-llama").join(f), dir.join(f)).unwrap();
    }
}

fn load_err(dir: &std::path::Path) -> String {
    match load_model(ModelFiles::HfDir(dir)) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("loading {} should fail", dir.display()),
    }
}

#[test]
fn broken_model_directories_are_named_in_the_error() {
    let tmp = std::env::temp_dir().join(format!("cleave-st-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    copy_fixture(&tmp);
    let st = tmp.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load_err(&tmp);
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors file"),
        "{msg}"
    );

    copy_fixture(&tmp);
    let cfg = tmp.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    std::fs::write(&cfg, text).unwrap();
    let msg = load_err(&tmp);
    assert!(
        msg.contains("missing tensor 'model.layers.2.self_attn.q_proj.weight'"),
        "{msg}"
    );

    copy_fixture(&tmp);
    std::fs::write(&cfg, "{ not json").unwrap();
    let msg = load_err(&tmp);
    assert!(
        msg.contains("config.json") && msg.contains("invalid config.json"),
        "{msg}"
    );

    copy_fixture(&tmp);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"hidden_size\": 64", "\"hidden_size\": 32");
    std::fs::write(&cfg, text).unwrap();
    let msg = load_err(&tmp);
    assert!(msg.contains("has shape") && msg.contains("expected"), "{msg}");

    std::fs::remove_dir_all(&tmp).unwrap();
    assert!(matches!(
        load_model(ModelFiles::HfDir(&tmp)),
        Err(EngineError::Io { .. } | EngineError::Model { .. })
    ));
}
