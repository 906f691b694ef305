//! `cleave model pull|list`, and turning a `--model` spec into a loaded engine for the other commands.
//!
//! Invariant: named models are only ever read from the verified cache (the model store checks them); a missing
//! named model is pulled with a progress bar on stderr. Cost: resolving is a few `stat`s once cached; loading the
//! default model takes about half a second.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

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

/// Loads the model at `path` and starts an engine on it with the default configuration.
pub fn start_engine(path: &ModelPath) -> Result<Engine, CliError> {
    let (model, tokenizer): (LlamaModel, Tokenizer) = load_model(path.files())?;
    Ok(Engine::start(model, Arc::new(tokenizer), EngineConfig::default())?)
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
