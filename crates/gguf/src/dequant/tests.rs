use super::{PARALLEL_MIN_ELEMENTS, can_dequantize, dequantize};
use crate::GgmlType;
use crate::error::DequantError;

fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

fn supported() -> Vec<GgmlType> {
    GgmlType::ALL.into_iter().filter(|&ty| can_dequantize(ty)).collect()
}

#[test]
fn supports_the_promised_types() {
    use GgmlType as T;
    let expected = [
        T::F32,
        T::F16,
        T::Q4_0,
        T::Q4_1,
        T::Q5_0,
        T::Q5_1,
        T::Q8_0,
        T::Q2_K,
        T::Q3_K,
        T::Q4_K,
        T::Q5_K,
        T::Q6_K,
        T::Q8_K,
        T::F64,
        T::BF16,
    ];
    assert_eq!(supported(), expected);
}

/// Catches a kernel whose compile-time block geometry disagrees with `GgmlType`'s: the blocks would then shift
/// against each other and a block converted alone would differ from the same block converted in a run. Running
/// past `PARALLEL_MIN_ELEMENTS` also checks that chunked, parallel conversion matches block-by-block conversion.
#[test]
fn each_block_converts_independently_serial_and_parallel() {
    for ty in supported() {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let n_blocks = PARALLEL_MIN_ELEMENTS / bs + 3;
        let data = pseudo_random_bytes(n_blocks * ts, ty.id().into());
        let mut all = vec![f32::NAN; n_blocks * bs];
        dequantize(ty, &data, &mut all).unwrap();
        let mut one = vec![f32::NAN; bs];
        for (i, (block, want)) in data.chunks(ts).zip(all.chunks(bs)).enumerate() {
            dequantize(ty, block, &mut one).unwrap();
            let same = one.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{ty}: block {i} differs when converted alone");
        }
    }
}

#[test]
fn every_output_is_written() {
    for ty in supported() {
        let bs = ty.block_size();
        let data = vec![0u8; 2 * ty.type_size()];
        let mut out = vec![f32::NAN; 2 * bs];
        dequantize(ty, &data, &mut out).unwrap();
        assert!(out.iter().all(|v| *v == 0.0), "{ty}: zero blocks must give zeros");
    }
}

#[test]
fn refuses_unsupported_types() {
    let err = dequantize(GgmlType::IQ2_XXS, &[0; 66], &mut [0.0; 256]).unwrap_err();
    assert_eq!(err, DequantError::Unsupported { ty: GgmlType::IQ2_XXS });
    assert!(err.to_string().contains("unsupported tensor type IQ2_XXS"), "{err}");
}

#[test]
fn refuses_mismatched_lengths() {
    let cases: [(GgmlType, usize, usize); 4] = [
        (GgmlType::Q4_0, 18, 31), // output not whole blocks
        (GgmlType::Q4_0, 17, 32), // data short of one block
        (GgmlType::Q4_0, 36, 32), // data for two blocks, output for one
        (GgmlType::F32, 3, 1),
    ];
    for (ty, bytes, elements) in cases {
        let err = dequantize(ty, &vec![0; bytes], &mut vec![0.0; elements]).unwrap_err();
        assert_eq!(err, DequantError::LengthMismatch { ty, bytes, elements });
    }
}

#[test]
fn empty_input_is_fine() {
    for ty in supported() {
        dequantize(ty, &[], &mut []).unwrap();
    }
}

#[test]
fn scalar_types_convert_exactly() {
    let mut out = [0.0f32; 3];
    let f16s: Vec<u8> = [0x3c00u16, 0xc000, 0x0001]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    dequantize(GgmlType::F16, &f16s, &mut out).unwrap();
    assert_eq!(out, [1.0, -2.0, 2.0f32.powi(-24)]);
    let bf16s: Vec<u8> = [0x3f80u16, 0xc040, 0x0000]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    dequantize(GgmlType::BF16, &bf16s, &mut out).unwrap();
    assert_eq!(out, [1.0, -3.0, 0.0]);
    let f64s: Vec<u8> = [0.1f64, -1e300, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    dequantize(GgmlType::F64, &f64s, &mut out).unwrap();
    assert_eq!(out, [0.1f32, f32::NEG_INFINITY, 3.0]);
}
