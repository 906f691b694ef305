use super::*;

/// A `rows × cols` Q8_0 matrix (blocks of 32: an f16 scale, then 32 signed bytes) with varied values.
fn q8_0(rows: usize, cols: usize) -> Matrix {
    let mut bytes = Vec::new();
    for r in 0..rows {
        for b in 0..cols / 32 {
            bytes.extend(f16::from_f32(0.5 + (r * 7 + b) as f32 * 0.25).to_le_bytes());
            bytes.extend((0..32).map(|j| ((r * 31 + b * 17 + j * 5) % 255) as u8));
        }
    }
    Matrix {
        rows,
        cols,
        data: WeightData::Quantized {
            ty: GgmlType::Q8_0,
            bytes,
            row_bytes: cols / 32 * 34,
        },
    }
}

fn dense(m: &Matrix) -> Vec<f32> {
    let mut out = vec![0.0; m.rows * m.cols];
    m.dequantize_rows(0, &mut out);
    out
}

fn columns(values: &[f32], cols: usize, c0: usize, n: usize) -> Vec<f32> {
    values
        .chunks_exact(cols)
        .flat_map(|row| row[c0..c0 + n].to_vec())
        .collect()
}

#[test]
fn column_slices_keep_block_quantized_rows_quantized_and_equal_the_dense_columns() {
    let m = q8_0(3, 128);
    let full = dense(&m);
    let aligned = m.slice_cols(32, 64);
    assert!(matches!(aligned.data, WeightData::Quantized { row_bytes: 68, .. }));
    assert_eq!((aligned.rows, aligned.cols), (3, 64));
    assert_eq!(dense(&aligned), columns(&full, 128, 32, 64));

    // A cut inside a block cannot stay quantized: the shard is dequantized, with the same values.
    let unaligned = m.slice_cols(16, 48);
    assert!(matches!(unaligned.data, WeightData::F32(_)));
    assert_eq!(dense(&unaligned), columns(&full, 128, 16, 48));

    let plain = Matrix::f32(2, 4, (0..8).map(|i| i as f32).collect());
    assert_eq!(dense(&plain.slice_cols(1, 2)), vec![1.0, 2.0, 5.0, 6.0]);
}

#[test]
fn gathering_rows_takes_a_subset_in_order() {
    let m = q8_0(4, 64);
    let full = dense(&m);
    let picked = q8_0(4, 64).permute_rows(&[3, 1]);
    assert_eq!((picked.rows, picked.cols), (2, 64));
    let want: Vec<f32> = full[3 * 64..4 * 64].iter().chain(&full[64..128]).copied().collect();
    assert_eq!(dense(&picked), want);
}
