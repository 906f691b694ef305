//! `out[m, n] = x[m, k] · Wᵀ` for a weight matrix `W[n, k]` in any stored precision.
//!
//! Three regimes, by the number of input rows `m`. Few (decode, up to 16): block-quantized weight rows are
//! dequantized in registers and dotted with every input row (`qdot`), so memory traffic is the stored weight size —
//! the bound for batch-1 decode. Medium: panels of weight rows are dequantized into a per-thread buffer sized for L2
//! and multiplied with the `gemm` crate's register-blocked kernels. Many (prefill): the whole weight is dequantized
//! once and multiplied in one parallel GEMM. Work is split over output features with rayon, so threads write
//! disjoint columns of `out`.

use rayon::prelude::*;

use super::qdot;
use crate::weights::{Matrix, WeightData};

/// At or below this many input rows the fused row-dot kernel beats dequantize-then-GEMM (measured: docs/perf.md).
const ROW_DOT_MAX_M: usize = 16;
/// At or above this many input rows the whole weight is dequantized once and multiplied in one parallel GEMM,
/// so `gemm` packs the input once instead of once per panel.
const WHOLE_MATRIX_MIN_M: usize = 128;
/// Bytes of f32 weights dequantized per GEMM panel (about L2); larger panels pack the input fewer times.
const PANEL_BYTES: usize = 512 * 1024;

/// A raw pointer that may cross threads; every user writes a disjoint region.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only to hand disjoint output regions to rayon tasks; see each use.
#[allow(unsafe_code)]
unsafe impl Send for SyncPtr {}
#[allow(unsafe_code)]
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// Going through a method makes closures capture the whole wrapper (edition 2021 captures fields otherwise).
    fn get(self) -> *mut f32 {
        self.0
    }
}

pub fn matmul(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    assert_eq!(x.len(), m * k, "matmul input shape");
    assert_eq!(out.len(), m * n, "matmul output shape");
    if m == 0 || n == 0 {
        return;
    }
    if let Some(dense) = w.as_f32() {
        gemm_f32(m, n, k, x, dense, out, true);
    } else if m <= ROW_DOT_MAX_M {
        row_dot(x, m, w, out);
    } else if m >= WHOLE_MATRIX_MIN_M {
        let mut dense = vec![0.0f32; n * k];
        let rows_per_task = n.div_ceil(rayon::current_num_threads() * 4).max(1);
        dense
            .par_chunks_mut(rows_per_task * k)
            .enumerate()
            .for_each(|(i, rows)| w.dequantize_rows(i * rows_per_task, rows));
        gemm_f32(m, n, k, x, &dense, out, true);
    } else {
        panel_gemm(x, m, w, out);
    }
}

fn row_dot(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let rows_per_task = (n / (rayon::current_num_threads() * 8)).clamp(16, 256);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..n.div_ceil(rows_per_task)).into_par_iter().for_each(|task| {
        let r0 = task * rows_per_task;
        let r1 = (r0 + rows_per_task).min(n);
        let mut local = vec![0.0f32; m * (r1 - r0)];
        let fused = match &w.data {
            WeightData::Quantized { ty, bytes, row_bytes } => {
                let rows = &bytes[r0 * row_bytes..r1 * row_bytes];
                // Groups of input rows share each dequantized block; the task's weight rows stay in L2 across groups.
                (0..m).step_by(qdot::MAX_ROWS).all(|i0| {
                    let g = qdot::MAX_ROWS.min(m - i0);
                    let dst = &mut local[i0 * (r1 - r0)..(i0 + g) * (r1 - r0)];
                    qdot::quant_rows_dot(*ty, rows, *row_bytes, &x[i0 * k..(i0 + g) * k], g, k, dst)
                })
            }
            _ => false,
        };
        if !fused {
            SCRATCH.with_borrow_mut(|buf| {
                buf.resize((r1 - r0) * k, 0.0);
                w.dequantize_rows(r0, buf);
                for (j, wrow) in buf.chunks_exact(k).enumerate() {
                    for i in 0..m {
                        local[i * (r1 - r0) + j] = dot(&x[i * k..(i + 1) * k], wrow);
                    }
                }
            });
        }
        for i in 0..m {
            for j in 0..r1 - r0 {
                // SAFETY: element (i, r0 + j) lies inside `out` (i < m, r0 + j < n) and rows r0..r1 belong to
                // this task only.
                #[allow(unsafe_code)]
                unsafe {
                    *out_ptr.get().add(i * n + r0 + j) = local[i * (r1 - r0) + j];
                }
            }
        }
    });
}

thread_local! {
    /// Per-thread dequantization buffer, reused across calls so hot loops never allocate or zero memory.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn panel_gemm(x: &[f32], m: usize, w: &Matrix, out: &mut [f32]) {
    let (n, k) = (w.rows, w.cols);
    let panel_rows = (PANEL_BYTES / (4 * k)).clamp(8, 4096);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    (0..n.div_ceil(panel_rows)).into_par_iter().for_each(|task| {
        SCRATCH.with_borrow_mut(|buf| {
            let r0 = task * panel_rows;
            let r1 = (r0 + panel_rows).min(n);
            buf.resize((r1 - r0) * k, 0.0);
            let panel = &mut buf[..];
            w.dequantize_rows(r0, panel);
            // SAFETY: dst covers columns r0..r1 of every output row (row stride n) — inside `out` and disjoint from
            // other tasks' columns; lhs is x [m, k] row-major; rhs is the panel read as [k, r1 - r0] (column stride
            // k). All pointers are valid for the extents gemm reads and writes.
            #[allow(unsafe_code)]
            unsafe {
                gemm::gemm(
                    m,
                    r1 - r0,
                    k,
                    out_ptr.get().add(r0),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    panel.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    });
}

/// `out[m, n] = a[m, k] · b[n, k]ᵀ` with both operands dense f32 and row-major.
pub fn gemm_f32(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], out: &mut [f32], parallel: bool) {
    assert!(
        a.len() >= m * k && b.len() >= n * k && out.len() >= m * n,
        "gemm_f32 shapes"
    );
    let parallelism = if parallel && m * n * k >= 1 << 18 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every extent gemm touches: dst [m, n] (row stride n), lhs [m, k] (row stride
    // k), rhs read as [k, n] with column stride k.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A read-only strided view of a row-major-or-transposed f32 matrix.
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub row_stride: usize,
    pub col_stride: usize,
}

impl MatRef<'_> {
    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// A writable row-major matrix view with a row stride (columns contiguous).
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub row_stride: usize,
}

/// `out[m, n] = scale · a[m, k] · b[k, n]` on strided views, single-threaded (callers parallelise outside).
pub fn gemm_strided(m: usize, n: usize, k: usize, a: MatRef<'_>, b: MatRef<'_>, out: MatMut<'_>, scale: f32) {
    let MatMut {
        data: out,
        row_stride: out_row_stride,
    } = out;
    assert!(a.covers(m, k) && b.covers(k, n), "gemm_strided operand shapes");
    assert!(
        m == 0 || n == 0 || (m - 1) * out_row_stride + n <= out.len(),
        "gemm_strided output shape"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the asserts above prove every element gemm reads (a: m×k, b: k×n at their strides) and writes
    // (out: m×n at row stride `out_row_stride`, column stride 1) lies inside the slices.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_row_stride as isize,
            false,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            0.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Dot product with eight independent accumulators so the compiler can keep a vector register per lane.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features the function is compiled for (checked just above).
            #[allow(unsafe_code)]
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks_a = a.chunks_exact(16);
    let chunks_b = b.chunks_exact(16);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for l in 0..16 {
            acc[l] = ca[l].mul_add(cb[l], acc[l]);
        }
    }
    let mut s = 0.0;
    for v in acc {
        s += v;
    }
    s + tail
}
