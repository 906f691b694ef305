use super::*;

#[test]
fn default_model_is_known() {
    let entry = find(DEFAULT_MODEL).unwrap();
    assert_eq!(entry.file_name(), "SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(entry.gguf.size, 98_362_432);
    assert!(list().iter().any(|e| e.name == DEFAULT_MODEL));
}

#[test]
fn rows_are_well_formed() {
    for (i, entry) in KNOWN_MODELS.iter().enumerate() {
        for sha in [entry.gguf.sha256, entry.source.wheel.sha256] {
            assert_eq!(sha.len(), 64, "{}: sha256 length", entry.name);
            assert!(
                sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}: sha256 must be lower-case hex",
                entry.name
            );
        }
        assert!(entry.source.filename.ends_with(".whl"), "{}", entry.name);
        assert!(entry.file_name().ends_with(".gguf"), "{}", entry.name);
        assert!(
            KNOWN_MODELS[..i].iter().all(|other| other.name != entry.name),
            "duplicate name {}",
            entry.name
        );
    }
}

#[test]
fn unknown_name_lists_known_ones() {
    let err = find("llama-70b").unwrap_err();
    let message = err.to_string();
    assert!(message.contains("llama-70b"), "{message}");
    assert!(message.contains(DEFAULT_MODEL), "{message}");
}
