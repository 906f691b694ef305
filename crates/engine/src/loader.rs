//! Loading a model and its tokenizer from either checkpoint format, the one entry point services use.

use std::path::Path;

use cleave_tokens::Tokenizer;

use crate::error::EngineError;
use crate::model::LlamaModel;

/// Where a model's files are.
#[derive(Debug, Clone, Copy)]
pub enum ModelFiles<'a> {
    /// A single GGUF file holding weights, tokenizer and chat template.
    Gguf(&'a Path),
    /// A Hugging Face directory: config.json, *.safetensors, tokenizer.json (+ tokenizer_config.json).
    HfDir(&'a Path),
}

/// Loads the model and its tokenizer, checking that they agree on the vocabulary.
pub fn load_model(files: ModelFiles<'_>) -> Result<(LlamaModel, Tokenizer), EngineError> {
    let (model, tokenizer, path) = match files {
        ModelFiles::Gguf(path) => {
            let (file, model) = LlamaModel::load_gguf(path)?;
            (model, Tokenizer::from_gguf(&file)?, path)
        }
        ModelFiles::HfDir(dir) => (LlamaModel::load_hf_dir(dir)?, Tokenizer::from_hf_dir(dir)?, dir),
    };
    if tokenizer.vocab_size() > model.config().vocab_size {
        return Err(EngineError::model(
            path,
            format!(
                "the tokenizer has {} tokens but the model's vocabulary is {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            ),
        ));
    }
    Ok((model, tokenizer))
}
