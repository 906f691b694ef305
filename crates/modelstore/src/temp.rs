//! Temporary files beside their destination, removed unless explicitly persisted.
//!
//! Invariant: a `TempPath` either becomes its destination through one `rename` (atomic on one
//! filesystem, so readers see the old file or the whole new one, never a partial one) or is
//! deleted when dropped, on success, error and unwinding alike. Files left by a killed process
//! are swept by `sweep_stale`. Cost: one `create_new` and one `rename` or `remove_file`.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::error::{ModelStoreError, Result};

/// Suffix of every temporary file we create, so stale ones can be recognised.
const TEMP_SUFFIX: &str = ".cleave-tmp";

/// A temporary file not written for this long belongs to a dead process: live transfers write
/// at least every read timeout (60 s).
const STALE_AFTER: Duration = Duration::from_secs(600);

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A uniquely named temporary file in a given directory.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: PathBuf,
    /// Cleared once the file has been renamed away (or removed), so `Drop` leaves it alone.
    owned: bool,
}

impl TempPath {
    /// Creates `<dir>/.<label>.<pid>-<n>.cleave-tmp` and opens it for writing.
    pub(crate) fn create(dir: &Path, label: &str) -> Result<(Self, File)> {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!(".{label}.{}-{id}{TEMP_SUFFIX}", std::process::id());
        let path = dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| ModelStoreError::io(&path, "create temporary file", e))?;
        Ok((Self { path, owned: true }, file))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `dest`, replacing whatever was there.
    pub(crate) fn persist(mut self, dest: &Path) -> Result<()> {
        fs::rename(&self.path, dest).map_err(|e| ModelStoreError::io(dest, "rename into place", e))?;
        self.owned = false;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.owned {
            // Best effort: the file may already be gone, and a drop cannot report errors.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Removes our temporary files in `dir` that nobody has written for `STALE_AFTER` (left by a
/// process that was killed mid-pull). Errors are ignored: this only reclaims space.
pub(crate) fn sweep_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let now = SystemTime::now();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(TEMP_SUFFIX) {
            continue;
        }
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| now.duration_since(modified).unwrap_or_default() > STALE_AFTER);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Whether `name` is one of our temporary files (tests check nothing is left behind).
#[cfg(test)]
pub(crate) fn is_temp_name(name: &str) -> bool {
    name.ends_with(TEMP_SUFFIX)
}
