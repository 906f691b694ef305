use std::cell::Cell;
use std::fs;

use super::*;
use crate::progress::NoProgress;
use crate::registry::{PinnedFile, WheelSource};
use crate::test_support::pinned;

fn cache() -> (tempfile::TempDir, CacheDir) {
    let home = tempfile::tempdir().unwrap();
    let cache = CacheDir::new(home.path());
    (home, cache)
}

fn resolve_local(spec: &str, cache: &CacheDir) -> Result<ResolvedModel> {
    resolve_with(spec, KNOWN_MODELS, cache, &NoProgress, None)
}

fn test_entry(gguf: PinnedFile) -> ModelEntry {
    ModelEntry {
        name: "tiny",
        summary: "test",
        source: WheelSource {
            project: "tiny",
            version: "1",
            filename: "tiny-1-py3-none-any.whl",
            wheel: gguf,
            member: "tiny/tiny.gguf",
        },
        gguf,
    }
}

fn write_gguf(path: &Path) -> Vec<u8> {
    let bytes = b"GGUF\x03\x00\x00\x00rest of a gguf".to_vec();
    fs::write(path, &bytes).unwrap();
    bytes
}

#[test]
fn gguf_file_resolves_to_absolute_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("My-Model.Q4_0.gguf");
    write_gguf(&path);
    let (_home, cache) = cache();
    let model = resolve_local(path.to_str().unwrap(), &cache).unwrap();
    assert_eq!(model.name, "My-Model.Q4_0");
    assert_eq!(model.source, ModelSource::Gguf(fs::canonicalize(&path).unwrap()));
}

#[test]
fn gguf_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (_home, cache) = cache();

    let missing = dir.path().join("absent.gguf");
    let err = resolve_local(missing.to_str().unwrap(), &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::SpecNotFound { .. }), "{err}");
    assert!(err.to_string().contains("absent.gguf"), "{err}");

    let fake = dir.path().join("fake.gguf");
    fs::write(&fake, b"PK\x03\x04 a zip").unwrap();
    let err = resolve_local(fake.to_str().unwrap(), &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::NotGguf { .. }), "{err}");
    assert!(err.to_string().contains("PK"), "{err}");

    let other = dir.path().join("weights.bin");
    fs::write(&other, b"GGUF").unwrap();
    let err = resolve_local(other.to_str().unwrap(), &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::NotAModel { .. }), "{err}");
    assert!(
        err.to_string().contains("neither a .gguf file nor a model directory"),
        "{err}"
    );
}

fn hf_dir(files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in files {
        fs::write(dir.path().join(name), b"{}").unwrap();
    }
    dir
}

#[test]
fn hf_directory_resolves() {
    let dir = hf_dir(&["config.json", "tokenizer.json", "model.safetensors"]);
    let (_home, cache) = cache();
    let model = resolve_local(dir.path().to_str().unwrap(), &cache).unwrap();
    let absolute = fs::canonicalize(dir.path()).unwrap();
    assert_eq!(model.source, ModelSource::HfDir(absolute.clone()));
    assert_eq!(model.name, absolute.file_name().unwrap().to_string_lossy());
}

#[test]
fn hf_directory_names_each_missing_file() {
    let (_home, cache) = cache();
    let dir = hf_dir(&["config.json", "model.safetensors"]);
    let err = resolve_local(dir.path().to_str().unwrap(), &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::IncompleteHfDir { .. }), "{err}");
    assert!(err.to_string().ends_with("missing tokenizer.json"), "{err}");

    let dir = hf_dir(&["tokenizer.json"]);
    let message = resolve_local(dir.path().to_str().unwrap(), &cache)
        .unwrap_err()
        .to_string();
    assert!(
        message.ends_with("missing config.json, weights (*.safetensors or model.safetensors.index.json)"),
        "{message}"
    );
}

#[test]
fn sharded_checkpoint_checks_every_shard() {
    let (_home, cache) = cache();
    let dir = hf_dir(&["config.json", "tokenizer.json", "model-00001-of-00002.safetensors"]);
    let index = r#"{"metadata": {}, "weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}"#;
    fs::write(dir.path().join(SAFETENSORS_INDEX), index).unwrap();
    let message = resolve_local(dir.path().to_str().unwrap(), &cache)
        .unwrap_err()
        .to_string();
    assert!(
        message.ends_with("missing model-00002-of-00002.safetensors (listed in model.safetensors.index.json)"),
        "{message}"
    );

    fs::write(dir.path().join("model-00002-of-00002.safetensors"), b"").unwrap();
    assert!(matches!(
        resolve_local(dir.path().to_str().unwrap(), &cache).unwrap().source,
        ModelSource::HfDir(_)
    ));

    fs::write(dir.path().join(SAFETENSORS_INDEX), b"[1, 2]").unwrap();
    let err = resolve_local(dir.path().to_str().unwrap(), &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::BadSafetensorsIndex { .. }), "{err}");
}

#[test]
fn unknown_name_lists_known_models() {
    let (_home, cache) = cache();
    let err = resolve_local("no-such-model", &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::UnknownModel { .. }), "{err}");
    assert!(err.to_string().contains("smollm2-135m"), "{err}");
}

#[test]
fn path_like_spec_that_is_missing_is_not_found() {
    let (_home, cache) = cache();
    let err = resolve_local("./no/such/dir", &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::SpecNotFound { .. }), "{err}");
}

#[test]
fn synthetic_specs_are_passed_through() {
    let (_home, cache) = cache();
    let model = resolve_local("synthetic:llama-1b", &cache).unwrap();
    assert_eq!(model.source, ModelSource::Synthetic("llama-1b".to_owned()));
    assert_eq!(model.name, "synthetic:llama-1b");
    let err = resolve_local("synthetic: ", &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::EmptySyntheticShape { .. }), "{err}");
    assert!(matches!(
        resolve_local("  ", &cache).unwrap_err(),
        ModelStoreError::EmptySpec
    ));
}

#[test]
fn uncached_registry_model_without_pull_names_the_command() {
    let (_home, cache) = cache();
    let err = resolve_local(registry::DEFAULT_MODEL, &cache).unwrap_err();
    assert!(matches!(err, ModelStoreError::NotCached { .. }), "{err}");
    assert!(err.to_string().contains("cleave model pull smollm2-135m"), "{err}");
}

#[test]
fn cached_registry_model_resolves_without_pulling() {
    let (_home, cache) = cache();
    let bytes = b"GGUF cached weights".to_vec();
    let models = [test_entry(pinned(&bytes))];
    let path = cache.model_file(&models[0]);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, &bytes).unwrap();

    let called = Cell::new(false);
    let fetch = |_: &ModelEntry| -> Result<PathBuf> {
        called.set(true);
        Err(ModelStoreError::EmptySpec)
    };
    // Without pulling allowed: the verified cache answers.
    let model = resolve_with("tiny", &models, &cache, &NoProgress, None).unwrap();
    assert_eq!(
        model,
        ResolvedModel {
            name: "tiny".to_owned(),
            source: ModelSource::Gguf(path.clone())
        }
    );
    // With pulling allowed, resolution goes through the pull (which checks the cache itself).
    let err = resolve_with("tiny", &models, &cache, &NoProgress, Some(&fetch)).unwrap_err();
    assert!(called.get() && matches!(err, ModelStoreError::EmptySpec));
}

#[test]
fn corrupt_registry_model_without_pull_is_invalid() {
    let (_home, cache) = cache();
    let models = [test_entry(pinned(b"GGUF good"))];
    let path = cache.model_file(&models[0]);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, b"GGUF bad!").unwrap();
    let err = resolve_with("tiny", &models, &cache, &NoProgress, None).unwrap_err();
    assert!(matches!(err, ModelStoreError::InvalidCachedFile { .. }), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");
}

#[test]
fn registry_name_wins_over_bare_directory_but_dot_slash_forces_path() {
    assert!(!looks_like_path("smollm2-135m"));
    assert!(looks_like_path("./smollm2-135m"));
    assert!(looks_like_path("model.GGUF"));
    assert!(looks_like_path("~/models/x"));
}
