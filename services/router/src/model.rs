//! What the router needs of a model without loading its weights: name, tokenizer (with chat template) and limits.

use std::path::{Path, PathBuf};

use cleave_gguf::GgufFile;
use cleave_sampling::ModelLimits;
use cleave_tokens::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum ModelInfoError {
    #[error(transparent)]
    Gguf(#[from] cleave_gguf::GgufError),
    #[error(transparent)]
    Tokenizer(#[from] cleave_tokens::TokenizerError),
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
}

#[derive(Debug)]
pub struct RouterModel {
    pub name: String,
    pub tokenizer: Tokenizer,
    pub limits: ModelLimits,
}

impl RouterModel {
    /// From a GGUF file: the tokenizer and the `<arch>.context_length` / vocabulary from its metadata.
    pub fn from_gguf(name: &str, path: &Path) -> Result<Self, ModelInfoError> {
        let file = GgufFile::open(path)?;
        let arch = file.architecture()?.to_string();
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let max_context = file.get_u64(&format!("{arch}.context_length"))? as usize;
        let vocab_size = match file.get(&format!("{arch}.vocab_size")) {
            Some(_) => file.get_u64(&format!("{arch}.vocab_size"))? as usize,
            None => tokenizer.vocab_size(),
        };
        Ok(RouterModel {
            name: name.to_string(),
            tokenizer,
            limits: ModelLimits {
                max_context,
                vocab_size,
            },
        })
    }

    /// From a Hugging Face directory: tokenizer.json and config.json's `max_position_embeddings` / `vocab_size`.
    pub fn from_hf_dir(name: &str, dir: &Path) -> Result<Self, ModelInfoError> {
        let tokenizer = Tokenizer::from_hf_dir(dir)?;
        let path = dir.join("config.json");
        let bad = |message: String| ModelInfoError::Config {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let field = |key: &str| config.get(key).and_then(serde_json::Value::as_u64).map(|v| v as usize);
        let max_context =
            field("max_position_embeddings").ok_or_else(|| bad("missing max_position_embeddings".into()))?;
        let vocab_size = field("vocab_size").unwrap_or(tokenizer.vocab_size());
        Ok(RouterModel {
            name: name.to_string(),
            tokenizer,
            limits: ModelLimits {
                max_context,
                vocab_size,
            },
        })
    }
}
