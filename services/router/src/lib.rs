//! cleave's router as a library: where each request should run.
//!
//! - [`PrefixIndex`]: which worker holds which prefix blocks, built from the workers' numbered KV events and
//!   snapshots (no broker; a restarted router rebuilds it from snapshots plus event replay).
//! - [`policy`]: the routing decision, `cost = load − overlap credit`, in tokens, and when to prefill remotely.
//! - [`WorkerPool`]: the workers and their roles, their load and the KV events that feed the index.
//! - [`RouterService`]: the public `cleave.v1.Generation` API with health and reflection ([`serve`]).

mod index;
mod model;
pub mod policy;
mod pool;
mod server;

pub use cleave_cluster::registry::WorkerRole;
pub use index::{EventGap, PrefixIndex, WorkerIdx};
pub use model::{ModelInfoError, RouterModel};
pub use pool::{Route, WorkerEndpoint, WorkerPool};
pub use server::{RouterService, ServeError, grpc_url, serve};
