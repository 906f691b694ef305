//! A simulated cleave worker: the internal `cleave.v1.Worker` gRPC API backed by a timing model instead of a model.
//!
//! It streams tokens at configured times (fixed TTFT + per-uncached-token prefill, per-step decode latency that can
//! grow with the batch), keeps a simulated prefix cache keyed by the same chained block hashes as the engine
//! (`cleave_tokens::BlockHasher`, seed 0), so `usage.cached_tokens`, KV events, snapshots and load reports behave
//! like a real worker's. Routers, planners and load tests can run many of these on one machine.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! cleave_simworker::serve(cleave_simworker::SimConfig::default(), listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

mod config;
mod kv;
mod sequence;
mod service;
mod state;

pub use config::{SimConfig, SimConfigError, TokenPattern};
pub use service::{ServeError, SimStats, SimWorker, serve, serve_worker};
