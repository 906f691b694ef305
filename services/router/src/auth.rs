//! API keys on the public APIs: `Authorization: Bearer <key>` on HTTP `/v1/*` and in gRPC metadata on every
//! `Generation` call; health, readiness and reflection stay open for probes.
//!
//! Invariant: a key is compared in constant time against every configured key (so timing reveals neither which
//! key nor how long a matching prefix is); no keys configured means the APIs are open. Cost: one pass over each
//! key's bytes per request.

use std::path::Path;
use std::sync::Arc;

/// The accepted API keys; empty when the APIs are open.
#[derive(Clone, Default)]
pub struct ApiKeys(Arc<[Box<[u8]>]>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} keys)", self.0.len())
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send 'Authorization: Bearer <key>'")]
    Missing,
    #[error("incorrect API key provided")]
    Wrong,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiKeyFileError {
    #[error("cannot read the API key file {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the API key file {path} holds no key (one key per line; `#` starts a comment)")]
    Empty { path: std::path::PathBuf },
}

impl ApiKeys {
    /// These keys (empty strings ignored).
    pub fn new(keys: impl IntoIterator<Item = String>) -> Self {
        let keys: Vec<Box<[u8]>> = keys
            .into_iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| k.trim().as_bytes().into())
            .collect();
        Self(keys.into())
    }

    /// The keys in `path`, one per line; blank lines and lines starting with `#` are skipped. A file with no key
    /// is an error (an empty file must not silently open the API).
    pub fn from_file(path: &Path) -> Result<Self, ApiKeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ApiKeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let keys = Self::new(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned),
        );
        if keys.is_open() {
            return Err(ApiKeyFileError::Empty { path: path.to_owned() });
        }
        Ok(keys)
    }

    /// These keys and `other`'s.
    pub fn merge(&self, other: &ApiKeys) -> ApiKeys {
        ApiKeys(self.0.iter().chain(other.0.iter()).cloned().collect())
    }

    /// Whether requests need no key.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks an `Authorization` header's value (`Bearer <key>`, the scheme case-insensitive).
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        if self.is_open() {
            return Ok(());
        }
        let given = authorization
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, key)| key.trim())
            .ok_or(AuthError::Missing)?;
        // Every key is compared, match or not, so the time taken does not say which one matched.
        let matched = self
            .0
            .iter()
            .fold(false, |found, key| constant_time_eq(given.as_bytes(), key) | found);
        if matched { Ok(()) } else { Err(AuthError::Wrong) }
    }

    /// A gRPC interceptor that refuses calls without a valid key with `UNAUTHENTICATED`.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature returns Status by value.
    pub fn intercept(&self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let header = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        match self.check(header) {
            Ok(()) => Ok(request),
            Err(e) => Err(tonic::Status::unauthenticated(e.to_string())),
        }
    }
}

/// Equal without revealing, through timing, how long a common prefix is.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"sk-abc", b"sk-abc"));
        assert!(!constant_time_eq(b"sk-abc", b"sk-abd"));
        assert!(!constant_time_eq(b"sk-abc", b"sk-ab"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let keys = ApiKeys::new(["sk-one".to_owned(), "sk-two".to_owned(), String::new()]);
        assert_eq!(keys.check(Some("Bearer sk-one")), Ok(()));
        assert_eq!(keys.check(Some("bearer sk-two")), Ok(()));
        assert_eq!(keys.check(Some("Bearer sk-three")), Err(AuthError::Wrong));
        assert_eq!(keys.check(Some("Bearer ")), Err(AuthError::Wrong));
        assert_eq!(keys.check(Some("Basic sk-one")), Err(AuthError::Missing));
        assert_eq!(keys.check(None), Err(AuthError::Missing));
        assert_eq!(ApiKeys::default().check(None), Ok(()));
    }

    #[test]
    fn a_key_file_takes_one_key_per_line_and_must_hold_one() {
        let dir = std::env::temp_dir().join(format!("cleave-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("keys");
        std::fs::write(&file, "# rotated 2026-11\nsk-old\n\n  sk-new  \n").unwrap();
        let keys = ApiKeys::from_file(&file).unwrap();
        assert_eq!(keys.check(Some("Bearer sk-new")), Ok(()));
        assert_eq!(keys.check(Some("Bearer sk-old")), Ok(()));
        std::fs::write(&file, "# nothing\n\n").unwrap();
        assert!(matches!(ApiKeys::from_file(&file), Err(ApiKeyFileError::Empty { .. })));
        assert!(matches!(
            ApiKeys::from_file(&dir.join("absent")),
            Err(ApiKeyFileError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
