use std::path::Path;

use super::*;
use crate::registry;

#[test]
fn cleave_home_wins_over_home() {
    let cache = CacheDir::from_env_vars(Some("/home/u".into()), Some("/srv/cleave".into())).unwrap();
    assert_eq!(cache.root(), Path::new("/srv/cleave"));
}

#[test]
fn home_gives_dot_cache_cleave() {
    let cache = CacheDir::from_env_vars(Some("/home/u".into()), None).unwrap();
    assert_eq!(cache.root(), Path::new("/home/u/.cache/cleave"));
}

#[test]
fn empty_values_count_as_unset() {
    let cache = CacheDir::from_env_vars(Some("/home/u".into()), Some("".into())).unwrap();
    assert_eq!(cache.root(), Path::new("/home/u/.cache/cleave"));
    let err = CacheDir::from_env_vars(Some("".into()), Some("".into())).unwrap_err();
    assert!(matches!(err, ModelStoreError::NoCacheHome));
}

#[test]
fn neither_variable_is_a_clear_error() {
    let err = CacheDir::from_env_vars(None, None).unwrap_err();
    assert!(matches!(err, ModelStoreError::NoCacheHome));
    assert!(err.to_string().contains("CLEAVE_HOME"), "{err}");
}

#[test]
fn model_file_layout() {
    let cache = CacheDir::new("/c");
    let entry = registry::find(registry::DEFAULT_MODEL).unwrap();
    assert_eq!(
        cache.model_file(entry),
        Path::new("/c/models/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf")
    );
}
