//! Property test: thousands of deterministic pseudo-random mutations of a valid file never make the crate panic,
//! whether the mutated file is refused or (by chance still well-formed) read and dequantized in full.
//! The cargo-fuzz target `fuzz/fuzz_targets/gguf_parse.rs` explores the same surface without a bound.

use std::panic::{AssertUnwindSafe, catch_unwind};

use cleave_gguf::{GgmlType, GgufFile};

use crate::writer::sample_file;

const MUTATIONS: u64 = 4000;

/// splitmix64: small, deterministic, good enough to spread mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that sit on the edges a parser gets wrong: zero, one, powers of two, just past the file, the maximum.
fn interesting_u64(rng: &mut Rng, file_len: usize) -> u64 {
    let choices = [
        0,
        1,
        2,
        3,
        4,
        5,
        31,
        32,
        33,
        255,
        file_len as u64,
        file_len as u64 - 1,
        1 << 31,
        1 << 32,
        1 << 63,
        u64::MAX,
        u64::MAX - 7,
        u64::MAX / 24 + 1,
    ];
    match rng.below(3) {
        0 => rng.next(),
        _ => choices[rng.below(choices.len())],
    }
}

/// Reads everything a loader would: every metadata value and every tensor, dequantized where supported.
fn walk(file: &GgufFile) {
    for (key, value) in file.metadata() {
        let _ = (
            key.len(),
            value.to_string(),
            value.type_name(),
            value.as_u64(),
            value.as_f64(),
        );
        let _ = (
            file.get_u64(key),
            file.get_f32(key),
            file.get_str_array(key),
            file.get_i64_array(key),
        );
    }
    for info in file.tensors() {
        let _ = (info.shape(), info.byte_len(), file.tensor_data(info));
        let _ = file.tensor_f32(&info.name);
    }
}

#[test]
fn mutated_files_never_panic() {
    let mut builder = sample_file();
    // Tensors of every block geometry, so mutated shapes and types reach each dequantizer.
    for ty in [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q5_1, GgmlType::BF16] {
        let n = ty.block_size() as u64 * 2;
        let bytes = ty.bytes_for(n).unwrap() as usize;
        let data = (0..bytes).map(|i| (i * 37 % 251) as u8).collect();
        builder = builder.tensor(&format!("w.{}", ty.name()), &[n], ty.id(), data);
    }
    let base = builder.build_with_fields();
    let len = base.bytes.len();
    let mut rng = Rng(0x5eed);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..MUTATIONS {
        let mut bytes = base.bytes.clone();
        let kind = rng.below(5);
        match kind {
            0 => {
                for _ in 0..=rng.below(4) {
                    let at = rng.below(len);
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            1 => bytes.truncate(rng.below(len)),
            2 => {
                let at = base.length_fields[rng.below(base.length_fields.len())];
                let value = interesting_u64(&mut rng, len);
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            3 => {
                // Type ids, dimension counts and versions are u32s anywhere in the header.
                let at = rng.below(base.data_offset - 4);
                let value = interesting_u64(&mut rng, len) as u32;
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            _ => {
                let at = rng.below(len);
                bytes[at] = rng.next() as u8;
                bytes.truncate(len - rng.below(64));
            }
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            GgufFile::from_bytes(bytes, "mutant.gguf")
                .map(|file| walk(&file))
                .is_ok()
        }));
        match outcome {
            Ok(true) => accepted += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("mutation {i} (kind {kind}) panicked"),
        }
    }
    println!("{MUTATIONS} mutations: {accepted} accepted, {refused} refused");
    // Both outcomes must be common, or the mutations are not exercising the parser.
    assert!(
        accepted > MUTATIONS / 20 && refused > MUTATIONS / 5,
        "{accepted} accepted, {refused} refused"
    );
}
