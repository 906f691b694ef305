//! Chat template rendering against transformers' Jinja environment (`chat_template_golden.json`), and
//! template errors.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use cleave_tokens::{ChatMessage, Tokenizer, TokenizerError};
use serde::Deserialize;

use crate::common::{fixture, golden};

#[derive(Debug, Deserialize)]
struct TemplateGolden {
    templates: BTreeMap<String, String>,
    cases: Vec<TemplateCase>,
}

#[derive(Debug, Deserialize)]
struct TemplateCase {
    template: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    rendered: Option<String>,
    error: Option<String>,
}

/// A copy of the tiny tokenizer directory whose tokenizer_config.json holds `template` (or none).
fn with_template(label: &str, template: Option<&str>) -> (PathBuf, Result<Tokenizer, TokenizerError>) {
    let dir = std::env::temp_dir().join(format!("cleave-tokens-chat-{label}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    fs::copy(fixture("tiny-bpe-hf/tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let mut config = serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|endoftext|>"});
    if let Some(template) = template {
        config["chat_template"] = template.into();
    }
    fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    let tokenizer = Tokenizer::from_hf_dir(&dir);
    (dir, tokenizer)
}

#[test]
fn templates_render_like_transformers() {
    let golden: TemplateGolden = golden("chat_template_golden.json");
    for (name, source) in &golden.templates {
        let (dir, tokenizer) = with_template(name, Some(source));
        let tokenizer = tokenizer.unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases = golden.cases.iter().filter(|case| &case.template == name);
        let mut checked = 0;
        for case in cases {
            let result = tokenizer.apply_chat_template(&case.messages, case.add_generation_prompt);
            match (&case.rendered, &case.error, result) {
                (Some(expected), _, Ok(rendered)) => {
                    assert_eq!(&rendered, expected, "{name}: {:?}", case.messages)
                }
                (_, Some(message), Err(error)) => {
                    assert!(matches!(error, TokenizerError::ChatTemplateRender(_)), "{error}");
                    assert!(
                        error.to_string().contains(message.as_str()),
                        "{name}: {error} lacks {message:?}"
                    );
                }
                (expected, message, got) => {
                    panic!(
                        "{name}: {:?}: expected {expected:?} / error {message:?}, got {got:?}",
                        case.messages
                    )
                }
            }
            checked += 1;
        }
        assert_eq!(checked, 8, "{name}");
        fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn a_model_without_a_template_says_so() {
    let (dir, tokenizer) = with_template("none", None);
    let error = tokenizer
        .unwrap()
        .apply_chat_template(&[ChatMessage::new("user", "hi")], true)
        .unwrap_err();
    assert!(matches!(error, TokenizerError::NoChatTemplate), "{error}");
    assert!(error.to_string().contains("no chat template"), "{error}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_template_that_does_not_parse_fails_at_build() {
    let (dir, tokenizer) = with_template("syntax", Some("{% for message in messages %}{{ message.content }}"));
    let error = tokenizer.unwrap_err();
    assert!(matches!(error, TokenizerError::ChatTemplateSyntax(_)), "{error}");
    assert!(error.to_string().contains("syntax error"), "{error}");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn tojson_ensure_ascii_and_special_token_variables() {
    let template = "{{ bos_token }}|{{ eos_token }}|{{ unk_token is defined }}|{{ messages[0].content | tojson(ensure_ascii=True) }}";
    let (dir, tokenizer) = with_template("ascii", Some(template));
    let rendered = tokenizer
        .unwrap()
        .apply_chat_template(&[ChatMessage::new("user", "é😀<")], false)
        .unwrap();
    // Booleans print as Python prints them.
    assert_eq!(rendered, r#"<|im_start|>|<|endoftext|>|False|"\u00e9\ud83d\ude00<""#);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn chat_messages_deserialize_from_json() {
    let messages: Vec<ChatMessage> =
        serde_json::from_str(r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]"#)
            .unwrap();
    assert_eq!(
        messages,
        vec![ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "Hi")]
    );
}
