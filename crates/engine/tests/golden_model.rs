//! The engine against Hugging Face transformers on the real default model (golden data: tests/golden/).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] functions

mod common;

use common::*;

/// Worst absolute logit difference accepted against transformers' f32 logits (observed: under 1e-4; values span roughly ±30; the
/// difference comes only from f32 summation order across 30 layers).
const LOGIT_TOLERANCE: f32 = 5e-4;

#[test]
fn tokenizer_reproduces_transformers_prompt_ids() {
    let (_, tokenizer) = load_model();
    for p in golden().prompts {
        let ids = tokenizer.encode(&p.text, true).unwrap();
        assert_eq!(ids, p.prompt_ids, "{}", p.name);
    }
}

#[test]
fn chat_template_renders_as_transformers() {
    let (_, tokenizer) = load_model();
    for p in golden().prompts.into_iter().filter(|p| p.messages.is_some()) {
        let messages: Vec<cleave_tokens::ChatMessage> =
            serde_json::from_value(serde_json::Value::Array(p.messages.clone().unwrap())).unwrap();
        assert_eq!(
            tokenizer.apply_chat_template(&messages, true).unwrap(),
            p.text,
            "{}",
            p.name
        );
    }
}

/// Plain prefill + decode loop on the model, no scheduler: the reference the other tests build on.
#[test]
fn greedy_tokens_and_first_logits_match_transformers() {
    let (model, _) = load_model();
    let golden = golden();
    for p in &golden.prompts {
        let (logits, out) = greedy_on_model(&model, &p.prompt_ids, golden.new_tokens, 16);
        let want = golden_logits(&p.name);
        let worst = logits
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{}: worst first-position logit difference {worst:e}", p.name);
        assert!(worst < LOGIT_TOLERANCE, "{}: logits differ by up to {worst}", p.name);
        assert_greedy_matches(p, &out);
    }
}
