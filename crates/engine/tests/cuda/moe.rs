//! Mixture-of-experts models on the GPU: the expert row kernels against the CPU, and the tiny Mixtral (transformers'
//! random weights, 8 experts, top-2) against the logits and greedy tokens transformers computed for it.

use super::*;

/// An expert's rows gathered by index (bf16, exact) and its weighted outputs added back into their rows of an f32
/// stream, against the same on the host; rows the routing does not name stay untouched.
#[test]
fn expert_rows_gather_and_scatter_add_match_the_cpu() {
    if skip() {
        return;
    }
    let (_ctx, stream, k) = device();
    let (rows, cols) = (9, 200);
    let src: Vec<bf16> = random(rows * cols, 11, 2.0)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let idx: Vec<i32> = vec![7, 0, 4, 8];
    let weight: Vec<f32> = vec![0.25, 1.5, -0.5, 0.75];
    let d_src = stream.clone_htod(&src).unwrap();
    let d_idx = stream.clone_htod(&[99, 7, 0, 4, 8]).unwrap();
    let d_weight = stream.clone_htod(&[9.0, 0.25, 1.5, -0.5, 0.75]).unwrap();
    let mut gathered = stream.clone_htod(&vec![bf16::NAN; idx.len() * cols]).unwrap();
    // Offset views, as the forward pass slices one expert's span out of a layer's lists.
    k.gather_rows(&stream, &d_src, rows, &d_idx.slice(1..), &mut gathered, cols)
        .unwrap();
    let got = stream.clone_dtoh(&gathered).unwrap();
    for (i, &r) in idx.iter().enumerate() {
        assert_eq!(
            got[i * cols..(i + 1) * cols],
            src[r as usize * cols..(r as usize + 1) * cols],
            "row {i}"
        );
    }

    let out = random(idx.len() * cols, 12, 3.0);
    let x0 = random(rows * cols, 13, 1.0);
    let mut want = x0.clone();
    for (i, (&r, &w)) in idx.iter().zip(&weight).enumerate() {
        for c in 0..cols {
            want[r as usize * cols + c] += w * out[i * cols + c];
        }
    }
    let d_out = stream.clone_htod(&out).unwrap();
    let mut x = stream.clone_htod(&x0).unwrap();
    k.scatter_add_rows(
        &stream,
        &d_out,
        &d_idx.slice(1..),
        &d_weight.slice(1..),
        &mut x,
        rows,
        cols,
    )
    .unwrap();
    let got = stream.clone_dtoh(&x).unwrap();
    assert_close("scatter_add_rows", &got, &want, 1e-6, 1e-6);
    assert!(
        k.gather_rows(&stream, &d_src, rows, &d_idx.slice(1..), &mut gathered, cols + 1)
            .is_err()
    );
}

/// The tiny Mixtral on one GPU (bf16 weights) against the CPU backend on the same weights rounded to bf16 (so what
/// differs is the GPU's bf16 activations, not the weights' rounding; both distances are printed), within 5% of the
/// largest logit as for the dense tiny Llama: every prompt position's logits fed one token at a time, and the
/// whole prompt in one prefill pass (each expert over several rows); then the greedy continuation through an
/// engine, each token the CPU's argmax on the same prefix but for rare bf16 near-tie flips (this random model's
/// logits and router scores crowd together; on the H200: 2 of 16 steps, margins 0.13 and 0.93, the text leaving
/// transformers' at the fourth token) — from the safetensors directory and from the GGUF with stacked experts.
#[test]
fn tiny_mixtral_matches_transformers_on_the_gpu() {
    if skip() {
        return;
    }
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("fixtures/tiny-mixtral-reference.json")).unwrap())
            .unwrap();
    let ids = |key: &str| -> Vec<u32> {
        reference[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    };
    let (input, greedy) = (ids("input_ids"), ids("greedy_ids"));
    let logits: Vec<f32> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let vocab = logits.len() / input.len();
    let scale = logits.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
    let options = CudaOptions {
        ordinal: 0,
        kv_cache_bytes: 8 << 20,
        block_size: 4,
        kernel_cache: None,
    };
    let safetensors = || {
        load_model(ModelFiles::HfDir(&fixture("fixtures/tiny-mixtral")))
            .unwrap()
            .0
    };
    let gguf = || {
        cleave_engine::LlamaModel::load_gguf(&fixture("fixtures/tiny-mixtral.gguf"))
            .unwrap()
            .1
    };
    let sources: [(&str, &dyn Fn() -> cleave_engine::LlamaModel); 2] = [("safetensors", &safetensors), ("GGUF", &gguf)];
    for (source, load) in sources {
        let mut cpu = CpuBackend::new(rounded_to_bf16(load()), 200, 4);
        let mut gpu = CudaBackend::from_model(load(), &options).unwrap();
        let blocks: Vec<u32> = (0..(input.len() + greedy.len()).div_ceil(4) as u32).collect();
        let (mut from_cpu, mut from_transformers) = (0.0f32, 0.0f32);
        for (pos, reference) in logits.chunks_exact(vocab).enumerate() {
            let step = [SeqChunk {
                tokens: &input[pos..=pos],
                start_pos: pos,
                blocks: &blocks,
                want_logits: true,
            }];
            let want = cpu.forward_plain(&step).unwrap();
            let got = gpu.forward_plain(&step).unwrap();
            assert_close(&format!("{source}: position {pos}"), &got, &want, 0.0, 0.05 * scale);
            from_cpu = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(from_cpu, f32::max);
            from_transformers = got
                .iter()
                .zip(reference)
                .map(|(a, b)| (a - b).abs())
                .fold(from_transformers, f32::max);
        }
        eprintln!(
            "{source}: prompt logits within {from_cpu:.3} of the CPU's (bf16 weights) and {from_transformers:.3} of \
             transformers' (f32 weights); largest logit {scale:.2}"
        );
        let other: Vec<u32> = (100..100 + blocks.len() as u32).collect();
        let whole = [SeqChunk {
            tokens: &input,
            start_pos: 0,
            blocks: &other,
            want_logits: true,
        }];
        let (want, got) = (cpu.forward_plain(&whole).unwrap(), gpu.forward_plain(&whole).unwrap());
        assert_close(&format!("{source}: one prefill pass"), &got, &want, 0.0, 0.05 * scale);
        let tokenizer = Arc::new(
            load_model(ModelFiles::HfDir(&fixture("fixtures/tiny-mixtral")))
                .unwrap()
                .1,
        );
        let scheduler = cleave_engine::scheduler::SchedulerConfig {
            block_size: 4,
            ..Default::default()
        };
        let engine = Engine::start_backend(Box::new(gpu), tokenizer, scheduler).unwrap();
        let spec = cleave_engine::sampling::SamplingSpec {
            max_tokens: Some(greedy.len() as u32),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        };
        let mut stream = engine.submit(input.clone(), &spec, 0).unwrap();
        let mut out = Vec::new();
        while let Some(step) = stream.blocking_next() {
            out.extend(step.unwrap().token_ids);
        }
        // Each generated token is the CPU's argmax on the GPU's own prefix but for one in eight at most: bf16
        // activations flip near-ties, of the logits or of a router's top-2 (one such flip moves a step's logits by
        // ~1 in this model); each is reported with its margin, and where the text leaves transformers'.
        let mut flips = 0;
        let mut at = cpu.forward_plain(&[SeqChunk {
            tokens: &input[input.len() - 1..],
            start_pos: input.len() - 1,
            blocks: &blocks,
            want_logits: true,
        }]);
        for (pos, (i, &token)) in (input.len()..).zip(out.iter().enumerate()) {
            let logits = at.unwrap();
            let best = logits.iter().copied().fold(f32::MIN, f32::max);
            let margin = best - logits[token as usize];
            if margin > 0.0 {
                eprintln!("{source}: generated token {i} (position {pos}) is {margin:.3} below the CPU's best logit");
                flips += 1;
            }
            if out[..=i] != greedy[..=i] && out[..i] == greedy[..i] {
                eprintln!(
                    "{source}: generated token {i} leaves transformers' text ({token} for {}): {margin:.3} below \
                     the CPU's best logit",
                    greedy[i]
                );
            }
            at = cpu.forward_plain(&[SeqChunk {
                tokens: &out[i..=i],
                start_pos: pos,
                blocks: &blocks,
                want_logits: true,
            }]);
        }
        assert!(
            8 * flips <= out.len(),
            "{source}: {flips} of {} tokens are not the CPU's argmax",
            out.len()
        );
        assert_eq!(out[..3], greedy[..3], "{source}: the first greedy tokens");
    }
}
