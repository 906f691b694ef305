//! Dequantization matches gguf-py (ggml's reference) bit for bit, on fixtures made by
//! `tests/fixtures/make_quant_fixtures.py`: a few blocks of pseudo-random bytes per type and gguf-py's f32 output.

use std::path::PathBuf;

use cleave_gguf::{GgmlType, GgufFile, dequantize};

use crate::writer::GgufBuilder;

const FIXTURE_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::F64,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn fixture(ty: GgmlType) -> (Vec<u8>, Vec<f32>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let name = ty.name().to_lowercase();
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let expected = read("f32")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (read("blocks"), expected)
}

fn assert_bit_exact(ty: GgmlType, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{ty}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{ty}: element {i} is {g}, gguf-py gives {w}");
    }
}

#[test]
fn every_type_matches_gguf_py_bit_for_bit() {
    for ty in FIXTURE_TYPES {
        let (blocks, want) = fixture(ty);
        assert_eq!(
            blocks.len() / ty.type_size() * ty.block_size(),
            want.len(),
            "{ty}: fixture sizes"
        );
        let mut got = vec![f32::NAN; want.len()];
        dequantize(ty, &blocks, &mut got).unwrap();
        assert_bit_exact(ty, &got, &want);
    }
}

/// The same blocks stored as tensors of a GGUF file come back through `tensor_f32` unchanged.
#[test]
fn fixtures_round_trip_through_a_file() {
    let mut builder = GgufBuilder::new();
    for ty in FIXTURE_TYPES {
        let (blocks, want) = fixture(ty);
        let ne0 = ty.block_size() as u64;
        let rows = want.len() as u64 / ne0;
        builder = builder.tensor(ty.name(), &[ne0, rows], ty.id(), blocks);
    }
    let file = GgufFile::from_bytes(builder.build(), "fixtures.gguf").unwrap();
    for ty in FIXTURE_TYPES {
        let (_, want) = fixture(ty);
        assert_eq!(file.tensor(ty.name()).unwrap().ty, ty);
        assert_bit_exact(ty, &file.tensor_f32(ty.name()).unwrap(), &want);
    }
}
