//! `cleave model pull|list`, and turning a `--model` spec into a loaded engine for the other commands.
//!
//! Invariant: named models are only ever read from the verified cache (the model store checks them); a missing
//! named model is pulled with a progress bar on stderr. Cost: resolving is a few `stat`s once cached; loading the
//! default model takes about half a second.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use cleave_engine::Device;
use cleave_engine::{Engine, EngineConfig, EngineError, LlamaModel, ModelConfig, ModelFiles, load_model};
use cleave_modelstore::{CacheDir, ModelSource, find_cached, list, pull, resolve};
use cleave_tokens::Tokenizer;

use crate::error::CliError;
use crate::progress::BarProgress;

/// Where a resolved model's files are, in the form the engine loads.
#[derive(Debug)]
pub enum ModelPath {
    Gguf(PathBuf),
    HfDir(PathBuf),
    /// Random bf16 weights of a named shape, built on the GPU (`synthetic:llama-3.1-8b`), served with the default
    /// model's tokenizer (its GGUF here): a stand-in for a large model in benchmarks, no download.
    Synthetic {
        shape: String,
        tokenizer: PathBuf,
    },
}

impl ModelPath {
    /// The files to load: a synthetic model's are its tokenizer's (see [`load`] for the weights).
    pub fn files(&self) -> ModelFiles<'_> {
        match self {
            ModelPath::Gguf(path) | ModelPath::Synthetic { tokenizer: path, .. } => ModelFiles::Gguf(path),
            ModelPath::HfDir(dir) => ModelFiles::HfDir(dir),
        }
    }
}

/// What a router needs of the model at `path`: its tokenizer and limits.
pub fn router_model(name: &str, path: &ModelPath) -> Result<cleave_router::RouterModel, CliError> {
    Ok(match path {
        ModelPath::Gguf(file) => cleave_router::RouterModel::from_gguf(name, file)?,
        ModelPath::HfDir(dir) => cleave_router::RouterModel::from_hf_dir(name, dir)?,
        ModelPath::Synthetic { shape, tokenizer } => {
            let mut router_model = cleave_router::RouterModel::from_gguf(name, tokenizer)?;
            let config = synthetic_config(shape, &router_model.tokenizer)?;
            router_model.limits.max_context = config.max_context;
            router_model.limits.vocab_size = config.vocab_size;
            router_model
        }
    })
}

/// A model ready to start an engine on.
pub enum Loaded {
    Weights(Box<LlamaModel>, Tokenizer),
    /// A synthetic shape (vocabulary resized to the tokenizer's) and its tokenizer.
    Synthetic(ModelConfig, Tokenizer),
}

/// Loads `path`: the weights, or a synthetic model's shape and tokenizer.
pub fn load(path: &ModelPath) -> Result<Loaded, CliError> {
    match path {
        ModelPath::Synthetic { shape, tokenizer } => {
            let tokenizer = cleave_router::RouterModel::from_gguf(shape, tokenizer)?.tokenizer;
            Ok(Loaded::Synthetic(synthetic_config(shape, &tokenizer)?, tokenizer))
        }
        real => {
            let (model, tokenizer) = load_model(real.files())?;
            Ok(Loaded::Weights(Box::new(model), tokenizer))
        }
    }
}

/// `shape`'s configuration with the vocabulary of the tokenizer it is served with.
pub fn synthetic_config(shape: &str, tokenizer: &Tokenizer) -> Result<ModelConfig, CliError> {
    let mut config = cleave_engine::cuda::synthetic_config(shape)?;
    config.vocab_size = tokenizer.vocab_size();
    Ok(config)
}

/// Starts an engine on a synthetic model: random weights built on the GPU `device` names.
pub fn start_synthetic(
    config: ModelConfig,
    tokenizer: Tokenizer,
    engine: EngineConfig,
    device: Device,
) -> Result<Engine, CliError> {
    let Device::Cuda(ordinal) = device.resolve() else {
        return Err(CliError::Engine(EngineError::invalid(
            "device",
            "synthetic models are built on a GPU; use --device cuda",
        )));
    };
    let cache = kernel_cache_dir();
    let options = cleave_engine::cuda::CudaOptions {
        ordinal,
        kv_cache_bytes: engine.kv_cache_bytes,
        block_size: engine.scheduler.block_size,
        kernel_cache: cache.as_deref(),
    };
    let backend = cleave_engine::cuda::CudaBackend::synthetic(config, 0x5eed, &options).map_err(EngineError::from)?;
    Ok(Engine::start_backend(
        Box::new(backend),
        Arc::new(tokenizer),
        engine.scheduler,
    )?)
}

/// A GGUF file whose tokenizer (and chat template) a synthetic model is served with, instead of the default
/// model's: a tokenizer-only GGUF (metadata, no tensors) is enough, for machines without the model cache.
pub const SYNTHETIC_TOKENIZER_ENV: &str = "CLEAVE_SYNTHETIC_TOKENIZER";

/// Resolves `spec`, pulling a named model that is not cached yet.
pub fn locate(spec: &str) -> Result<(String, ModelPath), CliError> {
    let cache = CacheDir::from_env()?;
    let resolved = resolve(spec, &cache, true, &BarProgress::default())?;
    let path = match resolved.source {
        ModelSource::Gguf(path) => ModelPath::Gguf(path),
        ModelSource::HfDir(dir) => ModelPath::HfDir(dir),
        ModelSource::Synthetic(shape) => {
            cleave_engine::cuda::synthetic_config(&shape)?;
            let tokenizer = match std::env::var_os(SYNTHETIC_TOKENIZER_ENV) {
                Some(path) => PathBuf::from(path),
                None => {
                    match resolve(cleave_modelstore::DEFAULT_MODEL, &cache, true, &BarProgress::default())?.source {
                        ModelSource::Gguf(path) => path,
                        _ => return Err(CliError::SyntheticModel { spec: spec.to_string() }),
                    }
                }
            };
            ModelPath::Synthetic { shape, tokenizer }
        }
    };
    Ok((resolved.name, path))
}

/// Loads the model at `path` and starts an engine on `device` with the default configuration.
pub fn start_engine(path: &ModelPath, device: Device) -> Result<Engine, CliError> {
    start(path, EngineConfig::default(), device)
}

/// Loads the model at `path` and starts an engine on `device` with `config`.
pub fn start(path: &ModelPath, config: EngineConfig, device: Device) -> Result<Engine, CliError> {
    match load(path)? {
        Loaded::Weights(model, tokenizer) => start_engine_with(*model, tokenizer, config, device),
        Loaded::Synthetic(shape, tokenizer) => start_synthetic(shape, tokenizer, config, device),
    }
}

/// Starts an engine on `device` (compiled GPU kernels are cached next to the models).
pub fn start_engine_with(
    model: LlamaModel,
    tokenizer: Tokenizer,
    config: EngineConfig,
    device: Device,
) -> Result<Engine, CliError> {
    let cache = kernel_cache_dir();
    Ok(cleave_engine::start_engine(
        model,
        Arc::new(tokenizer),
        config,
        device,
        cache.as_deref(),
    )?)
}

/// Where compiled CUDA kernels are kept ($CLEAVE_HOME/kernels, else ~/.cache/cleave/kernels).
pub fn kernel_cache_dir() -> Option<std::path::PathBuf> {
    CacheDir::from_env().ok().map(|c| c.root().join("kernels"))
}

pub fn pull_model(name: &str) -> Result<(), CliError> {
    let cache = CacheDir::from_env()?;
    let path = pull(name, &cache, &BarProgress::default())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{name}: {}", path.display()).map_err(CliError::Stdout)
}

pub fn list_models() -> Result<(), CliError> {
    let cache = CacheDir::from_env()?;
    let progress = BarProgress::default();
    let mut rows = vec![("NAME".to_string(), "CACHED".to_string(), "SUMMARY")];
    for entry in list() {
        let cached = find_cached(entry, &cache, &progress)?
            .map_or_else(|| "not pulled".to_string(), |p| p.display().to_string());
        rows.push((entry.name.to_string(), cached, entry.summary));
    }
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let path_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (name, cached, summary) in rows {
        writeln!(out, "{name:name_width$}  {cached:path_width$}  {summary}").map_err(CliError::Stdout)?;
    }
    Ok(())
}
