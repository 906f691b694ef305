//! Test support shared by cleave's integration tests (a dev-dependency only): where the default model is, the
//! golden data, free loopback ports, child processes that cannot outlive a test, a real etcd server (plain or TLS) and test
//! certificates.

#![allow(clippy::expect_used)] // test support: a failed precondition should stop the test loudly

mod etcd;
mod pki;
mod process;

use std::path::PathBuf;

pub use etcd::{EtcdServer, EtcdTls};
pub use pki::{LeafFiles, TestCa};
pub use process::{ChildGuard, free_port};

/// The model cache the tests read: `$CLEAVE_HOME`, else `~/.cache/cleave` (where `cleave model pull` puts models).
pub fn cleave_home() -> PathBuf {
    std::env::var_os("CLEAVE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME or CLEAVE_HOME must be set")).join(".cache/cleave")
        })
}

/// The default model's GGUF: `$CLEAVE_TEST_GGUF`, else the cache. A missing model fails the test with the fix.
pub fn default_model_path() -> PathBuf {
    let path = match std::env::var_os("CLEAVE_TEST_GGUF") {
        Some(p) => PathBuf::from(p),
        None => cleave_home().join("models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        path.exists(),
        "{} is missing: run `cleave model pull` first (CI does)",
        path.display()
    );
    path
}

/// The golden data transformers produced for the default model (`crates/engine/tests/golden/golden.json`).
pub fn golden_json_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/golden/golden.json")
}

/// One prompt of the golden data: its text, its token ids and transformers' greedy continuation.
#[derive(Debug, Clone)]
pub struct GoldenPrompt {
    pub name: String,
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub output_ids: Vec<u32>,
}

/// The golden prompt called `name` (`short`, `code`, `long`, `chat`, `chat_system`, `numbers`).
pub fn golden_prompt(name: &str) -> GoldenPrompt {
    let path = golden_json_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let entry = golden["prompts"]
        .as_array()
        .and_then(|prompts| prompts.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no golden prompt named {name:?}"));
    let ids = |key: &str| -> Vec<u32> {
        entry[key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect())
            .unwrap_or_default()
    };
    GoldenPrompt {
        name: name.to_owned(),
        text: entry["text"].as_str().unwrap_or_default().to_owned(),
        prompt_ids: ids("prompt_ids"),
        output_ids: ids("output_ids"),
    }
}
