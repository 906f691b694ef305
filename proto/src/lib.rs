//! cleave's gRPC protocol, compiled once from `proto/cleave/v1`: the public `Generation` service (served by the
//! router) and the internal `Worker` service. Every service and client uses these types; nothing copies them.

mod convert;

pub use convert::sampling_spec;

/// Generated code for package `cleave.v1`.
#[allow(missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("cleave.v1");

    /// Encoded file descriptors of every message and service, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("cleave_v1_descriptor");
}
