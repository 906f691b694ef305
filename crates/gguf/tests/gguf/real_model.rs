//! The default model, SmolLM2-135M-Instruct Q4_1: structure, hyperparameters, and dequantized values equal to
//! gguf-py's (`tests/fixtures/smollm2_q4_1.json`, made by `make_quant_fixtures.py`). The model must be present:
//! `cleave model pull` fetches it (CI does so before the tests); `CLEAVE_TEST_GGUF` points elsewhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cleave_gguf::{GgmlType, GgufFile};
use serde_json::Value as Json;

fn model_path() -> PathBuf {
    if let Some(path) = std::env::var_os("CLEAVE_TEST_GGUF") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is not set");
    PathBuf::from(home).join(".cache/cleave/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn open_model() -> GgufFile {
    let path = model_path();
    assert!(
        path.exists(),
        "{} is missing: run `cleave model pull` first (or set CLEAVE_TEST_GGUF to a copy of \
         SmolLM2-135M-Instruct.Q4_1.gguf)",
        path.display()
    );
    GgufFile::open(&path).unwrap()
}

#[test]
fn structure_and_hyperparameters() {
    let file = open_model();
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(file.version(), 3);
    assert_eq!(file.tensors().len(), 272);
    let mut by_type = BTreeMap::new();
    for info in file.tensors() {
        *by_type.entry(info.ty.name()).or_insert(0) += 1;
    }
    assert_eq!(by_type, BTreeMap::from([("F32", 61), ("Q4_1", 210), ("Q8_0", 1)]));

    assert_eq!(file.get_u64("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_u64("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.get_u64("llama.feed_forward_length").unwrap(), 1536);
    assert_eq!(file.get_u64("llama.attention.head_count").unwrap(), 9);
    assert_eq!(file.get_u64("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(file.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(file.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    assert_eq!(file.get_str_array("tokenizer.ggml.tokens").unwrap().len(), 49152);
    assert_eq!(file.get_str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(file.get_u64("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(file.get_u64("tokenizer.ggml.eos_token_id").unwrap(), 2);

    let embed = file.tensor("token_embd.weight").unwrap();
    assert_eq!((embed.ty, embed.shape()), (GgmlType::Q8_0, vec![49152, 576]));
    assert!(file.tensor("output.weight").is_none());
    let n_params: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
    assert_eq!(n_params / 100_000, 1345, "{n_params} parameters");
}

#[test]
fn values_match_gguf_py() {
    let file = open_model();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smollm2_q4_1.json");
    let fixture: Json = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let tensors = fixture["tensors"].as_array().unwrap();
    assert!(tensors.len() >= 4);
    for expected in tensors {
        let name = expected["name"].as_str().unwrap();
        let info = file.tensor(name).unwrap();
        assert_eq!(info.ty.name(), expected["type"].as_str().unwrap(), "{name}");
        let shape: Vec<usize> = expected["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(info.shape(), shape, "{name}");
        let values = file.tensor_f32(name).unwrap();
        let cols = *shape.last().unwrap();
        for sample in expected["samples"].as_array().unwrap() {
            let (row, col) = (
                sample["row"].as_u64().unwrap() as usize,
                sample["col"].as_u64().unwrap() as usize,
            );
            let want = sample["bits"].as_u64().unwrap() as u32;
            let got = values[row * cols + col];
            assert_eq!(
                got.to_bits(),
                want,
                "{name}[{row}, {col}] = {got}, gguf-py gives {}",
                f32::from_bits(want)
            );
        }
        // Whole-tensor sums catch errors the samples miss; summation order differs from numpy's, hence the margin.
        let sum: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let sum_abs: f64 = values.iter().map(|&v| f64::from(v).abs()).sum();
        let (want_sum, want_abs) = (expected["sum"].as_f64().unwrap(), expected["sum_abs"].as_f64().unwrap());
        assert!(
            (sum - want_sum).abs() <= 1e-9 * want_abs,
            "{name}: sum {sum}, gguf-py {want_sum}"
        );
        assert!(
            (sum_abs - want_abs).abs() <= 1e-9 * want_abs,
            "{name}: sum |x| {sum_abs}, gguf-py {want_abs}"
        );
    }
}

#[test]
fn every_tensor_dequantizes_quickly() {
    let file = open_model();
    let mut elapsed = Duration::ZERO;
    let mut total = 0usize;
    for info in file.tensors() {
        let start = Instant::now();
        let values = file.tensor_f32(&info.name).unwrap();
        elapsed += start.elapsed();
        assert!(values.iter().all(|v| v.is_finite()), "{}", info.name);
        total += values.len();
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "dequantized {} tensors ({total} values) in {elapsed:?} with {threads} threads",
        file.tensors().len()
    );
}
