//! Streaming detokenization: deltas concatenate to `decode(all ids)`, and never split a character.

use std::collections::BTreeMap;
use std::ops::Deref;

use cleave_tokens::{DecodeStream, Tokenizer, TokenizerError};

use crate::common::{Golden, golden, smollm2, tiny_gguf};

/// Streams `ids` one at a time; returns the deltas (`None` steps included) and the flushed rest.
fn stream<T: Deref<Target = Tokenizer>>(
    stream: &mut DecodeStream<T>,
    ids: &[u32],
) -> (Vec<Option<String>>, Option<String>) {
    let steps = ids.iter().map(|&id| stream.step(id).unwrap()).collect();
    (steps, stream.flush().unwrap())
}

fn assert_streams_like_decode(label: &str, tokenizer: &Tokenizer, ids: &[u32]) {
    for skip in [false, true] {
        let (steps, rest) = stream(&mut tokenizer.decode_stream(skip), ids);
        let streamed: String = steps.iter().flatten().chain(&rest).map(String::as_str).collect();
        assert_eq!(
            streamed,
            tokenizer.decode(ids, skip).unwrap(),
            "{label} (skip special: {skip}), ids {ids:?}"
        );
        let complete = tokenizer.decode(ids, skip).unwrap();
        if !complete.contains(char::REPLACEMENT_CHARACTER) {
            assert!(
                rest.is_none(),
                "{label}: complete text leaves nothing to flush, got {rest:?}"
            );
            for delta in steps.iter().flatten() {
                assert!(!delta.contains(char::REPLACEMENT_CHARACTER), "{label}: delta {delta:?}");
            }
        }
    }
}

#[test]
fn byte_level_stream_equals_decode_for_every_golden_text() {
    let golden: Golden = golden("smollm2_golden.json");
    let tokenizer = smollm2();
    for case in &golden.encode {
        assert_streams_like_decode(&case.text, &tokenizer, &case.ids_with_special);
    }
    for case in &golden.chat {
        assert_streams_like_decode(&case.rendered, &tokenizer, &case.ids);
    }
}

#[test]
fn sentencepiece_and_other_byte_level_streams_equal_decode() {
    let goldens: BTreeMap<String, Golden> = golden("tiny_gguf_golden.json");
    for (name, golden) in &goldens {
        let tokenizer = tiny_gguf(name);
        for case in &golden.encode {
            assert_streams_like_decode(&format!("{name}: {:?}", case.text), &tokenizer, &case.ids_with_special);
        }
    }
}

#[test]
fn characters_split_across_tokens_wait_for_their_last_byte() {
    let tokenizer = smollm2();
    let text = "😀🎉 中文テキスト👨‍👩‍👧!";
    let ids = tokenizer.encode(text, false).unwrap();
    assert!(
        ids.len() > text.chars().count(),
        "these characters take several byte tokens each"
    );
    let (steps, rest) = stream(&mut tokenizer.decode_stream(false), &ids);
    assert!(steps.iter().any(Option::is_none), "some steps end mid-character");
    assert!(rest.is_none());
    let deltas: Vec<String> = steps.into_iter().flatten().collect();
    assert_eq!(deltas.concat(), text);
    assert!(
        deltas.iter().all(|delta| !delta.contains(char::REPLACEMENT_CHARACTER)),
        "{deltas:?}"
    );
}

#[test]
fn flush_emits_an_incomplete_character_as_decode_does() {
    let tokenizer = smollm2();
    let ids = tokenizer.encode("a😀", false).unwrap();
    let cut = &ids[..ids.len() - 1];
    let mut decoder = DecodeStream::new(smollm2(), false);
    let steps: Vec<Option<String>> = cut.iter().map(|&id| decoder.step(id).unwrap()).collect();
    assert_eq!(steps.into_iter().flatten().collect::<String>(), "a");
    let rest = decoder.flush().unwrap().unwrap();
    assert!(rest.contains(char::REPLACEMENT_CHARACTER), "{rest:?}");
    assert_eq!(format!("a{rest}"), tokenizer.decode(cut, false).unwrap());
    assert_eq!(decoder.flush().unwrap(), None, "nothing left after a flush");
}

#[test]
fn an_id_outside_the_vocabulary_is_an_error_and_the_stream_goes_on() {
    let tokenizer = smollm2();
    let mut decoder = tokenizer.decode_stream(false);
    let hello = tokenizer.encode("Hello", false).unwrap();
    assert_eq!(decoder.step(hello[0]).unwrap().as_deref(), Some("Hello"));
    let error = decoder.step(1_000_000).unwrap_err();
    assert!(
        matches!(error, TokenizerError::TokenIdOutOfRange { id: 1_000_000, .. }),
        "{error}"
    );
    let world = tokenizer.encode(" world", false).unwrap();
    assert_eq!(decoder.step(world[0]).unwrap().as_deref(), Some(" world"));
}
