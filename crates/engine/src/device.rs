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

/// What one rank of a GPU group holds: a tensor-parallel shard of every layer, one pipeline stage's layers, or the
/// whole model as one rank of a context-parallel group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuPart {
    Tensor(crate::parallel::TpRank),
    Pipeline(crate::model::PipelineStage),
    Context(crate::parallel::TpRank),
    /// A mixture-of-experts model's expert-parallel share: attention heads split, whole experts.
    Expert(crate::parallel::TpRank),
    /// Tensor rank `tensor` of pipeline stage `stage` (tensor parallelism inside the stages).
    TensorPipeline {
        tensor: crate::parallel::TpRank,
        stage: crate::model::PipelineStage,
    },
}

impl GpuPart {
    /// The model configuration the group's ranks agree on: a tensor or expert rank's share of the heads (and a
    /// tensor rank's of the MLP width), else the whole model's.
    pub fn agreed_config(&self, whole: &crate::config::ModelConfig) -> crate::config::ModelConfig {
        match self {
            GpuPart::Tensor(at) | GpuPart::TensorPipeline { tensor: at, .. } => {
                crate::parallel::TpRank::local_config(whole, at.world)
            }
            GpuPart::Expert(at) => crate::parallel::TpRank::local_expert_config(whole, at.world),
            GpuPart::Pipeline(_) | GpuPart::Context(_) => whole.clone(),
        }
    }
}

/// One rank of a GPU parallel group: its `part` of `model` (whole as loaded) on GPU `ordinal`,
/// with a KV pool of `config.kv_cache_bytes` (for its KV heads or layers when it holds a share of them). Joined to the other ranks' GPUs by
/// `ParallelBackend::lead` / `parallel::run_member`.
pub fn cuda_rank(
    model: LlamaModel,
    part: GpuPart,
    ordinal: usize,
    config: &EngineConfig,
    kernel_cache: Option<&Path>,
) -> Result<Box<dyn crate::parallel::GroupMember>, EngineError> {
    let options = CudaOptions {
        ordinal,
        kv_cache_bytes: config.kv_cache_bytes,
        block_size: config.scheduler.block_size,
        kernel_cache,
    };
    let backend = match &part {
        GpuPart::Tensor(at) => CudaBackend::from_model_shard(model, &options, *at)?,
        GpuPart::Pipeline(stage) => CudaBackend::from_model_stage(model, &options, stage.clone())?,
        GpuPart::Context(at) => CudaBackend::from_model(model, &options)?.context_parallel(*at),
        GpuPart::Expert(at) => CudaBackend::from_model_experts(model, &options, *at)?,
        GpuPart::TensorPipeline { tensor, stage } => {
            CudaBackend::from_model_stage_shard(model, &options, stage.clone(), *tensor)?
        }
    };
    tracing::info!(device = backend.device_name(), ?part, "parallel group rank on CUDA");
    Ok(Box::new(backend))
}
