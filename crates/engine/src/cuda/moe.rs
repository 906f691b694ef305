//! The mixture-of-experts MLP on the GPU (Mixtral-style, the CPU's semantics): the router's logits for the batch
//! are computed on the device and read back, each row's top-k experts and weights are chosen on the host exactly as
//! the CPU backend chooses them (`cpu::moe::routes_from_logits`), and each expert held here runs over its rows —
//! gather, gate|up GEMM, SwiGLU, down GEMM — its weighted output added into those rows of the residual stream.
//!
//! Under expert parallelism (each rank holds a contiguous share of every layer's experts, attention split by heads
//! as under tensor parallelism) every rank already holds every row after attention's all-reduce, so each runs its
//! own experts over all rows routed to them and the layer's closing all-reduce sums the shares: rank 0 adds them to
//! the residual, the others start from zeros — the row-parallel trick the dense MLP uses. Cost: one device→host
//! copy of `[rows, n_experts]` logits and one small upload per layer, so passes of a mixture-of-experts model wait
//! on the host once per layer and run without decode graphs.

use cudarc::cublas::sys::cudaDataType_t;
use cudarc::driver::CudaSlice;
use half::bf16;

use super::CudaError;
use super::forward::{Model, gemm};
use super::weights::{DeviceFeedForward, DeviceMatrix};
use crate::cpu::moe::routes_from_logits;

/// The per-pass buffers of the mixture: router logits `[rows, n_experts]`, an expert's gathered input rows and its
/// output rows (`[rows, hidden]` each, enough for every row at once).
#[derive(Debug)]
pub(super) struct MoeBuffers {
    pub logits: CudaSlice<f32>,
    pub rows: CudaSlice<bf16>,
    pub out: CudaSlice<f32>,
}

/// What one layer's mixture reads and writes.
pub(super) struct Mixture<'a> {
    pub router: &'a DeviceMatrix,
    /// The model's number of `local[0]`.
    pub first: usize,
    pub local: &'a [DeviceFeedForward],
    pub top_k: usize,
}

/// The layer's mixture over `t` rows of `normed` (bf16, the MLP norm's output), added into `x` (f32 `[t,
/// hidden]`): with `residual` 1 onto the residual stream, with 0 into zeros (a rank whose share the group's
/// all-reduce adds). `gate_up` and `act` are the dense MLP's buffers, reused per expert.
#[allow(clippy::too_many_arguments)]
pub(super) fn mixture(
    m: &Model<'_>,
    layer: &Mixture<'_>,
    normed: &CudaSlice<bf16>,
    t: usize,
    (gate_up, act): (&mut CudaSlice<bf16>, &mut CudaSlice<bf16>),
    bufs: &mut MoeBuffers,
    x: &mut CudaSlice<f32>,
    residual: f32,
) -> Result<(), CudaError> {
    let (stream, kernels, hidden) = (m.stream, m.kernels, m.cfg.hidden);
    let on = (m.blas, &**stream);
    let n_experts = layer.router.rows;
    gemm(
        on,
        normed,
        t,
        layer.router,
        &mut bufs.logits,
        cudaDataType_t::CUDA_R_32F,
        0.0,
    )?;
    let logits = stream.clone_dtoh(&bufs.logits.slice(..t * n_experts))?;
    let routes = routes_from_logits(&logits, n_experts, layer.top_k);
    // Each held expert's rows and weights, back to back in expert order, uploaded at once.
    let held = layer.first..layer.first + layer.local.len();
    let mut spans = Vec::with_capacity(layer.local.len());
    let (mut idx, mut weight) = (Vec::new(), Vec::new());
    for expert in held.clone() {
        let start = idx.len();
        for r in routes.iter().filter(|r| r.expert == expert) {
            idx.push(r.row as i32);
            weight.push(r.weight);
        }
        spans.push(start..idx.len());
    }
    if residual == 0.0 {
        stream.memset_zeros(&mut x.slice_mut(..t * hidden))?;
    }
    if idx.is_empty() {
        return Ok(());
    }
    let (idx, weight) = (stream.clone_htod(&idx)?, stream.clone_htod(&weight)?);
    for (ff, span) in layer.local.iter().zip(spans) {
        let n = span.len();
        if n == 0 {
            continue;
        }
        let inter = ff.gate_up.rows / 2;
        let rows = idx.slice(span.clone());
        kernels.gather_rows(stream, normed, t, &rows, &mut bufs.rows, hidden)?;
        gemm(
            on,
            &bufs.rows,
            n,
            &ff.gate_up,
            gate_up,
            cudaDataType_t::CUDA_R_16BF,
            0.0,
        )?;
        kernels.silu_mul(stream, gate_up, act, n, inter)?;
        gemm(on, act, n, &ff.down, &mut bufs.out, cudaDataType_t::CUDA_R_32F, 0.0)?;
        kernels.scatter_add_rows(stream, &bufs.out, &rows, &weight.slice(span), x, t, hidden)?;
    }
    Ok(())
}
