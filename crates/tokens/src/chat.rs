//! Chat templates: a model's Jinja template turning chat messages into one prompt string.
//!
//! Rendered with minijinja configured like transformers' `apply_chat_template` environment: `trim_blocks`
//! and `lstrip_blocks` on, Python string/dict/list methods (`.strip()`, `.startswith()`, `.items()`) via
//! minijinja-contrib's pycompat, `raise_exception(msg)`, `{% break %}`/`{% continue %}`, and a `tojson` that
//! writes what Python's `json.dumps(ensure_ascii=False)` writes. The context holds `messages`,
//! `add_generation_prompt`, `tools`/`documents` (none) and the special token strings transformers passes
//! (`bos_token`, `eos_token`, `unk_token`, `pad_token`, each only when the model has it).
//! Invariant: the template compiles once, when the tokenizer is built; rendering never mutates it.
//! Cost: rendering is proportional to the output (microseconds for a chat of a few turns).

use std::collections::BTreeMap;
use std::io;

use minijinja::value::Kwargs;
use minijinja::{Environment, Error, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::TokenizerError;

const TEMPLATE_NAME: &str = "chat_template";

/// One chat turn: `role` is "system", "user" or "assistant" (whatever the template accepts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The special token strings a template may refer to.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialTokenText {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// A compiled chat template.
pub(crate) struct ChatTemplate {
    source: String,
    env: Environment<'static>,
    special: SpecialTokenText,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is reported now, not at the first request.
    pub(crate) fn new(source: &str, special: SpecialTokenText) -> Result<Self, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(TokenizerError::ChatTemplateSyntax)?;
        Ok(Self {
            source: source.to_owned(),
            env,
            special,
        })
    }

    /// The template text.
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let mut context: BTreeMap<&str, Value> = BTreeMap::new();
        context.insert("messages", Value::from_serialize(messages));
        context.insert("add_generation_prompt", Value::from(add_generation_prompt));
        context.insert("tools", Value::from(()));
        context.insert("documents", Value::from(()));
        let named = [
            ("bos_token", &self.special.bos),
            ("eos_token", &self.special.eos),
            ("unk_token", &self.special.unk),
            ("pad_token", &self.special.pad),
        ];
        for (name, text) in named {
            if let Some(text) = text {
                context.insert(name, Value::from(text.as_str()));
            }
        }
        self.env
            .get_template(TEMPLATE_NAME)
            .and_then(|template| template.render(context))
            .map_err(TokenizerError::ChatTemplateRender)
    }
}

/// `raise_exception(message)`: how templates reject a conversation ("roles must alternate ...").
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// `value | tojson(indent=None, ensure_ascii=False)` written as Python's `json.dumps` writes it: ", " and
/// ": " separators without indent; newlines, `indent` spaces, "," and ": " with it; non-ASCII kept
/// unless `ensure_ascii`. (minijinja's own `tojson` escapes `<`, `>`, `&` and `'` for HTML, which would
/// change prompts.)
fn python_tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let written = match indent {
        Some(width) => {
            let spaces = " ".repeat(width);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(spaces.as_bytes());
            serde::Serialize::serialize(value, &mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
        None => serde::Serialize::serialize(
            value,
            &mut serde_json::Serializer::with_formatter(&mut out, PythonCompactFormatter),
        ),
    };
    written.map_err(|err| {
        Error::new(ErrorKind::InvalidOperation, "tojson: value cannot be written as JSON").with_source(err)
    })?;
    let text = String::from_utf8(out)
        .map_err(|err| Error::new(ErrorKind::InvalidOperation, "tojson: JSON output is not UTF-8").with_source(err))?;
    let text = if ensure_ascii == Some(true) {
        escape_non_ascii(&text)
    } else {
        text
    };
    Ok(Value::from(text))
}

/// `\uXXXX` escapes (UTF-16, as Python writes them) for every non-ASCII character of JSON text; they
/// can only occur inside strings, where the escape means the same character.
fn escape_non_ascii(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// serde_json's compact output with Python's default separators.
struct PythonCompactFormatter;

impl serde_json::ser::Formatter for PythonCompactFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if first { Ok(()) } else { writer.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }
}
