//! The engine benchmark as a library: a tiny run on the real default model, and settings it refuses.

mod common;

use cleave_engine::EngineError;
use cleave_engine::ModelFiles;
use cleave_engine::bench::{BenchConfig, run_bench};

fn tiny() -> BenchConfig {
    BenchConfig {
        prompt_tokens: 40,
        decode_tokens: 5,
        batches: vec![1, 3],
        decode_prompt_tokens: 8,
        runs: 2,
    }
}

#[test]
fn tiny_run_reports_every_measurement() {
    let path = cleave_testkit::default_model_path();
    let report = run_bench(ModelFiles::Gguf(&path), &tiny()).expect("the benchmark runs");
    assert_eq!(report.config, tiny());
    assert_eq!(report.model.n_layers, 30);
    assert!(report.load_ms > 0.0);

    assert_eq!(report.prefill.prompt_tokens, 40);
    assert_eq!(report.prefill.ttft_ms.len(), 2, "one warm-up, then the timed runs");
    assert!(report.prefill.tokens_per_s > 0.0);
    let want = 40.0 / (report.prefill.median_ttft_ms / 1e3);
    assert!((report.prefill.tokens_per_s - want).abs() < 1e-6 * want);

    assert_eq!(report.decode.iter().map(|d| d.batch).collect::<Vec<_>>(), [1, 3]);
    for d in &report.decode {
        assert_eq!(
            d.counted_tokens,
            d.batch * 4,
            "every request runs its full count after its first token"
        );
        assert_eq!(d.decode_ms.len(), 2);
        assert!(d.tokens_per_s > 0.0);
        assert!((d.per_sequence_tokens_per_s * d.batch as f64 - d.tokens_per_s).abs() < 1e-6 * d.tokens_per_s);
    }

    let m = &report.memory;
    assert!(m.weights_bytes > 50 << 20, "{m:?}");
    // The cache holds the largest measurement: 3 requests of 8 + 5 tokens, and the 40-token prefill.
    assert!(m.kv_cache_bytes >= 41 * m.kv_bytes_per_token, "{m:?}");
    assert!(m.kv_cache_bytes >= 3 * 13 * m.kv_bytes_per_token, "{m:?}");
    if cfg!(target_os = "linux") {
        assert!(
            m.peak_rss_bytes.is_some_and(|peak| peak as usize > m.weights_bytes),
            "{m:?}"
        );
    }
    let table = report.to_string();
    assert!(
        table.contains("prefill") && table.contains("decode") && table.contains("peak RSS"),
        "{table}"
    );
}

fn invalid_field(result: Result<impl std::fmt::Debug, EngineError>) -> &'static str {
    match result {
        Err(EngineError::InvalidArgument { field, .. }) => field,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[test]
fn bad_settings_name_their_field() {
    let bad = |c: BenchConfig| invalid_field(c.validate());
    assert_eq!(
        bad(BenchConfig {
            prompt_tokens: 0,
            ..tiny()
        }),
        "prompt_tokens"
    );
    assert_eq!(
        bad(BenchConfig {
            decode_tokens: 1,
            ..tiny()
        }),
        "decode_tokens"
    );
    assert_eq!(
        bad(BenchConfig {
            decode_prompt_tokens: 0,
            ..tiny()
        }),
        "decode_prompt_tokens"
    );
    assert_eq!(
        bad(BenchConfig {
            batches: vec![],
            ..tiny()
        }),
        "batches"
    );
    assert_eq!(
        bad(BenchConfig {
            batches: vec![2, 0],
            ..tiny()
        }),
        "batches"
    );
    assert_eq!(bad(BenchConfig { runs: 0, ..tiny() }), "runs");
    assert!(BenchConfig::default().validate().is_ok());
}

#[test]
fn a_prompt_longer_than_the_context_is_refused() {
    let path = cleave_testkit::default_model_path();
    let config = BenchConfig {
        prompt_tokens: 8192,
        ..tiny()
    };
    assert_eq!(
        invalid_field(run_bench(ModelFiles::Gguf(&path), &config)),
        "prompt_tokens"
    );
}
