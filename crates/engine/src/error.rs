//! Engine errors, each carrying the category that decides its gRPC code, HTTP status and whether to retry.

use std::path::{Path, PathBuf};

/// The shared error category: one place decides how an error is reported and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCategory {
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
    Cancelled,
    DeadlineExceeded,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid argument '{field}': {message}")]
    InvalidArgument { field: &'static str, message: String },
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Gguf(#[from] cleave_gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] cleave_tokens::TokenizerError),
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    #[error("the engine has shut down")]
    Unavailable,
    #[error("request cancelled")]
    Cancelled,
    #[error("internal error: {0}")]
    Internal(String),
    /// A tensor-parallel group's communication failed (a member died or stopped answering).
    #[error("parallel group: {0}")]
    Group(#[from] cleave_comm::CommError),
}

impl From<cleave_sampling::InvalidArgument> for EngineError {
    fn from(e: cleave_sampling::InvalidArgument) -> Self {
        EngineError::InvalidArgument {
            field: e.field,
            message: e.message,
        }
    }
}

impl EngineError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        EngineError::InvalidArgument {
            field,
            message: message.into(),
        }
    }

    pub fn model(path: &Path, message: impl Into<String>) -> Self {
        EngineError::Model {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn category(&self) -> ErrorCategory {
        match self {
            EngineError::InvalidArgument { .. } => ErrorCategory::InvalidArgument,
            EngineError::ResourceExhausted(_) => ErrorCategory::ResourceExhausted,
            EngineError::Unavailable | EngineError::Group(_) => ErrorCategory::Unavailable,
            EngineError::Cancelled => ErrorCategory::Cancelled,
            EngineError::Model { .. }
            | EngineError::Io { .. }
            | EngineError::Gguf(_)
            | EngineError::Tokenizer(_)
            | EngineError::Internal(_) => ErrorCategory::Internal,
        }
    }
}
