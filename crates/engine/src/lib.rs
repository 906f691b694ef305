//! cleave's inference engine: Llama-family models on a CPU backend, a paged KV cache with prefix reuse, and a
//! continuous-batching scheduler owned by one engine thread.

pub mod backend;
pub mod bench;
pub mod config;
pub mod cpu;
pub mod cuda;
pub mod device;
pub mod engine;
pub mod error;
pub mod kv;
pub mod loader;
pub mod model;
pub mod parallel;
pub mod sampling;
pub mod scheduler;
pub mod weights;

pub use backend::{Backend, CpuBackend, KvBlockReader, KvLinkEndpoint, LandedCopy, PeerKv};
pub use config::ModelConfig;
pub use device::{Device, start_engine};
pub use engine::{Engine, EngineConfig, Export, ExportSpec, GenerationStream, KvSnapshot};
pub use error::{EngineError, ErrorCategory};
pub use loader::{ModelFiles, load_model};
pub use model::{LlamaModel, SeqChunk};
