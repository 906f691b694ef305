use std::fs::{self, File};
use std::time::{Duration, SystemTime};

use super::*;
use crate::progress::NoProgress;
use crate::test_support::{RecordingProgress, pinned, pseudo_random};

fn verifying_count(progress: &RecordingProgress) -> usize {
    progress.starts().iter().filter(|s| s.contains("verifying")).count()
}

#[test]
fn missing_file_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let state = check_cached(&dir.path().join("m.gguf"), &pinned(b"x"), &NoProgress).unwrap();
    assert_eq!(state, CacheState::Missing);
}

#[test]
fn wrong_size_is_invalid_without_hashing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    fs::write(&path, b"short").unwrap();
    let progress = RecordingProgress::default();
    let state = check_cached(&path, &pinned(b"longer contents"), &progress).unwrap();
    let CacheState::Invalid(reason) = state else {
        panic!("expected invalid, got {state:?}");
    };
    assert!(reason.contains("size 5 bytes, expected 15"), "{reason}");
    assert_eq!(verifying_count(&progress), 0);
}

#[test]
fn first_check_hashes_then_manifest_answers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let bytes = pseudo_random(600_000, 1);
    fs::write(&path, &bytes).unwrap();
    let pin = pinned(&bytes);

    let progress = RecordingProgress::default();
    assert_eq!(check_cached(&path, &pin, &progress).unwrap(), CacheState::Verified);
    assert_eq!(verifying_count(&progress), 1);
    assert!(dir.path().join(MANIFEST_FILE).is_file());

    let progress = RecordingProgress::default();
    assert_eq!(check_cached(&path, &pin, &progress).unwrap(), CacheState::Verified);
    assert_eq!(verifying_count(&progress), 0, "manifest should spare the hash");
}

#[test]
fn same_size_and_mtime_is_trusted_but_a_new_mtime_rehashes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let bytes = pseudo_random(4096, 2);
    fs::write(&path, &bytes).unwrap();
    let pin = pinned(&bytes);
    assert_eq!(check_cached(&path, &pin, &NoProgress).unwrap(), CacheState::Verified);

    // Corrupt in place, keeping size and restoring the mtime: the manifest still vouches
    // (documented: it is a cache of work, not a defence against tampering).
    let modified = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, pseudo_random(4096, 3)).unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    assert_eq!(check_cached(&path, &pin, &NoProgress).unwrap(), CacheState::Verified);

    // Any mtime change forces a re-hash, which catches the corruption.
    let later = SystemTime::now() + Duration::from_secs(5);
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let state = check_cached(&path, &pin, &NoProgress).unwrap();
    let CacheState::Invalid(reason) = state else {
        panic!("expected invalid, got {state:?}");
    };
    assert!(reason.contains("sha256") && reason.contains(pin.sha256), "{reason}");
}

#[test]
fn corrupt_manifest_means_rehash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    fs::write(&path, b"weights").unwrap();
    fs::write(dir.path().join(MANIFEST_FILE), b"{ not json").unwrap();
    let progress = RecordingProgress::default();
    assert_eq!(
        check_cached(&path, &pinned(b"weights"), &progress).unwrap(),
        CacheState::Verified
    );
    assert_eq!(verifying_count(&progress), 1);
    // And the manifest was rewritten in a readable form.
    assert_eq!(load(dir.path()).files.len(), 1);
}

#[test]
fn manifest_keeps_other_files() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a.gguf", "b.gguf"] {
        let path = dir.path().join(name);
        fs::write(&path, name).unwrap();
        assert_eq!(
            check_cached(&path, &pinned(name.as_bytes()), &NoProgress).unwrap(),
            CacheState::Verified
        );
    }
    let files = load(dir.path()).files;
    assert_eq!(files.keys().collect::<Vec<_>>(), ["a.gguf", "b.gguf"]);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| crate::temp::is_temp_name(n))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
