//! What can go wrong with a public request, and its one mapping to a gRPC status (the HTTP API maps the same
//! categories to statuses in `http::errors`).
//!
//! Invariant: every refusal the router makes itself is one of these variants, decided before or instead of a
//! worker's answer; a worker's own refusals pass through as [`RouterError::Worker`] with the worker's code.

use std::time::Duration;

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Bad input, naming the field as the gRPC API names it.
    #[error("invalid argument '{field}': {message}")]
    InvalidArgument { field: String, message: String },
    #[error("invalid argument 'model': unknown model '{requested}'; this router serves '{served}'")]
    UnknownModel { requested: String, served: String },
    #[error("no decode worker is reachable; retry shortly")]
    NoWorker,
    /// Admission control refused the request; the client should retry after `retry_after`.
    #[error("overloaded: {reason}; retry after {}s", retry_after.as_secs().max(1))]
    Overloaded { reason: String, retry_after: Duration },
    #[error("the request's deadline passed before its worker answered")]
    DeadlineExceeded,
    /// A worker's own status (already mapped by [`worker_failure`]).
    #[error("{}", .0.message())]
    Worker(Status),
}

impl RouterError {
    pub fn invalid(field: impl Into<String>, message: impl std::fmt::Display) -> Self {
        RouterError::InvalidArgument {
            field: field.into(),
            message: message.to_string(),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            RouterError::InvalidArgument { .. } | RouterError::UnknownModel { .. } => Code::InvalidArgument,
            RouterError::NoWorker => Code::Unavailable,
            RouterError::Overloaded { .. } => Code::ResourceExhausted,
            RouterError::DeadlineExceeded => Code::DeadlineExceeded,
            RouterError::Worker(status) => status.code(),
        }
    }

    /// The request field at fault, as the gRPC API names it.
    pub fn field(&self) -> Option<&str> {
        match self {
            RouterError::InvalidArgument { field, .. } => Some(field),
            RouterError::UnknownModel { .. } => Some("model"),
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RouterError::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The gRPC status; an overload refusal carries `retry-after` (whole seconds) in its metadata.
    pub fn into_status(self) -> Status {
        let code = self.code();
        match self {
            RouterError::Worker(status) => status,
            other => {
                let mut metadata = MetadataMap::new();
                if let Some(after) = other.retry_after() {
                    metadata.insert("retry-after", MetadataValue::from(after.as_secs().max(1)));
                }
                Status::with_metadata(code, other.to_string(), metadata)
            }
        }
    }
}

/// A worker's own refusals pass through; a worker that broke (connection reset, process gone) becomes `UNAVAILABLE`
/// naming it, so clients can tell "retry elsewhere" from "fix the request".
pub fn worker_failure(addr: &str, status: Status) -> Status {
    match status.code() {
        Code::Unknown | Code::Internal | Code::Unavailable => {
            Status::unavailable(format!("worker {addr} failed: {}", status.message()))
        }
        _ => status,
    }
}
