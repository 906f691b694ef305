//! Every kind of malformed file is an `Err` that names the file and what is wrong — never a panic.

use cleave_gguf::{FormatError, GgmlType, GgufFile, Value};

use crate::writer::{GgufBuilder, sample_file};

const NAME: &str = "corrupt.gguf";

/// Parses `bytes`, expecting failure; returns the kind and the full message.
fn reject(bytes: Vec<u8>) -> (FormatError, String) {
    match GgufFile::from_bytes(bytes, NAME) {
        Ok(_) => panic!("a corrupt file was accepted"),
        Err(err) => {
            let message = err.to_string();
            assert!(message.starts_with("corrupt.gguf: "), "{message}");
            let kind = err
                .format_kind()
                .cloned()
                .unwrap_or_else(|| panic!("not a format error: {message}"));
            (kind, message)
        }
    }
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn every_truncation_is_an_error() {
    let built = sample_file().build_with_fields();
    for len in 0..built.content_len {
        let result = GgufFile::from_bytes(built.bytes[..len].to_vec(), NAME);
        assert!(
            result.is_err(),
            "accepted a file cut to {len} of {} bytes",
            built.content_len
        );
    }
    // As in llama.cpp, the padding after the last tensor may be missing.
    for len in built.content_len..=built.bytes.len() {
        assert!(GgufFile::from_bytes(built.bytes[..len].to_vec(), NAME).is_ok());
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = sample_file().build();
    bytes[0] = b'X';
    let (kind, message) = reject(bytes);
    assert_eq!(kind, FormatError::BadMagic { found: *b"XGUF" });
    assert!(message.contains("header: bad magic"), "{message}");

    for (version, big_endian) in [
        (0, false),
        (1, false),
        (4, false),
        (0x0300_0000, true),
        (0x0200_0000, true),
        (u32::MAX, false),
    ] {
        let mut bytes = sample_file().build();
        put_u32(&mut bytes, 4, version);
        let (kind, _) = reject(bytes);
        if big_endian {
            assert_eq!(kind, FormatError::BigEndian { version });
        } else {
            assert_eq!(kind, FormatError::UnsupportedVersion { version });
        }
    }
    let (kind, _) = reject(b"GGUF".to_vec());
    assert_eq!(kind, FormatError::TooShort { size: 4, min: 24 });
}

#[test]
fn absurd_counts_and_lengths_are_refused_before_allocating() {
    let built = sample_file().build_with_fields();
    for &at in &built.length_fields {
        for value in [u64::MAX, u64::MAX / 2, 1 << 40, built.bytes.len() as u64] {
            let mut bytes = built.bytes.clone();
            put_u64(&mut bytes, at, value);
            // Whatever the field, the file must be refused (a count or length this large cannot fit).
            let (kind, message) = reject(bytes);
            assert!(
                matches!(kind, FormatError::CountTooLarge { .. } | FormatError::Truncated { .. }),
                "field at {at} = {value}: {message}"
            );
        }
    }
    let mut bytes = built.bytes.clone();
    put_u64(&mut bytes, 8, u64::MAX);
    let (_, message) = reject(bytes);
    assert!(
        message.starts_with("corrupt.gguf: header: tensor count 18446744073709551615"),
        "{message}"
    );
}

#[test]
fn unknown_type_ids() {
    let builder = GgufBuilder::new().kv("k", Value::U8(1));
    let mut bytes = builder.build();
    // Header (24), key length (8) and key (1): the value type follows.
    put_u32(&mut bytes, 33, 13);
    let (kind, message) = reject(bytes);
    assert_eq!(kind, FormatError::UnknownValueType { id: 13, offset: 33 });
    assert!(message.contains("metadata 'k'"), "{message}");

    for id in [4, 5, 31, 36, 42, u32::MAX] {
        let builder = GgufBuilder::new().tensor("w", &[32], id, vec![0; 64]);
        let (kind, message) = reject(builder.build());
        assert_eq!(kind, FormatError::UnknownTensorType { id });
        assert!(message.contains("tensor 'w'"), "{message}");
    }
}

#[test]
fn tensor_data_outside_the_file() {
    let mut builder = sample_file();
    builder.tensors[2].offset = Some(1 << 20);
    let (kind, message) = reject(builder.build());
    assert!(matches!(kind, FormatError::TensorOutOfBounds { .. }), "{message}");
    let size = builder.build().len();
    assert!(
        message.starts_with("corrupt.gguf: tensor 'matrix': data [")
            && message.ends_with(&format!(") extends past end of file (size {size})")),
        "{message}"
    );

    let mut builder = sample_file();
    builder.tensors[0].offset = Some(u64::MAX - 31);
    let (kind, _) = reject(builder.build());
    assert!(matches!(kind, FormatError::TensorOutOfBounds { .. }));

    // Dimensions claiming more data than was written.
    let mut builder = sample_file();
    builder.tensors[2].dims = vec![3, 200];
    let (kind, _) = reject(builder.build());
    assert!(matches!(kind, FormatError::TensorOutOfBounds { .. }));
}

#[test]
fn misaligned_tensor_offset() {
    let mut builder = sample_file();
    builder.tensors[1].offset = Some(33);
    let (kind, _) = reject(builder.build());
    assert_eq!(
        kind,
        FormatError::MisalignedTensor {
            offset: 33,
            alignment: 32
        }
    );
}

#[test]
fn bad_shapes() {
    let too_many = GgufBuilder::new().f32_tensor("t", &[1, 1, 1, 1, 1], &[0.0]);
    assert_eq!(
        reject(too_many.build()).0,
        FormatError::TooManyDims { n_dims: 5, max: 4 }
    );

    for dims in [vec![u64::MAX / 2, 4], vec![1 << 63], vec![1 << 32, 1 << 32]] {
        let builder = GgufBuilder::new().f32_tensor("t", &dims, &[0.0]);
        let (kind, _) = reject(builder.build());
        assert_eq!(kind, FormatError::ElementCountOverflow { dims });
    }

    let partial_block = GgufBuilder::new().tensor("q", &[16, 2], GgmlType::Q4_0.id(), vec![0; 36]);
    let (kind, message) = reject(partial_block.build());
    assert_eq!(
        kind,
        FormatError::RowNotWholeBlocks {
            ty: GgmlType::Q4_0,
            ne0: 16,
            block: 32
        }
    );
    assert!(message.contains("tensor 'q': row of 16 elements"), "{message}");
}

#[test]
fn duplicates() {
    let keys = GgufBuilder::new().kv("a", Value::U8(1)).kv("a", Value::U8(2));
    let (kind, message) = reject(keys.build());
    assert_eq!(kind, FormatError::DuplicateKey);
    assert_eq!(message, "corrupt.gguf: metadata 'a': key appears more than once");

    let tensors = GgufBuilder::new()
        .f32_tensor("t", &[1], &[0.0])
        .f32_tensor("t", &[1], &[1.0]);
    let (kind, message) = reject(tensors.build());
    assert_eq!(kind, FormatError::DuplicateTensor);
    assert!(message.contains("tensor 't'"), "{message}");
}

#[test]
fn bad_alignment_values() {
    for value in [
        Value::U32(0),
        Value::U32(48),
        Value::U64(1 << 40),
        Value::String("32".into()),
        Value::I32(-32),
    ] {
        let builder = GgufBuilder::new().kv("general.alignment", value.clone());
        let (kind, message) = reject(builder.build());
        assert!(matches!(kind, FormatError::BadAlignment { .. }), "{value}: {message}");
        assert!(message.contains("metadata 'general.alignment'"), "{message}");
    }
}

#[test]
fn invalid_bool_and_utf8() {
    let mut bytes = GgufBuilder::new().kv("b", Value::Bool(true)).build();
    let at = 24 + 8 + 1 + 4;
    bytes[at] = 2;
    assert_eq!(
        reject(bytes).0,
        FormatError::InvalidBool {
            byte: 2,
            offset: at as u64
        }
    );

    let mut bytes = GgufBuilder::new().kv("ab", Value::U8(0)).build();
    bytes[32] = 0xff;
    let (kind, message) = reject(bytes);
    assert_eq!(kind, FormatError::InvalidUtf8 { offset: 32 });
    assert!(message.contains("key of metadata entry 0"), "{message}");
}

fn nested(levels: usize) -> Value {
    (1..levels).fold(Value::Array(vec![Value::U8(7)]), |inner, _| Value::Array(vec![inner]))
}

#[test]
fn array_nesting_is_bounded() {
    let ok = GgufBuilder::new().kv("n", nested(8));
    assert!(GgufFile::from_bytes(ok.build(), NAME).is_ok());
    let deep = GgufBuilder::new().kv("n", nested(9));
    assert!(matches!(
        reject(deep.build()).0,
        FormatError::NestingTooDeep { max: 8, .. }
    ));
}
