//! The tokenizer a GGUF file describes, read out of its `tokenizer.*` metadata into plain owned data.
//!
//! Everything GGUF-specific about reading keys happens in [`GgufTokenizerSpec::from_gguf`]; building the
//! tokenizer works on this struct only, so tests can describe a vocabulary without writing a file.
//! Invariant: after `validate`, every per-token array has one entry per token and every special token
//! id is inside the vocabulary.
//! Cost: one copy of the vocabulary and merges strings (a few MB, ~10 ms for a 50k vocabulary).

use cleave_gguf::GgufFile;

use crate::error::TokenizerError;

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Undefined,
    Normal,
    /// The unknown token (`<unk>`).
    Unknown,
    /// A special token such as `<s>`, `<|im_start|>`: matched whole in text, skippable on decode.
    Control,
    /// An added token that is not special (`<think>`): matched whole in text, kept on decode.
    UserDefined,
    Unused,
    /// A SentencePiece byte-fallback piece such as `<0x0A>`.
    Byte,
}

impl TokenType {
    /// The type for llama.cpp's number, or `None` for a number it does not define.
    pub fn from_id(id: i64) -> Option<Self> {
        Some(match id {
            0 => Self::Undefined,
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            _ => return None,
        })
    }
}

/// The `tokenizer.*` metadata of a GGUF file. Field comments give the key each one comes from.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizerSpec {
    /// `general.architecture`: picks model-specific SentencePiece variants (Gemma, Phi-3).
    pub architecture: Option<String>,
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama" (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the byte-level pre-tokenizer name.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token when present.
    pub token_types: Option<Vec<TokenType>>,
    /// `tokenizer.ggml.scores`, one per token when present.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.merges`, each "left right", best first.
    pub merges: Option<Vec<String>>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`: end of turn, when the file names one.
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`: end of message (Llama 3.1 tool calls), when the file names one.
    pub eom_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece only).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const SCORES: &str = "tokenizer.ggml.scores";
const MERGES: &str = "tokenizer.ggml.merges";

impl GgufTokenizerSpec {
    /// Reads the tokenizer metadata of `file`. Absent optional keys become `None`; a key of the wrong
    /// type or a required key that is missing (`tokenizer.ggml.model`, `tokenizer.ggml.tokens`) is an error.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let optional_str = |key: &str| -> Result<Option<String>, TokenizerError> {
            match file.get(key) {
                None => Ok(None),
                Some(_) => Ok(Some(file.get_str(key)?.to_owned())),
            }
        };
        let optional_bool = |key: &str| -> Result<Option<bool>, TokenizerError> {
            match file.get(key) {
                None => Ok(None),
                Some(_) => Ok(Some(file.get_bool(key)?)),
            }
        };
        let optional_id = |key: &'static str| -> Result<Option<u32>, TokenizerError> {
            if file.get(key).is_none() {
                return Ok(None);
            }
            let id = file.get_u64(key)?;
            u32::try_from(id)
                .map(Some)
                .map_err(|_| TokenizerError::InvalidMetadata {
                    key,
                    reason: format!("token id {id} does not fit in 32 bits"),
                })
        };

        let token_types = match file.get(TOKEN_TYPE) {
            None => None,
            Some(_) => Some(
                file.get_i64_array(TOKEN_TYPE)?
                    .into_iter()
                    .enumerate()
                    .map(|(index, id)| {
                        TokenType::from_id(id).ok_or_else(|| TokenizerError::InvalidMetadata {
                            key: TOKEN_TYPE,
                            reason: format!("entry {index} is {id}, not a llama.cpp token type (0..=6)"),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let scores = match file.get(SCORES) {
            None => None,
            Some(_) => Some(file.get_f32_array(SCORES)?),
        };
        let merges = match file.get(MERGES) {
            None => None,
            Some(_) => Some(owned(file.get_str_array(MERGES)?)),
        };

        let spec = Self {
            architecture: optional_str("general.architecture")?,
            model: file.get_str("tokenizer.ggml.model")?.to_owned(),
            pre: optional_str("tokenizer.ggml.pre")?,
            tokens: owned(file.get_str_array(TOKENS)?),
            token_types,
            scores,
            merges,
            bos_token_id: optional_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: optional_id("tokenizer.ggml.eos_token_id")?,
            unknown_token_id: optional_id("tokenizer.ggml.unknown_token_id")?,
            padding_token_id: optional_id("tokenizer.ggml.padding_token_id")?,
            eot_token_id: optional_id("tokenizer.ggml.eot_token_id")?,
            eom_token_id: optional_id("tokenizer.ggml.eom_token_id")?,
            add_bos_token: optional_bool("tokenizer.ggml.add_bos_token")?,
            add_eos_token: optional_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: optional_bool("tokenizer.ggml.add_space_prefix")?,
            chat_template: optional_str("tokenizer.chat_template")?,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the cross-field invariants the builders rely on.
    pub fn validate(&self) -> Result<(), TokenizerError> {
        let expected = self.tokens.len();
        if expected == 0 {
            return Err(TokenizerError::InvalidMetadata {
                key: TOKENS,
                reason: "the vocabulary is empty".to_owned(),
            });
        }
        let lengths = [
            (TOKEN_TYPE, self.token_types.as_ref().map(Vec::len)),
            (SCORES, self.scores.as_ref().map(Vec::len)),
        ];
        for (key, found) in lengths {
            if let Some(found) = found.filter(|&found| found != expected) {
                return Err(TokenizerError::LengthMismatch { key, expected, found });
            }
        }
        for (key, id) in self.special_ids() {
            if let Some(id) = id.filter(|&id| id as usize >= expected) {
                return Err(TokenizerError::SpecialTokenOutOfRange {
                    key,
                    id: u64::from(id),
                    vocab_size: expected,
                });
            }
        }
        Ok(())
    }

    /// The special token ids with the metadata key each comes from.
    fn special_ids(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("tokenizer.ggml.bos_token_id", self.bos_token_id),
            ("tokenizer.ggml.eos_token_id", self.eos_token_id),
            ("tokenizer.ggml.unknown_token_id", self.unknown_token_id),
            ("tokenizer.ggml.padding_token_id", self.padding_token_id),
            ("tokenizer.ggml.eot_token_id", self.eot_token_id),
            ("tokenizer.ggml.eom_token_id", self.eom_token_id),
        ]
    }

    /// The type of token `id` (`Normal` when the file gives no types).
    pub(crate) fn token_type(&self, id: usize) -> TokenType {
        self.token_types
            .as_ref()
            .and_then(|types| types.get(id).copied())
            .unwrap_or(TokenType::Normal)
    }

    /// The text of token `id`, if it exists.
    pub(crate) fn token(&self, id: Option<u32>) -> Option<&str> {
        id.and_then(|id| self.tokens.get(id as usize)).map(String::as_str)
    }
}

fn owned(items: Vec<&str>) -> Vec<String> {
    items.into_iter().map(str::to_owned).collect()
}
