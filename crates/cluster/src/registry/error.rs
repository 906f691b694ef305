//! Errors of the control-plane registry, each with the category that decides retries and status codes.
//!
//! Invariant: every error names the endpoint or key it concerns, so a log line alone says what failed where.
//! Cost: building an error formats strings; nothing on a hot path.

use std::time::Duration;

use tonic::Code;

/// What kind of failure an error is; callers retry `Unavailable` and report `InvalidArgument` to their caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCategory {
    /// The request itself is wrong (bad key, bad TTL, a value that does not parse); retrying cannot help.
    InvalidArgument,
    /// The registry could not be reached or did not answer in time; retrying later may succeed.
    Unavailable,
    /// The registry answered in a way it should not (a protocol surprise); worth a bug report.
    Internal,
}

/// A registry failure.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// etcd could not be reached or failed the call with a transport-level status.
    #[error("etcd at {endpoints} is unavailable during {operation} of `{key}`: {source}")]
    Unavailable {
        endpoints: String,
        operation: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    /// etcd did not answer within the registry's call timeout.
    #[error("etcd at {endpoints} did not answer {operation} of `{key}` within {timeout:?}")]
    Timeout {
        endpoints: String,
        operation: &'static str,
        key: String,
        timeout: Duration,
    },
    /// etcd refused the call (a bad argument on our side, or a server-side rule).
    #[error("etcd at {endpoints} rejected {operation} of `{key}`: {source}")]
    Rejected {
        endpoints: String,
        operation: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    /// No etcd endpoint was configured.
    #[error("no etcd endpoint configured (set at least one, e.g. http://127.0.0.1:2379)")]
    NoEndpoints,
    /// A key or value read back from the registry is not UTF-8.
    #[error("registry key or value under `{key}` is not UTF-8")]
    NotUtf8 { key: String },
    /// A key the caller passed cannot be used.
    #[error("invalid registry key `{key}`: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A lease TTL outside what the registry accepts.
    #[error("lease TTL {ttl:?} for `{key}` is out of range: it must be between 1 s and 1 day")]
    InvalidTtl { key: String, ttl: Duration },
    /// A record under `key` is not the JSON the typed layer expects.
    #[error("record at `{key}` is not a valid {kind} JSON document: {source}")]
    InvalidRecord {
        key: String,
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A record that parsed but breaks a rule (empty id, zero block size, ...).
    #[error("record at `{key}` has an invalid field `{field}`: {reason}")]
    InvalidField {
        key: String,
        field: &'static str,
        reason: String,
    },
}

impl RegistryError {
    /// The category that decides whether to retry and which status to report.
    pub fn category(&self) -> ErrorCategory {
        match self {
            Self::Unavailable { .. } | Self::Timeout { .. } => ErrorCategory::Unavailable,
            Self::Rejected { .. } => ErrorCategory::Internal,
            Self::NoEndpoints
            | Self::NotUtf8 { .. }
            | Self::InvalidKey { .. }
            | Self::InvalidTtl { .. }
            | Self::InvalidRecord { .. }
            | Self::InvalidField { .. } => ErrorCategory::InvalidArgument,
        }
    }

    /// Whether a later retry of the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        self.category() == ErrorCategory::Unavailable
    }

    /// Wraps an etcd-client error, sorting transport failures (retryable) from refusals.
    pub(crate) fn from_etcd(endpoints: &str, operation: &'static str, key: &str, source: etcd_client::Error) -> Self {
        let endpoints = endpoints.to_owned();
        let key = key.to_owned();
        if is_transport_failure(&source) {
            Self::Unavailable {
                endpoints,
                operation,
                key,
                source,
            }
        } else {
            Self::Rejected {
                endpoints,
                operation,
                key,
                source,
            }
        }
    }
}

/// Whether an etcd-client error means "could not talk to etcd" rather than "etcd said no".
fn is_transport_failure(error: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match error {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        E::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
        ),
        _ => false,
    }
}
