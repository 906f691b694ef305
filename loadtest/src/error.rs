//! The load tester's errors: bad campaign files, unreachable targets, processes that will not start, output that
//! cannot be written. Invariant: each variant names what failed (the file, the field, the process) so the CLI can
//! print it as is. Cost: none.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("campaign {path}: {source}")]
    Toml {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("invalid campaign: '{field}' {message}")]
    Invalid { field: String, message: String },
    #[error("trace {path} line {line}: {message}")]
    Trace {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("target {url}: {message}")]
    Target { url: String, message: String },
    #[error("process '{name}': {message}")]
    Process { name: String, message: String },
    #[error("run file {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("plot {path}: {message}")]
    Plot { path: PathBuf, message: String },
}

impl LoadError {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        LoadError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}
