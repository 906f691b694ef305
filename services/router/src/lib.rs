//! cleave's router as a library: where each request should run.
//!
//! - [`PrefixIndex`]: which worker holds which prefix blocks, built from the workers' numbered KV events and
//!   snapshots (no broker; a restarted router rebuilds it from snapshots plus event replay).
//! - [`policy`]: the routing decision, `cost = load − overlap credit`, in tokens, and when to prefill remotely.
//! - [`WorkerPool`]: the workers and their roles, their load and the KV events that feed the index.
//! - [`Frontend`]: the request path both public APIs share — validate, admit ([`AdmissionConfig`]), route, forward
//!   under the request's deadline.
//! - [`RouterService`]: the public `cleave.v1.Generation` API with health and reflection ([`serve`]).
//! - [`http`]: the OpenAI-compatible HTTP API on the same frontend ([`http::serve_http`]).

mod admission;
pub mod auth;
mod error;
mod frontend;
pub mod http;
mod index;
mod model;
pub mod policy;
mod pool;
mod server;

pub use admission::AdmissionConfig;
pub use cleave_cluster::registry::WorkerRole;
pub use error::RouterError;
pub use frontend::{Frontend, Generation, ResponseStream};
pub use index::{EventGap, PrefixIndex, WorkerIdx};
pub use model::{ModelInfoError, RouterModel};
pub use pool::{PendingFirstToken, Route, RouteError, WorkerEndpoint, WorkerPool};
pub use server::{RouterService, ServeError, ServeOptions, grpc_deadline, grpc_url, serve, serve_with};
