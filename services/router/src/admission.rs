//! The router-wide admission bound: how many requests may wait for their first token at once.
//!
//! Per-worker signals (waiting sequences, free KV blocks) are judged in [`crate::policy::has_decode_headroom`]; this
//! module bounds what the router itself has let through, so a burst that arrives faster than load reports is
//! refused at the door. Invariant: the count equals the live [`QueuedPermit`]s (a permit is released on the first
//! token, or when the request ends or is dropped, whichever comes first). Cost: one atomic per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// Requests admitted and still waiting for their first token, across this router; the next one is refused.
    pub max_queued_requests: usize,
    /// What a refusal tells the client to wait before retrying (gRPC `retry-after` metadata, HTTP `Retry-After`).
    pub retry_after: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_queued_requests: 256,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// Counts requests waiting for their first token.
#[derive(Debug, Default)]
pub(crate) struct QueueGauge {
    queued: Arc<AtomicUsize>,
}

impl QueueGauge {
    /// A permit when fewer than `max` requests are queued, else `None` (the count is unchanged).
    pub(crate) fn try_enter(&self, max: usize) -> Option<QueuedPermit> {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| QueuedPermit {
                queued: self.queued.clone(),
            })
    }

    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// One queued request; dropping it leaves the queue.
#[derive(Debug)]
pub(crate) struct QueuedPermit {
    queued: Arc<AtomicUsize>,
}

impl Drop for QueuedPermit {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_stop_at_the_bound_and_come_back_when_dropped() {
        let gauge = QueueGauge::default();
        let a = gauge.try_enter(2);
        let b = gauge.try_enter(2);
        assert!(a.is_some() && b.is_some());
        assert!(gauge.try_enter(2).is_none());
        assert_eq!(gauge.queued(), 2);
        drop(a);
        assert!(gauge.try_enter(2).is_some());
        drop(b);
        assert_eq!(gauge.queued(), 0);
    }
}
