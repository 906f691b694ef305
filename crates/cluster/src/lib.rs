//! cleave's cluster plumbing: the control-plane registry (etcd, or embedded in-process) and the transports that
//! move paged KV blocks from prefill workers to decode workers.

pub mod kv_transfer;
pub mod registry;
pub mod tls;
