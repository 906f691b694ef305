//! Turning what the user typed after `--model` into something the engine can load: a registry
//! name (pulled on first use when allowed), a `.gguf` file, a Hugging Face model directory, or
//! `synthetic:<shape>` (random weights the caller builds; nothing is read here).
//!
//! Rules, in order: `synthetic:` prefix → synthetic; anything that looks like a path (contains a
//! path separator, starts with `.` or `~`, or ends in `.gguf`) → path; a known model name →
//! registry; an existing file or directory → path; otherwise an unknown-name error listing the
//! known names. So a registry name wins over a same-named directory in the working directory
//! (write `./name` to mean the directory). Invariant: a resolved model's files exist and have the
//! shape its kind needs (GGUF magic; config, tokenizer and every weight shard), so loaders fail
//! only on content. Cost: a few `stat`s, a 4-byte read, and for sharded checkpoints one small
//! JSON read; for registry names see `pull`.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cache::CacheDir;
use crate::error::{ModelStoreError, Result};
use crate::manifest::{CacheState, check_cached};
use crate::progress::PullProgress;
use crate::pull::pull_from_env_index;
use crate::registry::{self, KNOWN_MODELS, ModelEntry};

/// Prefix of specs that ask for random weights of a named shape.
pub const SYNTHETIC_PREFIX: &str = "synthetic:";

/// Pulls a registry model into the cache; `None` where pulling is not allowed.
type Fetch<'a> = Option<&'a dyn Fn(&ModelEntry) -> Result<PathBuf>>;

const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const GGUF_MAGIC: &[u8; 4] = b"GGUF";

/// Where a model's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A GGUF file (weights, tokenizer and chat template in one).
    Gguf(PathBuf),
    /// A Hugging Face checkpoint directory: config.json, tokenizer.json, safetensors weights.
    HfDir(PathBuf),
    /// Random weights of the named shape, e.g. `synthetic:llama-1b`; the caller interprets it.
    Synthetic(String),
}

/// A model spec, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModel {
    /// Display name: the registry name, the file stem or directory name, or the whole
    /// `synthetic:` spec.
    pub name: String,
    pub source: ModelSource,
}

/// Resolves `spec` (see the module docs for the rules). With `pull_if_missing`, a registry model
/// that is not cached is pulled (progress goes to `progress`); without, that is an error naming
/// the `cleave model pull` command.
pub fn resolve(
    spec: &str,
    cache: &CacheDir,
    pull_if_missing: bool,
    progress: &dyn PullProgress,
) -> Result<ResolvedModel> {
    let fetch = |entry: &ModelEntry| pull_from_env_index(entry, cache, progress);
    let fetch: Fetch<'_> = if pull_if_missing { Some(&fetch) } else { None };
    resolve_with(spec, KNOWN_MODELS, cache, progress, fetch)
}

/// `resolve` with an explicit model table and pull function (tests use both).
pub(crate) fn resolve_with(
    spec: &str,
    models: &[ModelEntry],
    cache: &CacheDir,
    progress: &dyn PullProgress,
    fetch: Fetch<'_>,
) -> Result<ResolvedModel> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(ModelStoreError::EmptySpec);
    }
    if let Some(shape) = spec.strip_prefix(SYNTHETIC_PREFIX) {
        if shape.trim().is_empty() {
            return Err(ModelStoreError::EmptySyntheticShape { spec: spec.to_owned() });
        }
        return Ok(ResolvedModel {
            name: spec.to_owned(),
            source: ModelSource::Synthetic(shape.trim().to_owned()),
        });
    }
    if looks_like_path(spec) {
        return resolve_path(Path::new(spec));
    }
    if let Some(entry) = models.iter().find(|entry| entry.name == spec) {
        return resolve_registered(entry, cache, progress, fetch);
    }
    if Path::new(spec).exists() {
        return resolve_path(Path::new(spec));
    }
    Err(registry::unknown_model(models, spec))
}

fn looks_like_path(spec: &str) -> bool {
    spec.contains('/')
        || spec.contains(std::path::MAIN_SEPARATOR)
        || spec.starts_with('.')
        || spec.starts_with('~')
        || has_extension(Path::new(spec), "gguf")
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
}

fn resolve_registered(
    entry: &ModelEntry,
    cache: &CacheDir,
    progress: &dyn PullProgress,
    fetch: Fetch<'_>,
) -> Result<ResolvedModel> {
    let path = match fetch {
        Some(fetch) => fetch(entry)?,
        None => {
            let path = cache.model_file(entry);
            match check_cached(&path, &entry.gguf, progress)? {
                CacheState::Verified => path,
                CacheState::Missing => {
                    return Err(ModelStoreError::NotCached {
                        name: entry.name.to_owned(),
                        path,
                    });
                }
                CacheState::Invalid(reason) => {
                    return Err(ModelStoreError::InvalidCachedFile {
                        name: entry.name.to_owned(),
                        path,
                        reason,
                    });
                }
            }
        }
    };
    Ok(ResolvedModel {
        name: entry.name.to_owned(),
        source: ModelSource::Gguf(path),
    })
}

fn resolve_path(path: &Path) -> Result<ResolvedModel> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ModelStoreError::SpecNotFound {
            path: path.to_path_buf(),
        },
        _ => ModelStoreError::io(path, "inspect model path", e),
    })?;
    let absolute = fs::canonicalize(path).map_err(|e| ModelStoreError::io(path, "resolve model path", e))?;
    if meta.is_dir() {
        check_hf_dir(&absolute)?;
        return Ok(ResolvedModel {
            name: display_name(&absolute, Path::file_name),
            source: ModelSource::HfDir(absolute),
        });
    }
    if meta.is_file() && has_extension(path, "gguf") {
        check_gguf_magic(&absolute)?;
        return Ok(ResolvedModel {
            name: display_name(&absolute, Path::file_stem),
            source: ModelSource::Gguf(absolute),
        });
    }
    Err(ModelStoreError::NotAModel {
        path: path.to_path_buf(),
    })
}

fn display_name(path: &Path, part: fn(&Path) -> Option<&std::ffi::OsStr>) -> String {
    part(path).map_or_else(
        || path.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

fn check_gguf_magic(path: &Path) -> Result<()> {
    let mut magic = Vec::with_capacity(4);
    File::open(path)
        .and_then(|file| file.take(4).read_to_end(&mut magic))
        .map_err(|e| ModelStoreError::io(path, "read GGUF header", e))?;
    if magic != GGUF_MAGIC {
        return Err(ModelStoreError::NotGguf {
            path: path.to_path_buf(),
            found: magic.escape_ascii().to_string(),
        });
    }
    Ok(())
}

/// Checks a Hugging Face checkpoint directory has everything a loader needs, naming every
/// missing file at once.
fn check_hf_dir(dir: &Path) -> Result<()> {
    let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|name| !dir.join(name).is_file())
        .map(str::to_owned)
        .collect();
    let index = dir.join(SAFETENSORS_INDEX);
    if index.is_file() {
        missing.extend(missing_shards(dir, &index)?);
    } else if !has_safetensors(dir)? {
        missing.push(format!("weights (*.safetensors or {SAFETENSORS_INDEX})"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ModelStoreError::IncompleteHfDir {
            dir: dir.to_path_buf(),
            missing: missing.join(", "),
        })
    }
}

#[derive(Deserialize)]
struct SafetensorsIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// Shards named by the index's `weight_map` that are not in `dir`.
fn missing_shards(dir: &Path, index: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(index).map_err(|e| ModelStoreError::io(index, "read", e))?;
    let parsed: SafetensorsIndex =
        serde_json::from_slice(&bytes).map_err(|e| ModelStoreError::BadSafetensorsIndex {
            path: index.to_path_buf(),
            reason: e.to_string(),
        })?;
    let shards: BTreeSet<&str> = parsed.weight_map.values().map(String::as_str).collect();
    if shards.is_empty() {
        return Err(ModelStoreError::BadSafetensorsIndex {
            path: index.to_path_buf(),
            reason: "weight_map lists no files".to_owned(),
        });
    }
    Ok(shards
        .into_iter()
        .filter(|shard| !dir.join(shard).is_file())
        .map(|shard| format!("{shard} (listed in {SAFETENSORS_INDEX})"))
        .collect())
}

fn has_safetensors(dir: &Path) -> Result<bool> {
    let entries = fs::read_dir(dir).map_err(|e| ModelStoreError::io(dir, "list directory", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ModelStoreError::io(dir, "list directory", e))?;
        let path = entry.path();
        if has_extension(&path, "safetensors") && path.is_file() {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests;
