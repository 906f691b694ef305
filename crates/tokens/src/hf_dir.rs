//! `Tokenizer::from_hf_dir`: the tokenizer of a Hugging Face model directory.
//!
//! Reads `tokenizer.json` (the `tokenizers` crate's own format), `tokenizer_config.json` (special token
//! strings, `add_bos_token`/`add_eos_token`, `chat_template`), `chat_template.jinja` (where transformers
//! ≥ 4.50 saves the template; it wins over the config's), and the stop ids of `generation_config.json` and
//! `config.json` (`eos_token_id`: an integer or a list). Only tokenizer.json is required.
//! Whether prompts get BOS/EOS: the config's explicit `add_bos_token`/`add_eos_token` when present, else
//! what tokenizer.json's post-processor adds (found by encoding a probe text with and without it).
//! Invariant: every JSON file is parsed fully before anything is built; a malformed field names its file.
//! Cost: parsing tokenizer.json dominates (~100 ms for a 150k vocabulary).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::chat::{ChatTemplate, SpecialTokenText};
use crate::error::TokenizerError;
use crate::regex_split::PreTokenizer;
use crate::tokenizer::{Inner, Parts, Tokenizer, disable_padding_and_truncation};

impl Tokenizer {
    /// The tokenizer of the Hugging Face model directory `dir`.
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let dir = dir.as_ref();
        let tokenizer_path = dir.join("tokenizer.json");
        let loaded =
            tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|source| TokenizerError::TokenizerJson {
                path: tokenizer_path.clone(),
                source,
            })?;
        let mut inner = with_fast_splits(loaded)?;
        disable_padding_and_truncation(&mut inner)?;
        let config = JsonFile::read_optional(dir.join("tokenizer_config.json"))?;
        let generation = JsonFile::read_optional(dir.join("generation_config.json"))?;
        let model_config = JsonFile::read_optional(dir.join("config.json"))?;

        let text_of = |field: &'static str| match &config {
            Some(config) => config.token_text(field),
            None => Ok(None),
        };
        let special = SpecialTokenText {
            bos: text_of("bos_token")?,
            eos: text_of("eos_token")?,
            unk: text_of("unk_token")?,
            pad: text_of("pad_token")?,
        };
        let id_of = |text: &Option<String>| text.as_deref().and_then(|text| inner.token_to_id(text));
        let bos_token_id = match id_of(&special.bos) {
            Some(id) => Some(id),
            None => match &model_config {
                Some(model_config) => model_config.token_ids("bos_token_id")?.first().copied(),
                None => None,
            },
        };

        let mut declared_eos_ids = Vec::new();
        for file in [&generation, &model_config].into_iter().flatten() {
            declared_eos_ids.extend(file.token_ids("eos_token_id")?);
        }
        declared_eos_ids.extend(id_of(&special.eos));

        let (mut prefix_ids, mut suffix_ids) = post_processor_additions(&inner)?;
        if let Some(config) = &config {
            if let Some(add_bos) = config.flag("add_bos_token")? {
                prefix_ids = bos_token_id.filter(|_| add_bos).into_iter().collect();
            }
            if let Some(add_eos) = config.flag("add_eos_token")? {
                suffix_ids = id_of(&special.eos).filter(|_| add_eos).into_iter().collect();
            }
        }

        let template_source = match read_optional_text(&dir.join("chat_template.jinja"))? {
            Some(source) => Some(source),
            None => match &config {
                Some(config) => config.chat_template()?,
                None => None,
            },
        };
        let chat_template = template_source
            .map(|source| ChatTemplate::new(&source, special))
            .transpose()?;

        let configured_vocab = match &model_config {
            Some(model_config) => model_config.count("vocab_size")?,
            None => None,
        };
        let largest_added = inner
            .get_added_tokens_decoder()
            .keys()
            .max()
            .map_or(0, |&id| id as usize + 1);
        let vocab_size = inner
            .get_vocab_size(true)
            .max(largest_added)
            .max(configured_vocab.unwrap_or(0));

        Tokenizer::assemble(Parts {
            inner,
            vocab_size,
            bos_token_id,
            prefix_ids,
            suffix_ids,
            declared_eos_ids,
            chat_template,
        })
    }
}

/// The loaded pipeline with its pre-tokenizer's split regexes moved to `regex` automata where possible.
fn with_fast_splits(loaded: tokenizers::Tokenizer) -> Result<Inner, TokenizerError> {
    let loaded = loaded.into_inner();
    let pre_tokenizer = loaded
        .get_pre_tokenizer()
        .cloned()
        .map(PreTokenizer::from_wrapper)
        .transpose()?;
    let mut inner = Inner::new(loaded.get_model().clone());
    inner
        .with_normalizer(loaded.get_normalizer().cloned())
        .with_pre_tokenizer(pre_tokenizer)
        .with_post_processor(loaded.get_post_processor().cloned())
        .with_decoder(loaded.get_decoder().cloned())
        .with_added_vocabulary(loaded.get_added_vocabulary().clone());
    Ok(inner)
}

/// The ids tokenizer.json's post-processor puts before and after a text, found by encoding a probe with
/// and without special tokens and locating the plain ids inside the other.
fn post_processor_additions(inner: &Inner) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
    const PROBE: &str = "probe";
    let plain = inner.encode_fast(PROBE, false).map_err(TokenizerError::Encode)?;
    let full = inner.encode_fast(PROBE, true).map_err(TokenizerError::Encode)?;
    let (plain, full) = (plain.get_ids(), full.get_ids());
    let at = if plain.is_empty() {
        Some(0)
    } else {
        full.windows(plain.len()).position(|window| window == plain)
    };
    Ok(match at {
        Some(at) => (full[..at].to_vec(), full[at + plain.len()..].to_vec()),
        None => (Vec::new(), Vec::new()),
    })
}

fn read_optional_text(path: &Path) -> Result<Option<String>, TokenizerError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A parsed JSON config file, remembered with its path for error messages.
struct JsonFile {
    path: PathBuf,
    value: Value,
}

impl JsonFile {
    fn read_optional(path: PathBuf) -> Result<Option<Self>, TokenizerError> {
        let Some(text) = read_optional_text(&path)? else {
            return Ok(None);
        };
        match serde_json::from_str(&text) {
            Ok(value) => Ok(Some(Self { path, value })),
            Err(source) => Err(TokenizerError::Json { path, source }),
        }
    }

    fn invalid(&self, field: &'static str, reason: impl Into<String>) -> TokenizerError {
        TokenizerError::InvalidConfig {
            path: self.path.clone(),
            field,
            reason: reason.into(),
        }
    }

    fn field(&self, field: &str) -> Option<&Value> {
        self.value.get(field).filter(|value| !value.is_null())
    }

    /// A special token's text: a string, or an object with a string `content` (the `AddedToken` form).
    fn token_text(&self, field: &'static str) -> Result<Option<String>, TokenizerError> {
        match self.field(field) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Object(object)) => match object.get("content") {
                Some(Value::String(text)) => Ok(Some(text.clone())),
                _ => Err(self.invalid(field, "an object without a string `content`")),
            },
            Some(other) => Err(self.invalid(
                field,
                format!("expected a string or an object, found {}", json_kind(other)),
            )),
        }
    }

    /// Token ids given as one integer or a list of integers.
    fn token_ids(&self, field: &'static str) -> Result<Vec<u32>, TokenizerError> {
        let to_id = |value: &Value| {
            value
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| self.invalid(field, format!("{value} is not a token id")))
        };
        match self.field(field) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(to_id).collect(),
            Some(value) => Ok(vec![to_id(value)?]),
        }
    }

    fn flag(&self, field: &'static str) -> Result<Option<bool>, TokenizerError> {
        match self.field(field) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(self.invalid(field, format!("expected true or false, found {}", json_kind(other)))),
        }
    }

    fn count(&self, field: &'static str) -> Result<Option<usize>, TokenizerError> {
        match self.field(field) {
            None => Ok(None),
            Some(value) => value
                .as_u64()
                .and_then(|count| usize::try_from(count).ok())
                .map(Some)
                .ok_or_else(|| self.invalid(field, format!("{value} is not a count"))),
        }
    }

    /// `chat_template`: a string, or a list of `{name, template}` from which "default" (else the first)
    /// is taken.
    fn chat_template(&self) -> Result<Option<String>, TokenizerError> {
        const FIELD: &str = "chat_template";
        match self.field(FIELD) {
            None => Ok(None),
            Some(Value::String(source)) => Ok(Some(source.clone())),
            Some(Value::Array(named)) => {
                let template_of = |entry: &Value| entry.get("template").and_then(Value::as_str).map(str::to_owned);
                let default = named
                    .iter()
                    .find(|entry| entry.get("name").and_then(Value::as_str) == Some("default"));
                match default.or(named.first()).map(template_of) {
                    Some(Some(source)) => Ok(Some(source)),
                    Some(None) => Err(self.invalid(FIELD, "a named template without a string `template`")),
                    None => Ok(None),
                }
            }
            Some(other) => Err(self.invalid(
                FIELD,
                format!("expected a string or a list, found {}", json_kind(other)),
            )),
        }
    }
}

/// The JSON type of `value`, for error messages (the value itself may be large).
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
