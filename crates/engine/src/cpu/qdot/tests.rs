use cleave_gguf::GgmlType;
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::weights::{Matrix, WeightData};

/// Random blocks with finite, moderate scales (random bytes would give NaN/huge f16 scales).
fn random_rows(ty: GgmlType, rows: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let (block_bytes, scales) = match ty {
        GgmlType::Q4_1 => (20, 2),
        GgmlType::Q4_0 => (18, 1),
        _ => (34, 1),
    };
    let mut bytes = Vec::new();
    for _ in 0..rows * k / 32 {
        for _ in 0..scales {
            bytes.extend(f16::from_f32(rng.random_range(-0.1..0.1)).to_le_bytes());
        }
        bytes.extend((0..block_bytes - 2 * scales).map(|_| rng.random::<u8>()));
    }
    bytes
}

#[test]
fn fused_kernels_match_dequantize_then_dot() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (rows, k) = (7, 96);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let bytes = random_rows(ty, rows, k, &mut rng);
        let row_bytes = bytes.len() / rows;
        let matrix = Matrix {
            rows,
            cols: k,
            data: WeightData::Quantized {
                ty,
                bytes: bytes.clone(),
                row_bytes,
            },
        };
        let mut dense = vec![0.0; rows * k];
        matrix.dequantize_rows(0, &mut dense);
        for m in 1..=MAX_ROWS {
            let x: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
            // Poisoned so an unwritten output is caught.
            let mut out = vec![f32::NAN; m * rows];
            #[cfg(target_arch = "x86_64")]
            let has_simd = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            #[cfg(not(target_arch = "x86_64"))]
            let has_simd = false;
            assert_eq!(quant_rows_dot(ty, &bytes, row_bytes, &x, m, k, &mut out), has_simd);
            if !has_simd {
                continue;
            }
            for i in 0..m {
                for j in 0..rows {
                    let want: f64 = (0..k)
                        .map(|c| f64::from(x[i * k + c]) * f64::from(dense[j * k + c]))
                        .sum();
                    let got = f64::from(out[i * rows + j]);
                    assert!(
                        (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{ty:?} m={m} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn unsupported_shapes_and_types_fall_back() {
    let x = vec![0.0; 64];
    let mut out = vec![0.0; 2];
    assert!(!quant_rows_dot(GgmlType::Q6_K, &[0; 420], 210, &x, 1, 256, &mut out));
    assert!(
        !quant_rows_dot(GgmlType::Q4_1, &[0; 40], 20, &x, 9, 32, &mut out),
        "too many input rows"
    );
    assert!(
        !quant_rows_dot(GgmlType::Q4_1, &[0; 40], 20, &x, 1, 64, &mut out),
        "row bytes disagree with k"
    );
}
