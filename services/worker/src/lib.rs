//! A cleave worker: one engine replica behind the internal `cleave.v1.Worker` gRPC service.
//!
//! `Generate` streams a sequence's tokens (the worker owns the sequence); dropping the call aborts it and frees
//! its KV blocks. `SubscribeKvEvents`/`KvSnapshot` expose the prefix cache to routers, resumable by sequence number;
//! `SubscribeLoad` pushes load reports. Remote prefill (`Prefill`, and `Generate` with `remote_prefill`) arrives
//! with the KV transfer path and is refused with `UNIMPLEMENTED` until then.

mod convert;
mod service;

pub use convert::{response, status};
pub use service::{WorkerService, serve};
