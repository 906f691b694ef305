//! A worker's engine as a metrics source: its scheduler stats, read on each scrape.
//!
//! Invariant: sampling only asks the engine thread for its stats (a command round trip); it never blocks a step.
//! Cost: one `Engine::stats` call per scrape.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use cleave_engine::Engine;
use cleave_telemetry::{KvTransferMetrics, WorkerLabels, WorkerMetrics, WorkerSample, WorkerSampler};

/// Samples an engine's scheduler.
#[derive(Debug, Clone)]
pub struct EngineSampler(pub Arc<Engine>);

impl WorkerSampler for EngineSampler {
    fn sample(&self) -> Pin<Box<dyn Future<Output = Option<WorkerSample>> + Send + '_>> {
        Box::pin(async move {
            let stats = self.0.stats().await.ok()?;
            Some(WorkerSample {
                running: stats.running,
                waiting: stats.waiting,
                kv_blocks_used: stats.total_blocks.saturating_sub(stats.free_blocks),
                kv_blocks_free: stats.free_blocks,
                kv_blocks_fenced: stats.remote_prefill.fenced_blocks,
                queued_prefill_tokens: stats.queued_prefill_tokens,
                preemptions: stats.preemptions,
                prefix_cache_queried_blocks: stats.prefix_cache.queried_blocks,
                prefix_cache_hit_blocks: stats.prefix_cache.hit_blocks,
                remote_prefills_awaiting: stats.remote_prefill.awaiting,
                remote_prefills_completed: stats.remote_prefill.completed,
                remote_prefills_fell_back: stats.remote_prefill.fell_back,
            })
        })
    }
}

/// Adds `engine`'s worker to `metrics` under `labels`; the handle counts its KV transfers (give it to the
/// [`crate::WorkerService`] and the [`crate::KvInbox`]).
pub fn register_worker_metrics(
    metrics: &WorkerMetrics,
    labels: WorkerLabels,
    engine: Arc<Engine>,
) -> KvTransferMetrics {
    metrics.worker(labels, Arc::new(EngineSampler(engine)))
}
