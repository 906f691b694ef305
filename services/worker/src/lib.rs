//! A cleave worker: one engine replica behind the internal `cleave.v1.Worker` gRPC service.
//!
//! `Generate` streams a sequence's tokens (the worker owns the sequence); dropping the call aborts it and frees
//! its KV blocks. `SubscribeKvEvents`/`KvSnapshot` expose the prefix cache to routers, resumable by sequence number;
//! `SubscribeLoad` pushes load reports.
//!
//! Disaggregated prefill: a decode worker given `remote_prefill` admits the request waiting for KV, calls the
//! prefill worker's `Prefill` naming its KV listener and destination blocks ([`remote_prefill`]), and receives the
//! layers into those blocks ([`kv_inbox`]); the prefill worker computes and streams them layer by layer
//! ([`prefill`]) — over TCP, or between GPUs of one host by writing them straight into the decode worker's pool
//! (CUDA IPC), or between GPUs anywhere over an NCCL link per pair ([`nccl_links`]). Any failure on the way prefills the prompt locally.
//!
//! Metrics ([`metrics`]): the engine's scheduler is sampled on each scrape; KV transfers are counted as they end.

mod convert;
pub mod kv_inbox;
pub mod metrics;
pub mod nccl_links;
mod peer_pools;
mod prefill;
pub mod remote_prefill;
mod service;

pub use convert::{response, status};
pub use kv_inbox::KvInbox;
pub use metrics::{EngineSampler, register_worker_metrics};
pub use nccl_links::NcclLinks;
pub use remote_prefill::DEFAULT_REMOTE_PREFILL_TIMEOUT;
pub use service::{WorkerService, serve, serve_with};
