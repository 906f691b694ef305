//! cleave's router as a library: where each request should run.
//!
//! - [`PrefixIndex`]: which worker holds which prefix blocks, built from the workers' numbered KV events and
//!   snapshots (no broker; a restarted router rebuilds it from snapshots plus event replay).
//! - [`policy`]: the routing decision, `cost = load − overlap credit`, in tokens.

mod index;
pub mod policy;

pub use index::{EventGap, PrefixIndex, WorkerIdx};
