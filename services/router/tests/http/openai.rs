//! The official `openai` Python client as a real client of the router's HTTP API (streaming and not, errors as the
//! client's typed exceptions): runs `tests/openai_client/client.py` against an in-process router in front of a real
//! CPU worker. scripts/test installs the client into target/pyenv and names its interpreter in
//! `CLEAVE_OPENAI_PYTHON`; without that variable the test says so and passes (plain `cargo test`).

use crate::common::{MODEL, Options, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_client_works_against_the_router() {
    let Ok(python) = std::env::var("CLEAVE_OPENAI_PYTHON") else {
        eprintln!(
            "SKIPPED: CLEAVE_OPENAI_PYTHON is not set; scripts/test installs the openai client and sets it \
             (or: python3 -m venv target/pyenv && target/pyenv/bin/pip install openai && \
             CLEAVE_OPENAI_PYTHON=target/pyenv/bin/python cargo test ...)"
        );
        return;
    };
    let c = start(Options {
        http: cleave_router::http::HttpConfig {
            api_keys: cleave_router::auth::ApiKeys::new(["sk-cleave-test".to_owned()]),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client/client.py");
    let base_url = format!("http://{}/v1", c.http);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args([base_url.as_str(), "sk-cleave-test", MODEL])
            .output()
            .expect("the Python interpreter runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "client.py failed:\n{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(summary["chat"], "The capital of France is Paris.");
    assert_eq!(summary["errors"], "ok");
    eprintln!("openai client {}: {summary}", summary["openai_version"]);
}
