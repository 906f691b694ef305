//! `cleave model pull|list`, and turning a `--model` spec into a loaded engine for the other commands.
//!
//! Invariant: named models are only ever read from the verified cache (the model store checks them); a missing
//! named model is pulled with a progress bar on stderr. Cost: resolving is a few `stat`s once cached; loading the
//! default model takes about half a second.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use cleave_engine::Device;
use cleave_engine::{Engine, EngineConfig, LlamaModel, ModelFiles, load_model};
use cleave_modelstore::{CacheDir, ModelSource, find_cached, list, pull, resolve};
use cleave_tokens::Tokenizer;

use crate::error::CliError;
use crate::progress::BarProgress;

/// Where a resolved model's files are, in the form the engine loads.
#[derive(Debug)]
pub enum ModelPath {
    Gguf(PathBuf),
    HfDir(PathBuf),
}

impl ModelPath {
    pub fn files(&self) -> ModelFiles<'_> {
        match self {
            ModelPath::Gguf(path) => ModelFiles::Gguf(path),
            ModelPath::HfDir(dir) => ModelFiles::HfDir(dir),
        }
    }
}

/// Resolves `spec`, pulling a named model that is not cached yet.
pub fn locate(spec: &str) -> Result<(String, ModelPath), CliError> {
    let cache = CacheDir::from_env()?;
    let resolved = resolve(spec, &cache, true, &BarProgress::default())?;
    let path = match resolved.source {
        ModelSource::Gguf(path) => ModelPath::Gguf(path),
        ModelSource::HfDir(dir) => ModelPath::HfDir(dir),
        ModelSource::Synthetic(_) => {
            return Err(CliError::SyntheticModel { spec: spec.to_string() });
        }
    };
    Ok((resolved.name, path))
}

/// Loads the model at `path` and starts an engine on `device` with the default configuration.
pub fn start_engine(path: &ModelPath, device: Device) -> Result<Engine, CliError> {
    let (model, tokenizer): (LlamaModel, Tokenizer) = load_model(path.files())?;
    start_engine_with(model, tokenizer, EngineConfig::default(), device)
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
