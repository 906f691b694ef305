//! The one error type of this crate: every failure names the file, metadata key or field that is wrong.
//!
//! Invariant: building, encoding, decoding and rendering never panic on bad input; they return one of
//! these. Errors from libraries (`tokenizers`, `minijinja`, `serde_json`, I/O) are kept as `#[source]`.

use std::path::PathBuf;

/// A boxed error from the `tokenizers` crate (its own error type is this alias).
pub type TokenizersError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong while building or using a [`crate::Tokenizer`].
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A GGUF metadata key is absent or of the wrong type (the error names the file and the key).
    #[error(transparent)]
    Metadata(#[from] cleave_gguf::GgufError),

    /// A GGUF metadata key the tokenizer model needs is absent.
    #[error("GGUF metadata key `{key}` is missing; the tokenizer model needs it")]
    MissingMetadata { key: &'static str },

    /// A GGUF metadata key holds a value this crate cannot use.
    #[error("GGUF metadata key `{key}` is invalid: {reason}")]
    InvalidMetadata { key: &'static str, reason: String },

    /// `tokenizer.ggml.model` names a tokenizer this crate does not build.
    #[error("unsupported tokenizer model `{model}` (tokenizer.ggml.model): {reason}")]
    UnsupportedModel { model: String, reason: String },

    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not know.
    #[error(
        "unknown pre-tokenizer `{pre}` (tokenizer.ggml.pre); known: {known}",
        known = crate::pretokenizer::KNOWN_PRE_TOKENIZERS.join(", ")
    )]
    UnknownPreTokenizer { pre: String },

    /// An entry of `tokenizer.ggml.merges` is not two tokens separated by one space.
    #[error("tokenizer.ggml.merges[{index}] = {merge:?} is malformed: expected two tokens separated by a space")]
    MalformedMerge { index: usize, merge: String },

    /// A per-token array does not have one entry per token.
    #[error("`{key}` has {found} entries but the vocabulary has {expected} tokens")]
    LengthMismatch {
        key: &'static str,
        expected: usize,
        found: usize,
    },

    /// A special token id (bos, eos, ...) points past the vocabulary.
    #[error("`{key}` = {id} is outside the vocabulary of {vocab_size} tokens")]
    SpecialTokenOutOfRange {
        key: &'static str,
        id: u64,
        vocab_size: usize,
    },

    /// The `tokenizers` crate rejected the model, pre-tokenizer or decoder assembled from the metadata.
    #[error("building the tokenizer failed at {stage}")]
    Build {
        stage: &'static str,
        #[source]
        source: TokenizersError,
    },

    /// A file of a Hugging Face model directory could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file of a Hugging Face model directory is not valid JSON.
    #[error("{} is not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// `tokenizer.json` could not be loaded by the `tokenizers` crate.
    #[error("cannot load {}", path.display())]
    TokenizerJson {
        path: PathBuf,
        #[source]
        source: TokenizersError,
    },

    /// A field of a Hugging Face config file has an unusable value.
    #[error("{}: field `{field}` is invalid: {reason}", path.display())]
    InvalidConfig {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },

    /// Encoding text failed inside the `tokenizers` crate.
    #[error("encoding failed")]
    Encode(#[source] TokenizersError),

    /// Decoding ids failed inside the `tokenizers` crate.
    #[error("decoding failed")]
    Decode(#[source] TokenizersError),

    /// A token id given to decode is not in the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    TokenIdOutOfRange { id: u32, vocab_size: usize },

    /// The model has no chat template, so chat messages cannot be turned into a prompt.
    #[error(
        "the model has no chat template (tokenizer.chat_template in GGUF, chat_template in tokenizer_config.json \
         or chat_template.jinja)"
    )]
    NoChatTemplate,

    /// The chat template does not parse.
    #[error("the chat template does not compile: {0}")]
    ChatTemplateSyntax(#[source] minijinja::Error),

    /// Rendering the chat template failed; `raise_exception(...)` in a template ends up here with its message.
    #[error("rendering the chat template failed: {0}")]
    ChatTemplateRender(#[source] minijinja::Error),
}
