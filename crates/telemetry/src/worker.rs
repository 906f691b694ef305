//! A worker's metrics: engine gauges and counters sampled from its scheduler on each scrape, KV transfers counted
//! as they finish, and the etcd lease state. Every family carries `worker` and `role` labels, so one registry can
//! hold several workers (`cleave up`) and dashboards can split prefill from decode.
//!
//! Invariant: sampled values are read from the engine when a scrape begins ([`WorkerMetrics::refresh`]), so a
//! scrape shows the scheduler's state at that moment. Cost: one `sample()` round trip to each registered
//! worker's engine per scrape.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Which worker a series belongs to.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    /// The worker's id (its registry id, or its address).
    pub worker: String,
    /// `prefill`, `decode` or `both`.
    pub role: String,
}

/// The scheduler's state at one moment; the counters are totals since the engine started.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WorkerSample {
    pub running: usize,
    pub waiting: usize,
    pub kv_blocks_used: usize,
    pub kv_blocks_free: usize,
    pub queued_prefill_tokens: usize,
    pub preemptions: u64,
    pub prefix_cache_queried_blocks: u64,
    pub prefix_cache_hit_blocks: u64,
    pub remote_prefills_awaiting: usize,
    pub remote_prefills_completed: u64,
    pub remote_prefills_fell_back: u64,
    /// Blocks held back from reuse for a peer that may still write them directly (CUDA IPC).
    pub kv_blocks_fenced: usize,
}

/// Reads a worker's [`WorkerSample`] at scrape time; `None` when its engine is gone.
pub trait WorkerSampler: Send + Sync + 'static {
    fn sample(&self) -> Pin<Box<dyn Future<Output = Option<WorkerSample>> + Send + '_>>;
}

/// Which way KV moved: `sent` by a prefill worker, `received` by a decode worker.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum KvDirection {
    Sent,
    Received,
}

impl KvDirection {
    fn as_str(self) -> &'static str {
        match self {
            KvDirection::Sent => "sent",
            KvDirection::Received => "received",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferLabels {
    worker: String,
    role: String,
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransferOutcomeLabels {
    worker: String,
    role: String,
    direction: &'static str,
    /// `tcp` or `cuda_ipc`.
    transport: &'static str,
    outcome: &'static str,
}

type Samplers = Arc<Mutex<Vec<(WorkerLabels, Arc<dyn WorkerSampler>)>>>;
type Samples = Arc<Mutex<Vec<(WorkerLabels, WorkerSample)>>>;

fn transfer_histogram() -> Histogram {
    // 100 µs to ~6.5 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The families every worker of a process shares; [`WorkerMetrics::worker`] adds one worker.
#[derive(Clone)]
pub struct WorkerMetrics {
    samplers: Samplers,
    /// What the last [`WorkerMetrics::refresh`] read; the collector encodes these.
    latest: Samples,
    kv_bytes: Family<TransferLabels, Counter>,
    kv_duration: Family<TransferLabels, Histogram, fn() -> Histogram>,
    kv_transfers: Family<TransferOutcomeLabels, Counter>,
    lease_held: Family<WorkerLabels, Gauge>,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    /// Metrics registered nowhere: they count, but no endpoint shows them.
    fn default() -> Self {
        WorkerMetrics {
            samplers: Samplers::default(),
            latest: Samples::default(),
            kv_bytes: Family::default(),
            kv_duration: Family::new_with_constructor(transfer_histogram),
            kv_transfers: Family::default(),
            lease_held: Family::default(),
        }
    }
}

impl WorkerMetrics {
    /// Registers the worker families in `registry` (once per registry).
    pub fn register(registry: &mut Registry) -> Self {
        let m = WorkerMetrics::default();
        registry.register_collector(Box::new(SampledWorkers(m.latest.clone())));
        registry.register_with_unit(
            "worker_kv_transfer",
            "KV cache bytes moved between workers",
            Unit::Bytes,
            m.kv_bytes.clone(),
        );
        registry.register_with_unit(
            "worker_kv_transfer_duration",
            "From opening a KV transfer to its last layer confirmed (sent) or handed to the engine (received)",
            Unit::Seconds,
            m.kv_duration.clone(),
        );
        registry.register(
            "worker_kv_transfers",
            "KV transfers by direction and outcome (ok or failed)",
            m.kv_transfers.clone(),
        );
        registry.register(
            "worker_etcd_lease_held",
            "1 while the worker holds its registry lease (its record is visible to routers), else 0",
            m.lease_held.clone(),
        );
        m
    }

    /// Adds a worker: its engine is sampled on every scrape, and the returned handle counts its KV transfers.
    pub fn worker(&self, labels: WorkerLabels, sampler: Arc<dyn WorkerSampler>) -> KvTransferMetrics {
        self.samplers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push((labels.clone(), sampler));
        KvTransferMetrics {
            labels,
            metrics: self.clone(),
        }
    }

    /// Samples every worker's engine; a scrape calls this before encoding.
    pub async fn refresh(&self) {
        let samplers: Vec<_> = self
            .samplers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut samples = Vec::with_capacity(samplers.len());
        for (labels, sampler) in samplers {
            if let Some(sample) = sampler.sample().await {
                samples.push((labels, sample));
            }
        }
        *self.latest.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = samples;
    }

    pub fn set_lease_held(&self, labels: &WorkerLabels, held: bool) {
        self.lease_held.get_or_create(labels).set(i64::from(held));
    }
}

/// One worker's KV-transfer counters.
#[derive(Debug, Clone)]
pub struct KvTransferMetrics {
    labels: WorkerLabels,
    metrics: WorkerMetrics,
}

impl Default for KvTransferMetrics {
    /// Counts into families registered nowhere.
    fn default() -> Self {
        KvTransferMetrics {
            labels: WorkerLabels {
                worker: String::new(),
                role: String::new(),
            },
            metrics: WorkerMetrics::default(),
        }
    }
}

impl KvTransferMetrics {
    /// A transfer that ended: `bytes` of KV moved in `elapsed` over `transport` (`tcp`, `cuda_ipc`); failed
    /// transfers count their bytes too.
    pub fn record(&self, direction: KvDirection, transport: &'static str, bytes: u64, elapsed: Duration, ok: bool) {
        let labels = TransferLabels {
            worker: self.labels.worker.clone(),
            role: self.labels.role.clone(),
            direction: direction.as_str(),
        };
        self.metrics.kv_bytes.get_or_create(&labels).inc_by(bytes);
        if ok {
            self.metrics
                .kv_duration
                .get_or_create(&labels)
                .observe(elapsed.as_secs_f64());
        }
        let outcome = TransferOutcomeLabels {
            worker: labels.worker,
            role: labels.role,
            direction: labels.direction,
            transport,
            outcome: if ok { "ok" } else { "failed" },
        };
        self.metrics.kv_transfers.get_or_create(&outcome).inc();
    }

    /// Transfers counted under `direction`, `transport` and `ok` so far (for tests).
    pub fn transfers(&self, direction: KvDirection, transport: &'static str, ok: bool) -> u64 {
        let outcome = TransferOutcomeLabels {
            worker: self.labels.worker.clone(),
            role: self.labels.role.clone(),
            direction: direction.as_str(),
            transport,
            outcome: if ok { "ok" } else { "failed" },
        };
        self.metrics.kv_transfers.get_or_create(&outcome).get()
    }
}

/// Encodes the workers' latest samples.
struct SampledWorkers(Samples);

impl std::fmt::Debug for SampledWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampledWorkers").finish_non_exhaustive()
    }
}

/// A sampled series: its name (after `cleave_`), help, and how to read it from a sample.
struct Sampled {
    name: &'static str,
    help: &'static str,
    counter: bool,
    read: fn(&WorkerSample) -> f64,
}

const SAMPLED: &[Sampled] = &[
    Sampled {
        name: "worker_running_sequences",
        help: "Sequences in the running batch.",
        counter: false,
        read: |s| s.running as f64,
    },
    Sampled {
        name: "worker_waiting_sequences",
        help: "Sequences waiting to be scheduled.",
        counter: false,
        read: |s| s.waiting as f64,
    },
    Sampled {
        name: "worker_kv_blocks_used",
        help: "KV cache blocks in use.",
        counter: false,
        read: |s| s.kv_blocks_used as f64,
    },
    Sampled {
        name: "worker_kv_blocks_free",
        help: "KV cache blocks free (idle cached blocks count as free).",
        counter: false,
        read: |s| s.kv_blocks_free as f64,
    },
    Sampled {
        name: "worker_kv_blocks_fenced",
        help: "KV cache blocks held back from reuse until a peer that may still write them directly is done.",
        counter: false,
        read: |s| s.kv_blocks_fenced as f64,
    },
    Sampled {
        name: "worker_queued_prefill_tokens",
        help: "Prompt tokens of waiting and partly prefilled sequences not yet computed.",
        counter: false,
        read: |s| s.queued_prefill_tokens as f64,
    },
    Sampled {
        name: "worker_prefix_cache_hit_ratio",
        help: "Prompt blocks found in the prefix cache over blocks looked up, since the engine started.",
        counter: false,
        read: |s| {
            if s.prefix_cache_queried_blocks == 0 {
                0.0
            } else {
                s.prefix_cache_hit_blocks as f64 / s.prefix_cache_queried_blocks as f64
            }
        },
    },
    Sampled {
        name: "worker_remote_prefills_awaiting",
        help: "Sequences waiting for their prompt KV from a prefill worker.",
        counter: false,
        read: |s| s.remote_prefills_awaiting as f64,
    },
    Sampled {
        name: "worker_preemptions",
        help: "Sequences preempted for lack of KV blocks.",
        counter: true,
        read: |s| s.preemptions as f64,
    },
    Sampled {
        name: "worker_prefix_cache_queried_blocks",
        help: "Full prompt blocks looked up in the prefix cache.",
        counter: true,
        read: |s| s.prefix_cache_queried_blocks as f64,
    },
    Sampled {
        name: "worker_prefix_cache_hit_blocks",
        help: "Full prompt blocks found in the prefix cache.",
        counter: true,
        read: |s| s.prefix_cache_hit_blocks as f64,
    },
    Sampled {
        name: "worker_remote_prefills_completed",
        help: "Remote prefills whose KV arrived and was used.",
        counter: true,
        read: |s| s.remote_prefills_completed as f64,
    },
    Sampled {
        name: "worker_remote_prefills_fell_back",
        help: "Remote prefills that failed; the prompt was prefilled locally.",
        counter: true,
        read: |s| s.remote_prefills_fell_back as f64,
    },
];

impl Collector for SampledWorkers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        if samples.is_empty() {
            return Ok(());
        }
        for series in SAMPLED {
            let kind = if series.counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            };
            let mut family = encoder.encode_descriptor(series.name, series.help, None, kind)?;
            for (labels, sample) in &samples {
                let value = (series.read)(sample);
                let metric = family.encode_family(labels)?;
                if series.counter {
                    ConstCounter::new(value).encode(metric)?;
                } else {
                    ConstGauge::new(value).encode(metric)?;
                }
            }
        }
        Ok(())
    }
}
