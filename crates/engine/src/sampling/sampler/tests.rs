use super::*;
use crate::sampling::{ModelLimits, SamplingSpec};

fn params(spec: SamplingSpec) -> SamplingParams {
    spec.validate(
        4,
        ModelLimits {
            max_context: 64,
            vocab_size: 8,
        },
    )
    .unwrap()
    .params
}

#[test]
fn greedy_takes_argmax_and_lowest_index_on_ties() {
    let mut s = Sampler::new(SamplingParams::greedy(), &[], 0);
    assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]).0, 1);
}

#[test]
fn seeded_sampling_reproduces_and_streams_differ() {
    let spec = SamplingSpec {
        temperature: Some(1.0),
        seed: Some(42),
        ..Default::default()
    };
    let logits: Vec<f32> = (0..8).map(|i| (i as f32) * 0.1).collect();
    let run = |stream| {
        let mut s = Sampler::new(params(spec.clone()), &[], stream);
        (0..64).map(|_| s.sample(&logits).0).collect::<Vec<_>>()
    };
    assert_eq!(run(0), run(0));
    assert_ne!(run(0), run(1));
}

#[test]
fn sampling_follows_the_distribution() {
    let spec = SamplingSpec {
        temperature: Some(1.0),
        seed: Some(7),
        ..Default::default()
    };
    let logits = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
    let mut s = Sampler::new(params(spec), &[], 0);
    let mut counts = [0u32; 3];
    for _ in 0..20_000 {
        counts[s.sample(&logits).0 as usize] += 1;
    }
    let freq: Vec<f32> = counts.iter().map(|&c| c as f32 / 20_000.0).collect();
    for (f, want) in freq.iter().zip([0.7, 0.2, 0.1]) {
        assert!((f - want).abs() < 0.015, "frequencies {freq:?}");
    }
}

#[test]
fn cuts_leave_only_the_top_token() {
    let logits = [1.0, 2.5, 2.0, 0.0];
    for spec in [
        SamplingSpec {
            temperature: Some(2.0),
            top_k: Some(1),
            ..Default::default()
        },
        SamplingSpec {
            temperature: Some(2.0),
            top_p: Some(0.01),
            ..Default::default()
        },
        SamplingSpec {
            temperature: Some(2.0),
            min_p: Some(1.0),
            ..Default::default()
        },
    ] {
        let mut s = Sampler::new(params(spec), &[], 0);
        for _ in 0..50 {
            assert_eq!(s.sample(&logits).0, 1);
        }
    }
}

#[test]
fn top_k_never_draws_outside_the_k_best() {
    let spec = SamplingSpec {
        temperature: Some(5.0),
        top_k: Some(2),
        seed: Some(3),
        ..Default::default()
    };
    let mut s = Sampler::new(params(spec), &[], 0);
    for _ in 0..500 {
        let t = s.sample(&[0.0, 1.0, 0.9, 0.5, 0.2]).0;
        assert!(t == 1 || t == 2);
    }
}

#[test]
fn repetition_penalty_demotes_seen_tokens() {
    let spec = SamplingSpec {
        temperature: Some(0.0),
        repetition_penalty: Some(1.5),
        ..Default::default()
    };
    let mut s = Sampler::new(params(spec), &[0], 0);
    assert_eq!(s.sample(&[2.0, 1.9, 0.0]).0, 1);
}

#[test]
fn frequency_penalty_grows_with_each_use() {
    let spec = SamplingSpec {
        temperature: Some(0.0),
        frequency_penalty: Some(0.6),
        ..Default::default()
    };
    let mut s = Sampler::new(params(spec), &[], 0);
    let logits = [2.0, 1.0];
    assert_eq!(s.sample(&logits).0, 0); // 2.0
    assert_eq!(s.sample(&logits).0, 0); // 1.4 > 1.0
    assert_eq!(s.sample(&logits).0, 1); // 0.8 < 1.0
}

#[test]
fn logprobs_are_normalised_and_sorted() {
    let spec = SamplingSpec {
        temperature: Some(0.0),
        logprobs: Some(3),
        ..Default::default()
    };
    let mut s = Sampler::new(params(spec), &[], 0);
    let logits = [0.5, 2.0, -1.0, 1.0];
    let (t, lp) = s.sample(&logits);
    let lp = lp.unwrap();
    assert_eq!(t, 1);
    assert_eq!(lp.token_id, 1);
    let ids: Vec<u32> = lp.top.iter().map(|x| x.0).collect();
    assert_eq!(ids, vec![1, 3, 0]);
    let total: f32 = logits.iter().map(|&l| (l - 2.0 + lp.logprob).exp()).sum();
    assert!((total - 1.0).abs() < 1e-5, "probabilities sum to {total}");
}
