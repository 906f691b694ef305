//! The `cleave` binary end to end on the real default model: golden greedy output, chat prompts, error reporting
//! and exit codes, `model list`, and a tiny `bench`.

// The helpers below run outside `#[test]` functions, where clippy.toml's test allowance does not reach; a failed
// `expect` there fails the test with its message, which is what a test helper should do.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The model cache the tests read: `$CLEAVE_HOME`, else `~/.cache/cleave`, which must hold the default model.
fn cleave_home() -> PathBuf {
    let home = std::env::var_os("CLEAVE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/cleave"));
    let model = home.join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.is_file(),
        "{} is missing: run `cleave model pull` first",
        model.display()
    );
    home
}

fn cleave(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cleave"))
        .args(args)
        .env("CLEAVE_HOME", cleave_home())
        .env_remove("RUST_LOG")
        .output()
        .expect("the cleave binary runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cleave` expecting success, and parses its stdout as one JSON value.
fn cleave_json(args: &[&str]) -> Value {
    let out = cleave(args);
    assert!(out.status.success(), "cleave {args:?} failed: {}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// Runs `cleave` expecting failure with `code`, and returns stderr.
fn cleave_fails(args: &[&str], code: i32) -> String {
    let out = cleave(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(code), "cleave {args:?}: stderr {err}");
    assert!(!err.contains("panicked"), "cleave {args:?} panicked: {err}");
    assert!(err.lines().any(|l| l.starts_with("error: ")), "cleave {args:?}: {err}");
    err
}

/// A prompt of the engine's golden data (made with transformers: crates/engine/tests/golden/).
fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/engine/tests/golden/golden.json");
    let text = std::fs::read_to_string(&path).expect("golden.json is readable");
    let golden: Value = serde_json::from_str(&text).expect("golden.json parses");
    golden["prompts"]
        .as_array()
        .expect("prompts")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no golden prompt {name}"))
        .clone()
}

fn ids(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id"))
        .collect()
}

#[test]
fn greedy_json_matches_transformers() {
    let golden = golden("short");
    let text = golden["text"].as_str().expect("text");
    let out = cleave_json(&[
        "generate",
        "--prompt",
        text,
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(ids(&out["prompt_ids"]), ids(&golden["prompt_ids"]));
    assert_eq!(ids(&out["output_ids"]), ids(&golden["output_ids"])[..8]);
    assert!(out["text"].as_str().expect("text").starts_with(" Paris."), "{out}");
    assert_eq!(out["finish_reason"], "length");
    assert_eq!(out["usage"]["prompt_tokens"], 5);
    assert_eq!(out["usage"]["completion_tokens"], 8);
    assert_eq!(out["usage"]["cached_tokens"], 0);
    for key in ["load_ms", "ttft_ms", "tokens_per_s", "total_ms"] {
        assert!(
            out["timings"][key].as_f64().is_some_and(|v| v > 0.0),
            "timings.{key}: {out}"
        );
    }
    assert!(out.get("logprobs").is_none(), "logprobs only when asked: {out}");
}

#[test]
fn text_streams_to_stdout() {
    let out = cleave(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--temperature",
        "0",
        "--max-tokens",
        "8",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), " Paris.\n\nThe answer is:\n");
}

#[test]
fn chat_renders_the_template_as_transformers() {
    let golden = golden("chat");
    let prompt = golden["messages"][0]["content"].as_str().expect("content");
    let out = cleave_json(&["generate", "--chat", "--prompt", prompt, "--temperature", "0", "--json"]);
    assert_eq!(ids(&out["prompt_ids"]), ids(&golden["prompt_ids"]));
    // The golden answer ends with <|im_end|> (id 2): generation stops there.
    let want = ids(&golden["output_ids"]);
    let end = want.iter().position(|&id| id == 2).expect("the golden answer ends") + 1;
    assert_eq!(ids(&out["output_ids"]), want[..end]);
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(out["text"], "The capital of France is Paris.");
}

#[test]
fn chat_with_a_system_message() {
    let golden = golden("chat_system");
    let (system, user) = (&golden["messages"][0]["content"], &golden["messages"][1]["content"]);
    let out = cleave_json(&[
        "generate",
        "--chat",
        "--system",
        system.as_str().expect("system"),
        "--prompt",
        user.as_str().expect("user"),
        "--temperature",
        "0",
        "--max-tokens",
        "8",
        "--json",
    ]);
    assert_eq!(ids(&out["prompt_ids"]), ids(&golden["prompt_ids"]));
    assert_eq!(ids(&out["output_ids"]), ids(&golden["output_ids"])[..8]);
}

#[test]
fn stop_strings_and_logprobs() {
    let out = cleave_json(&[
        "generate",
        "--prompt",
        "The capital of France is",
        "--temperature",
        "0",
        "--stop",
        "answer",
        "--logprobs",
        "2",
        "--json",
    ]);
    assert_eq!(out["text"], " Paris.\n\nThe ");
    assert_eq!(out["finish_reason"], "stop");
    let output_ids = ids(&out["output_ids"]);
    let logprobs = out["logprobs"].as_array().expect("logprobs");
    assert_eq!(logprobs.len(), output_ids.len());
    for (lp, &id) in logprobs.iter().zip(&output_ids) {
        assert_eq!(lp["token_id"], id);
        assert!(lp["logprob"].as_f64().is_some_and(|v| v <= 0.0), "{lp}");
        assert_eq!(lp["top"].as_array().expect("top").len(), 2, "{lp}");
    }
    // Greedy: the chosen token is the most likely one.
    assert_eq!(logprobs[0]["top"][0]["token_id"], output_ids[0]);
    assert_eq!(logprobs[0]["token"], " Paris");
}

#[test]
fn invalid_sampling_values_exit_2_naming_the_field() {
    let base = ["generate", "--prompt", "Hello"];
    for (flags, field) in [
        (
            ["--temperature", "-1"],
            "invalid argument 'temperature': must be in [0, 100], got -1",
        ),
        (["--top-p", "0"], "invalid argument 'top_p'"),
        (["--max-tokens", "0"], "invalid argument 'max_tokens'"),
        (["--min-p", "1.5"], "invalid argument 'min_p'"),
        (["--logprobs", "21"], "invalid argument 'logprobs'"),
    ] {
        let args: Vec<&str> = base.iter().chain(&flags).copied().collect();
        let err = cleave_fails(&args, 2);
        assert!(err.contains(field), "{flags:?}: {err}");
    }
}

#[test]
fn unusable_models_fail_naming_the_file() {
    let err = cleave_fails(&["generate", "--prompt", "Hi", "--model", "/nonexistent.gguf"], 2);
    assert!(
        err.contains("/nonexistent.gguf") && err.contains("no such file"),
        "{err}"
    );

    let err = cleave_fails(&["generate", "--prompt", "Hi", "--model", "no-such-model"], 2);
    assert!(
        err.contains("unknown model `no-such-model`") && err.contains("smollm2-135m"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("a temp dir");
    let not_gguf = dir.path().join("text.gguf");
    std::fs::write(&not_gguf, b"this is not a model").expect("write");
    let err = cleave_fails(&["generate", "--prompt", "Hi", "--model", path_str(&not_gguf)], 2);
    assert!(err.contains("not a GGUF file"), "{err}");

    // Right magic, garbage after it: caught by the GGUF reader, not by a panic.
    let corrupt = dir.path().join("corrupt.gguf");
    let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    std::fs::write(&corrupt, bytes).expect("write");
    let err = cleave_fails(&["generate", "--prompt", "Hi", "--model", path_str(&corrupt)], 1);
    assert!(err.contains(path_str(&corrupt)), "{err}");

    // A real model cut short: its tensor data runs past the end of the file.
    let real = cleave_home().join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    let truncated = dir.path().join("truncated.gguf");
    let head = std::fs::read(&real).expect("read the model");
    std::fs::write(&truncated, &head[..4 << 20]).expect("write");
    let err = cleave_fails(&["generate", "--prompt", "Hi", "--model", path_str(&truncated)], 1);
    assert!(
        err.contains(path_str(&truncated)) && err.contains("past end of file"),
        "{err}"
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

#[test]
fn flags_clap_rejects_exit_2() {
    let err = cleave_fails(&["generate", "--prompt", "Hi", "--device", "tpu"], 2);
    assert!(err.contains("expected cpu, cuda, cuda:N or auto"), "{err}");
    // Without a GPU, asking for one is a clear usage error, never a panic (with one, it simply runs).
    let out = cleave(&["generate", "--prompt", "Hi", "--max-tokens", "1", "--device", "cuda"]);
    if !out.status.success() {
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("no CUDA device"), "{err}");
    }
    cleave_fails(&["generate", "--prompt", "Hi", "--threads", "0"], 2);
    cleave_fails(&["generate", "--prompt", "Hi", "--system", "no --chat"], 2);
    cleave_fails(&["generate"], 2);
}

#[test]
fn device_and_threads_are_accepted() {
    let out = cleave_json(&[
        "generate",
        "--prompt",
        "Hi",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--max-tokens",
        "2",
        "--json",
    ]);
    assert_eq!(out["usage"]["completion_tokens"], 2);
}

#[test]
fn model_list_shows_the_default_model() {
    let out = cleave(&["model", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.starts_with("smollm2-135m"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("SmolLM2-135M-Instruct.Q4_1.gguf"), "{row}");
}

#[test]
fn tiny_bench_prints_a_json_report() {
    let report = cleave_json(&[
        "bench",
        "--prompt-tokens",
        "32",
        "--decode-tokens",
        "4",
        "--batches",
        "1,2",
        "--runs",
        "1",
        "--json",
    ]);
    assert!(report["load_ms"].as_f64().is_some_and(|v| v > 0.0), "{report}");
    assert_eq!(report["prefill"]["prompt_tokens"], 32);
    assert!(
        report["prefill"]["tokens_per_s"].as_f64().is_some_and(|v| v > 0.0),
        "{report}"
    );
    let decode = report["decode"].as_array().expect("decode");
    assert_eq!(decode.iter().map(|d| d["batch"].clone()).collect::<Vec<_>>(), [1, 2]);
    for d in decode {
        assert_eq!(d["counted_tokens"], d["batch"].as_u64().expect("batch") * 3, "{d}");
        assert!(d["tokens_per_s"].as_f64().is_some_and(|v| v > 0.0), "{d}");
    }
    let memory = &report["memory"];
    let weights = memory["weights_bytes"].as_u64().expect("weights_bytes");
    assert!(weights > 50 << 20, "{memory}");
    assert!(memory["kv_cache_bytes"].as_u64().is_some_and(|v| v > 0), "{memory}");
    assert!(
        memory["peak_rss_bytes"].as_u64().is_some_and(|v| v > weights),
        "{memory}"
    );
    for key in ["prefill", "decode", "memory"] {
        assert!(report["definitions"][key].is_string(), "definitions.{key}");
    }
}

#[test]
fn bad_bench_settings_exit_2() {
    let err = cleave_fails(&["bench", "--decode-tokens", "1"], 2);
    assert!(err.contains("decode_tokens"), "{err}");
    let err = cleave_fails(&["bench", "--batches", "1,0"], 2);
    assert!(err.contains("batches"), "{err}");
    let err = cleave_fails(&["bench", "--prompt-tokens", "9000", "--runs", "1"], 2);
    assert!(err.contains("prompt_tokens") && err.contains("context"), "{err}");
}

#[test]
fn bad_security_files_stop_the_router_and_worker_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.pem");
    let missing = missing.to_str().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    let empty_keys = dir.path().join("keys");
    std::fs::write(&empty_keys, "# no key here\n").unwrap();
    let empty_keys = empty_keys.to_str().unwrap();
    let port = format!("127.0.0.1:{}", cleave_testkit::free_port());
    let router = |extra: &[&str]| {
        let mut args = vec!["router", "--listen", &port, "--worker", "http://127.0.0.1:1"];
        args.extend_from_slice(extra);
        cleave_fails(&args, 2)
    };
    let err = router(&["--tls-cert", missing, "--tls-key", missing]);
    assert!(err.contains("absent.pem"), "{err}");
    let err = router(&["--tls-cert", garbage, "--tls-key", garbage]);
    assert!(err.contains("garbage.pem"), "{err}");
    let err = router(&["--tls-cert", garbage]);
    assert!(err.contains("--tls-key"), "{err}");
    let err = router(&["--api-key-file", empty_keys]);
    assert!(err.contains("holds no key"), "{err}");
    let err = router(&["--cluster-ca", missing]);
    assert!(err.contains("--cluster-cert"), "{err}");
    let err = router(&[
        "--etcd",
        "https://127.0.0.1:1",
        "--etcd-cert",
        missing,
        "--etcd-key",
        missing,
    ]);
    assert!(err.contains("--etcd-ca"), "{err}");
}
