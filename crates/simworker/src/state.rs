//! The state every simulated request shares: the KV cache, the load counters, the live KV-event feed and the abort
//! table.
//!
//! Invariant: the counters and the KV cache change together under one short lock, and KV events are published to
//! live subscribers under that same lock, so the live feed is in sequence order and never behind the log. Cost per
//! change: one uncontended lock and, when events were produced, one broadcast send.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cleave_proto::v1;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::config::SimConfig;
use crate::kv::SimKv;

/// Live KV events buffered per subscriber before it is told it fell behind.
const KV_EVENT_CHANNEL: usize = 4096;

#[derive(Debug)]
pub(crate) struct SimState {
    pub kv: SimKv,
    /// Admitted sequences (prefilling or decoding).
    pub running: usize,
    /// Sequences waiting for KV blocks.
    pub waiting: usize,
    /// Prompt tokens still to prefill, of waiting and prefilling sequences.
    pub queued_prefill_tokens: u64,
    /// Requests accepted since start.
    pub accepted: u64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: SimConfig,
    state: Mutex<SimState>,
    /// Woken whenever blocks are released, so waiting sequences retry admission.
    pub blocks_freed: Notify,
    kv_events: broadcast::Sender<v1::KvEvent>,
    /// Router request id → its cancellation, for `Abort`. Entries leave when their sequence ends.
    requests: Mutex<HashMap<String, CancellationToken>>,
}

impl Shared {
    pub fn new(config: SimConfig) -> Self {
        let kv = SimKv::new(config.kv_blocks, config.kv_event_log);
        Shared {
            config,
            state: Mutex::new(SimState {
                kv,
                running: 0,
                waiting: 0,
                queued_prefill_tokens: 0,
                accepted: 0,
            }),
            blocks_freed: Notify::new(),
            kv_events: broadcast::channel(KV_EVENT_CHANNEL).0,
            requests: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` on the state, then publishes the KV events it produced. A poisoned lock is recovered: every
    /// update keeps the state consistent before anything that could panic.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut SimState) -> R) -> R {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let result = f(&mut state);
        self.publish(&mut state);
        result
    }

    fn publish(&self, state: &mut MutexGuard<'_, SimState>) {
        for event in state.kv.drain_fresh() {
            // No subscriber is fine: the log keeps the events for later resumption.
            let _ = self.kv_events.send(event);
        }
    }

    pub fn subscribe_kv_events(&self) -> broadcast::Receiver<v1::KvEvent> {
        self.kv_events.subscribe()
    }

    /// Registers `request_id` for `Abort`; `false` if one with that id is already running.
    pub fn register(&self, request_id: &str, cancel: &CancellationToken) -> bool {
        let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        if requests.contains_key(request_id) {
            return false;
        }
        requests.insert(request_id.to_string(), cancel.clone());
        true
    }

    pub fn unregister(&self, request_id: &str) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(request_id);
    }

    /// Cancels a running request; `false` if none has that id.
    pub fn abort(&self, request_id: &str) -> bool {
        let requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        match requests.get(request_id) {
            Some(cancel) => {
                cancel.cancel();
                true
            }
            None => false,
        }
    }
}
