//! Where pulled models live: `<home>/models/<name>/<file>`, with `<home>` = `$CLEAVE_HOME` or else
//! `$HOME/.cache/cleave`.
//!
//! Invariant: a `CacheDir` always has a root; the environment is read once, at construction, and
//! can be injected (`from_env_vars`) so tests never mutate the process environment. Cost: path
//! joins only; nothing touches the disk until a caller does.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::error::{ModelStoreError, Result};
use crate::registry::ModelEntry;

/// The environment variable that overrides the cache root.
pub const CLEAVE_HOME_ENV: &str = "CLEAVE_HOME";

/// The root of the local model cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheDir {
    root: PathBuf,
}

impl CacheDir {
    /// A cache rooted exactly at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache chosen by the process environment (`CLEAVE_HOME`, else `HOME`).
    pub fn from_env() -> Result<Self> {
        Self::from_env_vars(std::env::var_os("HOME"), std::env::var_os(CLEAVE_HOME_ENV))
    }

    /// The cache chosen by the given values of `HOME` and `CLEAVE_HOME`; an empty value counts
    /// as unset, as shells commonly export `VAR=` to clear a variable.
    pub fn from_env_vars(home: Option<OsString>, cleave_home: Option<OsString>) -> Result<Self> {
        let set = |value: Option<OsString>| value.filter(|v| !v.is_empty());
        if let Some(root) = set(cleave_home) {
            return Ok(Self::new(root));
        }
        let home = set(home).ok_or(ModelStoreError::NoCacheHome)?;
        Ok(Self::new(PathBuf::from(home).join(".cache").join("cleave")))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/models`: one directory per named model below it.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// `<root>/models/<name>`: the model's weights, the verification manifest, and temporary
    /// files of an in-progress pull (same directory, so the final rename is atomic).
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.models_dir().join(name)
    }

    /// Where `entry`'s weights are once pulled.
    pub fn model_file(&self, entry: &ModelEntry) -> PathBuf {
        self.model_dir(entry.name).join(entry.file_name())
    }
}

#[cfg(test)]
mod tests;
