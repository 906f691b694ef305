//! `Tokenizer::from_gguf`: the tokenizer a GGUF file describes, matching transformers'
//! `AutoTokenizer.from_pretrained(dir, gguf_file=...)` on the same file.
//!
//! Dispatches on `tokenizer.ggml.model` ("gpt2" → `crate::byte_level`, "llama" → `crate::sentencepiece`),
//! then registers added tokens: control tokens as special, user-defined tokens as plain added tokens, and
//! the named special tokens (bos/eos/unk/pad) as special when the file does not type them as normal text.
//! BOS is added to prompts per `tokenizer.ggml.add_bos_token` (absent: yes for "llama", no for "gpt2", as
//! llama.cpp and transformers default).
//! Invariant: ids are the file's ids; nothing is appended to the vocabulary.
//! Cost: ~50-100 ms in release for a 50k vocabulary (hashing tokens and merges).

use cleave_gguf::GgufFile;

use crate::byte_level::{self, ByteAlphabet};
use crate::chat::{ChatTemplate, SpecialTokenText};
use crate::error::TokenizerError;
use crate::sentencepiece;
use crate::spec::{GgufTokenizerSpec, TokenType};
use crate::tokenizer::{Parts, Tokenizer, add_tokens};

impl Tokenizer {
    /// The tokenizer described by the `tokenizer.*` metadata of `file`.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        Self::from_gguf_spec(&GgufTokenizerSpec::from_gguf(file)?)
    }

    /// The tokenizer described by GGUF tokenizer metadata already read into a spec.
    pub fn from_gguf_spec(spec: &GgufTokenizerSpec) -> Result<Self, TokenizerError> {
        spec.validate()?;
        let byte_level = match spec.model.as_str() {
            "gpt2" => true,
            "llama" => false,
            other => {
                return Err(TokenizerError::UnsupportedModel {
                    model: other.to_owned(),
                    reason: "supported models are `gpt2` (byte-level BPE) and `llama` (SentencePiece BPE)".to_owned(),
                });
            }
        };
        let mut inner = if byte_level {
            byte_level::build(spec)?
        } else {
            sentencepiece::build(spec)?
        };
        let (special, plain) = added_tokens(spec, byte_level);
        add_tokens(&mut inner, &special, &plain);

        let add_bos = spec.add_bos_token.unwrap_or(!byte_level);
        let add_eos = spec.add_eos_token.unwrap_or(false);
        let chat_template = spec
            .chat_template
            .as_deref()
            .map(|source| {
                ChatTemplate::new(
                    source,
                    SpecialTokenText {
                        bos: spec.token(spec.bos_token_id).map(str::to_owned),
                        eos: spec.token(spec.eos_token_id).map(str::to_owned),
                        unk: spec.token(spec.unknown_token_id).map(str::to_owned),
                        pad: spec.token(spec.padding_token_id).map(str::to_owned),
                    },
                )
            })
            .transpose()?;
        Tokenizer::assemble(Parts {
            inner,
            vocab_size: spec.tokens.len(),
            bos_token_id: spec.bos_token_id,
            prefix_ids: spec.bos_token_id.filter(|_| add_bos).into_iter().collect(),
            suffix_ids: spec.eos_token_id.filter(|_| add_eos).into_iter().collect(),
            declared_eos_ids: [spec.eos_token_id, spec.eot_token_id, spec.eom_token_id]
                .into_iter()
                .flatten()
                .collect(),
            chat_template,
        })
    }
}

/// The (special, plain) added tokens of the vocabulary, as transformers' `add_gguf_special_tokens` picks
/// them. In a byte-level vocabulary a token spelled outside the byte alphabet cannot be real text, so
/// llama.cpp mislabelled it; it is left out rather than matched.
pub(crate) fn added_tokens(spec: &GgufTokenizerSpec, byte_level: bool) -> (Vec<String>, Vec<String>) {
    let alphabet = byte_level.then(ByteAlphabet::new);
    let spelled = |token: &str| alphabet.as_ref().is_none_or(|alphabet| alphabet.spells(token));
    let mut special = Vec::new();
    let mut plain = Vec::new();
    for (id, token) in spec.tokens.iter().enumerate() {
        match spec.token_type(id) {
            TokenType::Control if spelled(token) => special.push(token.clone()),
            TokenType::UserDefined if spelled(token) => plain.push(token.clone()),
            _ => {}
        }
    }
    // The named special tokens become special too (the unknown token of a SentencePiece vocabulary is
    // typed "unknown", not "control") — unless typed as ordinary text: some files point `padding_token_id`
    // at a normal token such as "!", which must stay text.
    let named = [
        spec.bos_token_id,
        spec.eos_token_id,
        spec.unknown_token_id,
        spec.padding_token_id,
    ];
    for id in named.into_iter().flatten() {
        let id = id as usize;
        let is_text = matches!(spec.token_type(id), TokenType::Normal | TokenType::Byte);
        let fresh = |token: &&String| !special.contains(*token) && !plain.contains(*token);
        if let Some(token) = spec.tokens.get(id).filter(|_| !is_text).filter(fresh) {
            special.push(token.clone());
        }
    }
    (special, plain)
}
