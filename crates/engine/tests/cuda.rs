//! The CUDA backend against the CPU backend, on the same inputs. Every test skips (passing, with a message) on a
//! machine without a CUDA driver, as in CI; `scripts/gpu-check` runs them on a GPU machine.
//!
//! Kernels get fresh random inputs and outputs poisoned with NaN first, so an element a kernel forgets to write
//! fails the comparison. Tolerances are those of bf16 storage (8 bits of mantissa): relative 2⁻⁷ on activations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use cleave_engine::backend::{Backend, CpuBackend};
use cleave_engine::cpu::attention::{AttnChunk, AttnDims as CpuDims, paged_attention};
use cleave_engine::cpu::ops::{apply_rope, rms_norm, rope_tables, silu_mul};
use cleave_engine::cuda::{CudaBackend, CudaOptions, cuda_available};
use cleave_engine::kv::{KvCache, KvShape};
use cleave_engine::{Engine, EngineConfig, ModelFiles, SeqChunk, load_model};
use cleave_kernels::{AttnDims, AttnMeta, DecodeSplit, Kernels, prefill_tile_rows};
use cudarc::driver::CudaContext;
use half::bf16;
use rand::{Rng, SeedableRng};

fn skip() -> bool {
    if !cuda_available() {
        eprintln!("skipped: no CUDA driver or device on this machine");
        return true;
    }
    false
}

/// The engine's test fixtures, from the crate directory or (on a GPU machine running a carried binary) from the
/// repository root.
fn fixture(rel: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join(rel);
    if here.exists() {
        here
    } else {
        PathBuf::from("crates/engine/tests").join(rel)
    }
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Rounds through bf16, as the device stores it.
fn bf(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0.0f32, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(g.is_finite(), "{what}[{i}] = {g} (unwritten or overflowed)");
        let err = (g - w).abs() / (abs + rel * w.abs());
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let (err, i) = worst;
    assert!(
        err <= 1.0,
        "{what}[{i}]: got {} want {} (error {err:.2} × tolerance)",
        got[i],
        want[i]
    );
}

fn device() -> (Arc<CudaContext>, Arc<cudarc::driver::CudaStream>, Kernels) {
    let ctx = CudaContext::new(0).unwrap();
    let stream = ctx.default_stream();
    let kernels = Kernels::load(&ctx, None).unwrap();
    (ctx, stream, kernels)
}

#[test]
fn rms_norm_and_swiglu_match_the_cpu() {
    if skip() {
        return;
    }
    let (_ctx, stream, k) = device();
    // A small model's rows, and rows longer than one register span of the kernel (4096) with a ragged end.
    for (rows, dim) in [(7, 576), (3, 8200)] {
        let x = random(rows * dim, 1, 3.0);
        let w = random(dim, 2, 1.0);
        let mut want = vec![0.0; rows * dim];
        rms_norm(&x, &w, 1e-5, &mut want);
        let xd = stream.clone_htod(&x).unwrap();
        let wd = stream.clone_htod(&w).unwrap();
        let mut out = stream.clone_htod(&vec![bf16::NAN; rows * dim]).unwrap();
        k.rms_norm(&stream, &xd, None, &wd, &mut out, rows, dim, 1e-5).unwrap();
        let got: Vec<f32> = stream.clone_dtoh(&out).unwrap().iter().map(|v| v.to_f32()).collect();
        assert_close(&format!("rms_norm (dim {dim})"), &got, &want, 1.0 / 128.0, 1e-3);
    }

    let (rows, inter) = (7, 1536);
    let gu = bf(&random(rows * 2 * inter, 3, 4.0));
    let mut want = vec![0.0; rows * inter];
    silu_mul(&gu, inter, &mut want);
    let gud = stream
        .clone_htod(&gu.iter().map(|&v| bf16::from_f32(v)).collect::<Vec<_>>())
        .unwrap();
    let mut out = stream.clone_htod(&vec![bf16::NAN; rows * inter]).unwrap();
    k.silu_mul(&stream, &gud, &mut out, rows, inter).unwrap();
    let got: Vec<f32> = stream.clone_dtoh(&out).unwrap().iter().map(|v| v.to_f32()).collect();
    assert_close("silu_mul", &got, &want, 1.0 / 128.0, 1e-3);
}

#[test]
fn rope_cache_write_and_paged_attention_match_the_cpu() {
    if skip() {
        return;
    }
    // (cached tokens, new tokens) per sequence: a prefill chunk after a cached prefix and one decode token, at
    // Llama-like heads (64-dim: the tensor-core kernel) and the tiny fixture's (16-dim, 4-token blocks: the CUDA-core
    // tiled kernel).
    check_attention(8, 2, 64, 16, &[(5, 37), (20, 1)]);
    check_attention(4, 2, 16, 4, &[(5, 37), (20, 1)]);
    // 128-dim heads with four query heads per KV head (Llama-3.1-8B's ratio): a 200-token chunk after 150 cached
    // tokens (tiles that straddle key tiles), a decode row, a fresh 70-token prompt (a 6-row last tile), and a chunk
    // after a prefix of exactly one tile.
    check_attention(8, 2, 128, 16, &[(150, 200), (20, 1), (0, 70), (64, 64)]);
    check_attention(6, 3, 64, 8, &[(0, 130), (33, 9)]);
    // Decode rows with long contexts next to a short chunk: few rows, so their keys split over several blocks.
    check_attention(8, 2, 128, 16, &[(1000, 1), (700, 1), (40, 1), (300, 20)]);
    check_attention(4, 1, 64, 16, &[(1500, 1), (9, 1), (0, 16)]);
    // A decode batch wide enough to fill the GPU: each block serves every query head of a KV head (and the longest
    // contexts still split).
    let batch: Vec<(usize, usize)> = (0..48).map(|i| (20 + 37 * i, 1)).collect();
    check_attention(8, 2, 128, 16, &batch);
    check_attention(16, 2, 64, 16, &batch);
}

fn check_attention(nh: usize, nkv: usize, hd: usize, bs: usize, chunks: &[(usize, usize)]) {
    use rand::seq::SliceRandom;
    let (_ctx, stream, k) = device();
    // Each sequence's blocks, scattered over the pool.
    let counts: Vec<usize> = chunks.iter().map(|&(start, len)| (start + len).div_ceil(bs)).collect();
    let n_blocks = counts.iter().sum::<usize>() + 3;
    let mut order: Vec<u32> = (0..n_blocks as u32).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(11));
    let mut tables: Vec<Vec<u32>> = Vec::new();
    let mut used = 0;
    for &n in &counts {
        tables.push(order[used..used + n].to_vec());
        used += n;
    }
    let width = (nh + 2 * nkv) * hd;
    // Every position of each sequence gets keys/values, so write the cached prefix too: run the whole history.
    let mut pos = Vec::new();
    let mut seq_of = Vec::new();
    for (s, &(start, len)) in chunks.iter().enumerate() {
        for p in 0..start + len {
            pos.push(p);
            seq_of.push(s);
        }
    }
    let t = pos.len();
    let qkv = random(t * width, 7, 2.0);
    let inv_freq: Vec<f32> = (0..hd / 2)
        .map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / hd as f32))
        .collect();

    // CPU: rope, write every token's k/v (rounded to bf16 like the device), attention for the chunks' rows only.
    let (mut q, mut kk) = (Vec::new(), Vec::new());
    let mut v = Vec::new();
    for row in qkv.chunks_exact(width) {
        q.extend_from_slice(&row[..nh * hd]);
        kk.extend_from_slice(&row[nh * hd..(nh + nkv) * hd]);
        v.extend_from_slice(&row[(nh + nkv) * hd..]);
    }
    let (cos, sin) = rope_tables(&pos, &inv_freq);
    apply_rope(&mut q, nh, hd, &cos, &sin);
    apply_rope(&mut kk, nkv, hd, &cos, &sin);
    let (kk, v) = (bf(&kk), bf(&v));
    let mut cache = KvCache::new(KvShape {
        n_layers: 1,
        n_blocks,
        block_size: bs,
        n_kv_heads: nkv,
        head_dim: hd,
    });
    for (r, (&p, &s)) in pos.iter().zip(&seq_of).enumerate() {
        let block = tables[s][p / bs];
        cache.write(
            0,
            block,
            p % bs,
            &kk[r * nkv * hd..(r + 1) * nkv * hd],
            &v[r * nkv * hd..(r + 1) * nkv * hd],
        );
    }
    let mut attn_chunks = Vec::new();
    let mut row = 0;
    for (s, &(start, len)) in chunks.iter().enumerate() {
        attn_chunks.push(AttnChunk {
            row: row + start,
            len,
            start_pos: start,
            blocks: &tables[s],
        });
        row += start + len;
    }
    let mut want = vec![0.0; t * nh * hd];
    let dims = CpuDims {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
    };
    paged_attention(&q, &attn_chunks, &cache, 0, dims, &mut want);

    // GPU: the same rows through rope_write_kv and paged_attention.
    let flat: Vec<i32> = tables.iter().flatten().map(|&b| b as i32).collect();
    let offs: Vec<i32> = tables
        .iter()
        .scan(0i32, |at, t| {
            let here = *at;
            *at += t.len() as i32;
            Some(here)
        })
        .collect();
    let slots: Vec<i32> = pos
        .iter()
        .zip(&seq_of)
        .map(|(&p, &s)| (tables[s][p / bs] as usize * bs + p % bs) as i32)
        .collect();
    let table_off: Vec<i32> = seq_of.iter().map(|&s| offs[s]).collect();
    let pos_i: Vec<i32> = pos.iter().map(|&p| p as i32).collect();
    let (pos_d, slots_d, tables_d, off_d) = (
        stream.clone_htod(&pos_i).unwrap(),
        stream.clone_htod(&slots).unwrap(),
        stream.clone_htod(&flat).unwrap(),
        stream.clone_htod(&table_off).unwrap(),
    );
    // Tiled mode: chunks of 8 rows or more in tiles of the kernel's height, shorter ones (decodes) a row per block.
    let tile_rows = prefill_tile_rows(hd);
    let (mut tiles, mut singles) = (Vec::new(), Vec::new());
    for (s, c) in attn_chunks.iter().enumerate() {
        if c.len >= 8 {
            for first in (0..c.len).step_by(tile_rows) {
                let rows = tile_rows.min(c.len - first);
                tiles.extend([
                    (c.row + first) as i32,
                    rows as i32,
                    offs[s],
                    (c.start_pos + first) as i32,
                ]);
            }
        } else {
            singles.extend((c.row..c.row + c.len).map(|r| r as i32));
        }
    }
    let (n_tiles, n_singles) = (tiles.len() / 4, singles.len());
    let (tiles_d, singles_d) = (stream.clone_htod(&tiles).unwrap(), stream.clone_htod(&singles).unwrap());
    let meta = AttnMeta {
        pos: &pos_d,
        slots: &slots_d,
        block_tables: &tables_d,
        table_off: &off_d,
        n_tokens: t,
        tiles: &tiles_d,
        n_tiles: 0,
        single_rows: &singles_d,
        n_single_rows: 0,
    };
    let gdims = AttnDims {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: hd,
        block_size: bs,
    };
    let qkv_d = stream.clone_htod(&qkv).unwrap();
    let inv_d = stream.clone_htod(&inv_freq).unwrap();
    let mut q_d = stream.clone_htod(&vec![f32::NAN; t * nh * hd]).unwrap();
    let cache_len = n_blocks * nkv * bs * hd;
    let mut k_cache = stream.clone_htod(&vec![bf16::NAN; cache_len]).unwrap();
    let mut v_cache = stream.clone_htod(&vec![bf16::NAN; cache_len]).unwrap();
    k.rope_write_kv(
        &stream,
        &qkv_d,
        None,
        &meta,
        &inv_d,
        &mut q_d,
        &mut k_cache,
        &mut v_cache,
        gdims,
    )
    .unwrap();
    let got_q = stream.clone_dtoh(&q_d).unwrap();
    assert_close("rope q", &got_q, &q, 1e-5, 1e-5);
    let tiled = AttnMeta {
        n_tiles,
        n_single_rows: n_singles,
        ..meta
    };
    // The tensor-core kernel (64- and 128-dim heads) splits q into bf16 high and low parts (two MMAs, f32
    // accumulation), so its scores carry ~2⁻¹⁶ relative error; its softmax weights stay bf16 (2⁻⁹ relative, inside
    // the relative bound). It meets the same bound as the CUDA-core kernels, which keep q and p in f32.
    // Split decode attention's scratch; the second tiled run checks that the first left the counters at zero.
    let (partial_len, counters_len) = k.decode_split_lens(hd);
    let mut partial = stream.clone_htod(&vec![f32::NAN; partial_len]).unwrap();
    let mut counters = stream.alloc_zeros::<u32>(counters_len).unwrap();
    let modes = [("row per block", &meta), ("tiled", &tiled), ("tiled, again", &tiled)];
    for (mode, meta) in modes {
        let abs = 2e-3;
        let mut out = stream.clone_htod(&vec![bf16::NAN; t * nh * hd]).unwrap();
        let split = (mode != "row per block").then_some(DecodeSplit {
            partial: &mut partial,
            counters: &mut counters,
        });
        k.attention(&stream, &q_d, &k_cache, &v_cache, meta, &mut out, gdims, split)
            .unwrap();
        let got: Vec<f32> = stream.clone_dtoh(&out).unwrap().iter().map(|v| v.to_f32()).collect();
        // Compare the chunks' rows (the CPU computed only those).
        for c in &attn_chunks {
            let rows = c.row * nh * hd..(c.row + c.len) * nh * hd;
            assert_close(
                &format!("attention ({mode}, head_dim {hd}, chunk at row {})", c.row),
                &got[rows.clone()],
                &want[rows],
                1.0 / 64.0,
                abs,
            );
        }
    }
}

/// The model with every matrix rounded to bf16, as the GPU holds it: what is left between the backends is the
/// kernels' own error (bf16 activations into GEMMs and the KV cache), not the weights'.
fn rounded_to_bf16(model: cleave_engine::LlamaModel) -> cleave_engine::LlamaModel {
    use cleave_engine::weights::Matrix;
    let round = |m: &Matrix| {
        let mut v = vec![0.0; m.rows * m.cols];
        m.dequantize_rows(0, &mut v);
        Matrix::f32(m.rows, m.cols, bf(&v))
    };
    let (config, mut w) = model.into_parts();
    w.embed = round(&w.embed);
    w.lm_head = w.lm_head.as_ref().map(round);
    for l in &mut w.layers {
        l.qkv = round(&l.qkv);
        l.o = round(&l.o);
        match &mut l.mlp {
            cleave_engine::weights::Mlp::Dense(ff) => {
                ff.gate_up = round(&ff.gate_up);
                ff.down = round(&ff.down);
            }
            cleave_engine::weights::Mlp::Experts(e) => {
                e.router = round(&e.router);
                for ff in &mut e.local {
                    ff.gate_up = round(&ff.gate_up);
                    ff.down = round(&ff.down);
                }
            }
        }
    }
    cleave_engine::LlamaModel::new(config, w)
}

fn tiny_backends() -> (CpuBackend, CudaBackend) {
    let dir = fixture("fixtures/tiny-llama");
    let (cpu_model, _) = load_model(ModelFiles::HfDir(&dir)).unwrap();
    let cpu_model = rounded_to_bf16(cpu_model);
    let (gpu_model, _) = load_model(ModelFiles::HfDir(&dir)).unwrap();
    let options = CudaOptions {
        ordinal: 0,
        kv_cache_bytes: 16 << 20,
        block_size: 4,
        kernel_cache: None,
    };
    (
        CpuBackend::new(cpu_model, 64, 4),
        CudaBackend::from_model(gpu_model, &options).unwrap(),
    )
}

#[test]
fn tiny_llama_logits_match_the_cpu_backend_through_prefill_and_decode() {
    if skip() {
        return;
    }
    let (mut cpu, mut gpu) = tiny_backends();
    let a: Vec<u32> = (0..23).map(|i| 3 + (i * 11) % 250).collect();
    let b: Vec<u32> = (0..9).map(|i| 7 + (i * 5) % 250).collect();
    let (ta, tb): (Vec<u32>, Vec<u32>) = ((0..8).collect(), (20..24).collect());
    let chunks = [
        SeqChunk {
            tokens: &a,
            start_pos: 0,
            blocks: &ta,
            want_logits: true,
        },
        SeqChunk {
            tokens: &b,
            start_pos: 0,
            blocks: &tb,
            want_logits: true,
        },
    ];
    let want = cpu.forward(&chunks, &mut |_, _| {}).unwrap();
    let got = gpu.forward(&chunks, &mut |_, _| {}).unwrap();
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert_close("prefill logits", &got, &want, 0.0, 0.05 * scale.max(1.0));
    // Decode steps on both sequences, then compare again.
    for step in 0..4u32 {
        let (na, nb) = ([10 + step], [20 + step]);
        let chunks = [
            SeqChunk {
                tokens: &na,
                start_pos: 23 + step as usize,
                blocks: &ta,
                want_logits: true,
            },
            SeqChunk {
                tokens: &nb,
                start_pos: 9 + step as usize,
                blocks: &tb,
                want_logits: true,
            },
        ];
        let want = cpu.forward(&chunks, &mut |_, _| {}).unwrap();
        // Single-token chunks that want logits: the CUDA graph path (a bucket of 2 rows).
        let got = gpu.forward_plain(&chunks).unwrap();
        assert_close("decode logits (graph)", &got, &want, 0.0, 0.05 * scale.max(1.0));
    }
    // KV blocks read back through the transfer interface agree with the CPU pool.
    let (mut gk, mut gv) = (Vec::new(), Vec::new());
    let mut reader_checked = false;
    gpu.forward(
        &[SeqChunk {
            tokens: &[5],
            start_pos: 27,
            blocks: &ta,
            want_logits: false,
        }],
        &mut |layer, reader| {
            // Layer 0's keys depend only on the (equal) weights and the tokens, so they agree to bf16 rounding.
            if layer == 0 {
                reader.read_block_layer(0, 2, &mut gk, &mut gv);
                reader_checked = true;
            }
        },
    )
    .unwrap();
    assert!(reader_checked);
    let (ck, cv) = cpu.kv().block_layer(0, 2);
    // bf16 inputs to the qkv GEMM: errors scale with the row's magnitude, not each element's.
    let magnitude = |v: &[f32]| v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    assert_close("kv keys", &gk, ck, 1.0 / 64.0, magnitude(ck) / 64.0);
    assert_close("kv values", &gv, cv, 1.0 / 64.0, magnitude(cv) / 64.0);
}

#[test]
fn the_engine_serves_requests_on_cuda() {
    if skip() {
        return;
    }
    let dir = fixture("fixtures/tiny-llama");
    let (model, tokenizer) = load_model(ModelFiles::HfDir(&dir)).unwrap();
    let options = CudaOptions {
        ordinal: 0,
        kv_cache_bytes: 16 << 20,
        block_size: 16,
        kernel_cache: None,
    };
    let backend = CudaBackend::from_model(model, &options).unwrap();
    let engine = Engine::start_backend(
        Box::new(backend),
        Arc::new(tokenizer),
        EngineConfig::default().scheduler,
    )
    .unwrap();
    let spec = cleave_engine::sampling::SamplingSpec {
        max_tokens: Some(12),
        temperature: Some(0.0),
        ignore_eos: true,
        n: Some(2),
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..4)
        .map(|s| (0..30 + s * 7).map(|i| 3 + (i * 13 + s) as u32 % 250).collect())
        .collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(p.clone(), &spec, 0).unwrap())
        .collect();
    for mut stream in streams {
        let mut per_choice = [0usize; 2];
        while let Some(out) = stream.blocking_next() {
            let out = out.unwrap();
            per_choice[out.index as usize] += out.token_ids.len();
        }
        assert_eq!(per_choice, [12, 12]);
    }
    let stats = engine.blocking_stats().unwrap();
    assert_eq!(stats.free_blocks, stats.total_blocks, "every block is back");
}

/// The default model (SmolLM2-135M), when its file is present (`CLEAVE_MODEL_PATH` or the model cache): greedy
/// tokens on the GPU equal transformers' golden tokens, as on the CPU.
#[test]
fn default_model_greedy_tokens_match_the_golden_data() {
    if skip() {
        return;
    }
    let path = std::env::var_os("CLEAVE_MODEL_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            home.join(".cache/cleave/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if !path.exists() {
        eprintln!("skipped: the default model is not at {}", path.display());
        return;
    }
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("golden/golden.json")).unwrap()).unwrap();
    let (model, tokenizer) = load_model(ModelFiles::Gguf(&path)).unwrap();
    let options = CudaOptions {
        ordinal: 0,
        kv_cache_bytes: 256 << 20,
        block_size: 16,
        kernel_cache: None,
    };
    let backend = CudaBackend::from_model(model, &options).unwrap();
    let engine = Engine::start_backend(
        Box::new(backend),
        Arc::new(tokenizer),
        EngineConfig::default().scheduler,
    )
    .unwrap();
    let (mut report, mut diverged) = (Vec::new(), Vec::new());
    for p in golden["prompts"].as_array().unwrap() {
        let ids = |k: &str| -> Vec<u32> {
            p[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, want) = (ids("prompt_ids"), ids("output_ids"));
        let spec = cleave_engine::sampling::SamplingSpec {
            max_tokens: Some(want.len() as u32),
            temperature: Some(0.0),
            ignore_eos: true,
            ..Default::default()
        };
        let mut stream = engine.submit(prompt, &spec, 0).unwrap();
        let mut got = Vec::new();
        while let Some(out) = stream.blocking_next() {
            got.extend(out.unwrap().token_ids);
        }
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        let name = p["name"].as_str().unwrap_or_default();
        if same == want.len() && got.len() == want.len() {
            report.push(format!("{name}: {same}/{} tokens equal", want.len()));
        } else {
            // transformers' f32 gap between its top two logits at the first differing step: a small one means the
            // tie is close enough that rounding differences can flip it.
            let margin = p["margins"].get(same).and_then(|m| m.as_f64());
            let margin = margin.map_or("unknown".to_owned(), |m| format!("{m:.4}"));
            let line = format!(
                "{name}: {same}/{} tokens equal; diverges at output step {same} (got {:?}, want {:?}), \
                 golden top-2 logit margin there {margin}",
                want.len(),
                got.get(same),
                want.get(same),
            );
            report.push(line.clone());
            diverged.push(line);
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(
        diverged.is_empty(),
        "greedy tokens differ from the golden data:\n{}",
        diverged.join("\n")
    );
}

/// `cleave bench --device cuda` without the CLI: with `CLEAVE_CUDA_BENCH=llama-3.1-8b,llama-3.2-1b` (synthetic
/// shapes) it prints the benchmark report of each (by default prefill of 2,048 tokens, decode at batch 1 and 32 with
/// 128 tokens of context; `CLEAVE_CUDA_BENCH_PROMPT`, `_BATCHES` (comma list), `_CONTEXT`, `_STEPS` change them);
/// otherwise it does nothing. For measuring kernel changes on a GPU machine from the test binary alone.
#[test]
fn synthetic_bench_when_asked() {
    let Ok(shapes) = std::env::var("CLEAVE_CUDA_BENCH") else {
        return;
    };
    if skip() {
        return;
    }
    use cleave_engine::cuda::bench::{CudaBenchConfig, run_cuda_bench};
    let options = CudaOptions {
        ordinal: 0,
        kv_cache_bytes: 8 << 30,
        block_size: 16,
        kernel_cache: None,
    };
    for shape in shapes.split(',') {
        let config = cleave_engine::cuda::synthetic_config(shape).unwrap();
        let knob = |name: &str| std::env::var(format!("CLEAVE_CUDA_BENCH_{name}")).ok();
        let mut bench = CudaBenchConfig::default();
        if let Some(v) = knob("PROMPT") {
            bench.prompt_tokens = v.parse().unwrap();
        }
        if let Some(v) = knob("BATCHES") {
            bench.batches = v.split(',').map(|b| b.parse().unwrap()).collect();
        }
        if let Some(v) = knob("CONTEXT") {
            bench.decode_context = v.parse().unwrap();
        }
        if let Some(v) = knob("STEPS") {
            bench.decode_steps = v.parse().unwrap();
        }
        let report = run_cuda_bench(shape, config, &options, &bench).unwrap();
        eprintln!("== synthetic:{shape}\n{report}");
    }
}

#[path = "cuda/ipc.rs"]
mod ipc;

#[path = "cuda/nccl_link.rs"]
mod nccl_link;

#[path = "cuda/moe.rs"]
mod moe;
