//! Remembers which cached files were verified, so a multi-hundred-MB sha256 is computed once per
//! file rather than on every start.
//!
//! `<model dir>/manifest.json` maps a file name to the size, modification time and sha256 it had
//! when last hashed. Invariant: a file counts as verified only if its current size and mtime equal
//! the recorded ones and the recorded sha256 equals the pinned one; any difference, or a missing
//! or unreadable manifest, means "hash again". The manifest is a cache of work done, not a trust
//! anchor: whoever can edit the file can edit it too. Concurrent writers may drop each other's
//! entries, which costs one extra hash later, never a wrong answer.
//! Cost: one `stat` and a small JSON read when the manifest matches; a full read of the file
//! (~0.3 s per 100 MB) when it does not.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};

use crate::checksum::hash_file;
use crate::error::{ModelStoreError, Result};
use crate::progress::{Phase, PullProgress};
use crate::registry::PinnedFile;
use crate::temp::TempPath;

const MANIFEST_FILE: &str = "manifest.json";
const MANIFEST_VERSION: u32 = 1;

/// What the cache holds for a pinned file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CacheState {
    Missing,
    Verified,
    /// Present but not the pinned bytes; the reason says what differs.
    Invalid(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    files: BTreeMap<String, VerifiedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VerifiedFile {
    size: u64,
    modified_unix_nanos: u64,
    sha256: String,
}

/// Decides whether `path` holds the pinned bytes, hashing only when the manifest cannot vouch
/// for it, and recording a successful hash for next time.
pub(crate) fn check_cached(path: &Path, pinned: &PinnedFile, progress: &dyn PullProgress) -> Result<CacheState> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(CacheState::Missing),
        Err(e) => return Err(ModelStoreError::io(path, "inspect cached file", e)),
    };
    if !meta.is_file() {
        return Ok(CacheState::Invalid("not a regular file".to_owned()));
    }
    if meta.len() != pinned.size {
        return Ok(CacheState::Invalid(format!(
            "size {} bytes, expected {}",
            meta.len(),
            pinned.size
        )));
    }
    let (dir, name) = split(path)?;
    let stamp = stamp_of(&meta);
    if let Some(modified_unix_nanos) = stamp {
        let expected = VerifiedFile {
            size: meta.len(),
            modified_unix_nanos,
            sha256: pinned.sha256.to_owned(),
        };
        if load(&dir).files.get(&name) == Some(&expected) {
            return Ok(CacheState::Verified);
        }
    }

    let hashed = {
        let phase = Phase::start(progress, Some(pinned.size), &format!("verifying {name}"));
        hash_file(path, &phase).map_err(|e| ModelStoreError::io(path, "hash cached file", e))?
    };
    if hashed.sha256 != pinned.sha256 {
        return Ok(CacheState::Invalid(format!(
            "sha256 {}, expected {}",
            hashed.sha256, pinned.sha256
        )));
    }
    if let Err(e) = record_verified(path, &hashed.sha256) {
        // A read-only cache still serves models; it just re-hashes on every start.
        progress.note(&format!("could not record verification: {e}"));
    }
    Ok(CacheState::Verified)
}

/// Records that `path`, as it is now on disk, has sha256 `sha256`.
pub(crate) fn record_verified(path: &Path, sha256: &str) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| ModelStoreError::io(path, "inspect file", e))?;
    let (dir, name) = split(path)?;
    let Some(modified_unix_nanos) = stamp_of(&meta) else {
        // Without an mtime we cannot tell a changed file from an unchanged one: record nothing.
        return Ok(());
    };
    let mut manifest = load(&dir);
    manifest.version = MANIFEST_VERSION;
    manifest.files.insert(
        name,
        VerifiedFile {
            size: meta.len(),
            modified_unix_nanos,
            sha256: sha256.to_owned(),
        },
    );
    save(&dir, &manifest)
}

fn split(path: &Path) -> Result<(PathBuf, String)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => Ok((dir.to_path_buf(), name.to_string_lossy().into_owned())),
        _ => Err(ModelStoreError::io(
            path,
            "locate manifest",
            std::io::Error::other("path has no parent directory or file name"),
        )),
    }
}

fn stamp_of(meta: &fs::Metadata) -> Option<u64> {
    let since_epoch = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since_epoch.as_nanos()).ok()
}

/// The manifest in `dir`; missing, unreadable or from another version reads as empty, which
/// only costs a re-hash.
fn load(dir: &Path) -> Manifest {
    fs::read(dir.join(MANIFEST_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
        .filter(|manifest| manifest.version == MANIFEST_VERSION)
        .unwrap_or_default()
}

fn save(dir: &Path, manifest: &Manifest) -> Result<()> {
    let dest = dir.join(MANIFEST_FILE);
    let json =
        serde_json::to_vec_pretty(manifest).map_err(|e| ModelStoreError::io(&dest, "encode manifest", e.into()))?;
    let (temp, mut file) = TempPath::create(dir, MANIFEST_FILE)?;
    file.write_all(&json)
        .map_err(|e| ModelStoreError::io(temp.path(), "write manifest", e))?;
    drop(file);
    temp.persist(&dest)
}

#[cfg(test)]
mod tests;
