//! Choosing the compute device at run time: the same binary runs on the CPU backend everywhere and on the CUDA
//! backend where a driver and a GPU are present. `auto` takes the GPU when there is one.

use std::path::Path;
use std::sync::Arc;

use cleave_tokens::Tokenizer;

use crate::cuda::{CudaBackend, CudaOptions, cuda_available};
use crate::engine::{Engine, EngineConfig};
use crate::error::EngineError;
use crate::model::LlamaModel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cpu,
    /// GPU `ordinal`.
    Cuda(usize),
    /// The first GPU if there is one, else the CPU.
    Auto,
}

impl Device {
    /// The device `self` resolves to on this machine.
    pub fn resolve(self) -> Device {
        match self {
            Device::Auto if cuda_available() => Device::Cuda(0),
            Device::Auto => Device::Cpu,
            other => other,
        }
    }
}

/// Starts an engine for `model` on `device`; the KV pool takes `config.kv_cache_bytes` on that device.
pub fn start_engine(
    model: LlamaModel,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    device: Device,
    kernel_cache: Option<&Path>,
) -> Result<Engine, EngineError> {
    match device.resolve() {
        Device::Cuda(ordinal) => {
            let options = CudaOptions {
                ordinal,
                kv_cache_bytes: config.kv_cache_bytes,
                block_size: config.scheduler.block_size,
                kernel_cache,
            };
            let backend = CudaBackend::from_model(model, &options)?;
            tracing::info!(device = backend.device_name(), "engine on CUDA");
            Engine::start_backend(Box::new(backend), tokenizer, config.scheduler)
        }
        _ => Engine::start(model, tokenizer, config),
    }
}
