//! Watch events and the stream that delivers them, shared by the etcd and embedded registries.
//!
//! Invariant: a `WatchStream` delivers every change under its prefix in revision order, exactly once, or — when
//! the history it needed is gone (compaction) — a `Resync` carrying the full current state, after which events
//! continue from that state's revision. It ends only when the registry behind it is gone.
//! Cost: one unbounded channel per watch; events are moved, not copied, to the consumer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// `key` was created or overwritten with `value` at `mod_revision`.
    Put {
        key: String,
        value: String,
        mod_revision: i64,
    },
    /// `key` was deleted (explicitly, or because its lease was revoked or expired) at `mod_revision`.
    Delete { key: String, mod_revision: i64 },
    /// The watch lost its place in history (compaction): `entries` is the whole state under the prefix at
    /// `revision`; consumers must replace what they hold with it.
    Resync {
        entries: Vec<(String, String)>,
        revision: i64,
    },
}

impl WatchEvent {
    /// The revision this event brings its consumer up to.
    pub fn revision(&self) -> i64 {
        match self {
            Self::Put { mod_revision, .. } | Self::Delete { mod_revision, .. } => *mod_revision,
            Self::Resync { revision, .. } => *revision,
        }
    }
}

/// The stream of events of one `watch_prefix` call. Dropping it stops the watch.
#[derive(Debug)]
pub struct WatchStream {
    events: mpsc::UnboundedReceiver<WatchEvent>,
}

impl WatchStream {
    pub(crate) fn new(events: mpsc::UnboundedReceiver<WatchEvent>) -> Self {
        Self { events }
    }

    /// The next event; `None` once the registry behind the watch is gone.
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        self.events.recv().await
    }
}

impl Stream for WatchStream {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.get_mut().events.poll_recv(cx)
    }
}

/// Exponential backoff for reconnect loops: 100 ms doubling to a 2 s ceiling, reset after a success.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CEILING: Duration = Duration::from_secs(2);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    /// The delay to wait now; the one after it is twice as long, up to the ceiling.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::CEILING);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}
