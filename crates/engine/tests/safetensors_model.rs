//! A Hugging Face model directory (config.json + model.safetensors + tokenizer.json), written by transformers with
//! random weights, against the logits transformers computed for it (fixtures/make_tiny_llama.py). The shape covers
//! grouped-query attention, an untied output head and Llama-3 RoPE scaling.

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

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("tiny-llama-reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn tiny_llama_logits_and_greedy_tokens_match_transformers() {
    let r = reference();
    let (model, tokenizer) = load_model(ModelFiles::HfDir(&fixtures().join("tiny-llama"))).unwrap();
    let cfg = model.config();
    assert_eq!((cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size), (4, 2, r.vocab_size));
    assert!(cfg.rope_scaling.is_some() && !cfg.tie_embeddings);
    assert_eq!(tokenizer.encode(&r.text, false).unwrap(), r.input_ids);

    // Logits at every position: feed the prompt one token at a time so each position's logits come out.
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
    assert!(worst < 1e-4, "logits differ from transformers by up to {worst}");

    // Greedy continuation from a single prefill of the whole prompt.
    let (_, out) = common::greedy_on_model(&model, &r.input_ids, r.greedy_ids.len(), block_size);
    assert_eq!(out, r.greedy_ids);
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
