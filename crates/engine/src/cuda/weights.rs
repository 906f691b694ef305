//! The model's weights on the device, in bf16 (norms and biases in f32): converted from the host weights (GGUF
//! dequantized or safetensors, each matrix once) or filled with seeded random values of a named shape.
//!
//! Invariant: every matrix is row-major `[out_features, in_features]`, the layout the host weights use and the
//! GEMM helper expects. Cost: one host bf16 copy of the largest matrix at a time while uploading.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::bf16;

use super::CudaError;
use crate::config::ModelConfig;
use crate::weights::{FeedForward, LlamaWeights, Matrix, Mlp};
use cleave_kernels::Kernels;

#[derive(Debug)]
pub(super) struct DeviceMatrix {
    pub rows: usize,
    pub cols: usize,
    pub data: CudaSlice<bf16>,
}

#[derive(Debug)]
pub(super) struct DeviceLayer {
    pub attn_norm: CudaSlice<f32>,
    pub qkv: DeviceMatrix,
    pub qkv_bias: Option<CudaSlice<f32>>,
    pub o: DeviceMatrix,
    pub mlp_norm: CudaSlice<f32>,
    pub mlp: DeviceMlp,
}

/// A SwiGLU MLP on the device: `[2 · intermediate, hidden]` gate rows then up rows, and the down projection.
#[derive(Debug)]
pub(super) struct DeviceFeedForward {
    pub gate_up: DeviceMatrix,
    pub down: DeviceMatrix,
}

#[derive(Debug)]
pub(super) enum DeviceMlp {
    Dense(DeviceFeedForward),
    /// A mixture of experts: the router (`[n_experts, hidden]`, whole) and the experts `first..first +
    /// local.len()` held here (all of them, or an expert-parallel rank's share).
    Experts {
        router: DeviceMatrix,
        first: usize,
        local: Vec<DeviceFeedForward>,
    },
}

impl DeviceMlp {
    pub fn byte_len(&self) -> usize {
        let ff = |f: &DeviceFeedForward| (f.gate_up.data.len() + f.down.data.len()) * 2;
        match self {
            DeviceMlp::Dense(f) => ff(f),
            DeviceMlp::Experts { router, local, .. } => router.data.len() * 2 + local.iter().map(ff).sum::<usize>(),
        }
    }

    pub fn is_experts(&self) -> bool {
        matches!(self, DeviceMlp::Experts { .. })
    }
}

#[derive(Debug)]
pub(super) struct DeviceWeights {
    pub embed: DeviceMatrix,
    pub layers: Vec<DeviceLayer>,
    pub norm: CudaSlice<f32>,
    /// `None` when the output head is the embedding.
    pub lm_head: Option<DeviceMatrix>,
}

impl DeviceWeights {
    /// Whether any layer is a mixture of experts.
    pub fn has_experts(&self) -> bool {
        self.layers.iter().any(|l| l.mlp.is_experts())
    }

    pub fn head(&self) -> &DeviceMatrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    pub fn byte_len(&self) -> usize {
        let m = |m: &DeviceMatrix| m.data.len() * 2;
        let layers: usize = self
            .layers
            .iter()
            .map(|l| m(&l.qkv) + m(&l.o) + l.mlp.byte_len() + 4 * (l.attn_norm.len() + l.mlp_norm.len()))
            .sum();
        m(&self.embed) + layers + self.lm_head.as_ref().map_or(0, m) + 4 * self.norm.len()
    }

    /// Uploads host weights, converting every matrix to bf16.
    pub fn upload(stream: &Arc<CudaStream>, weights: &LlamaWeights) -> Result<Self, CudaError> {
        let matrix = |m: &Matrix| upload_matrix(stream, m);
        let floats = |v: &[f32]| stream.clone_htod(v).map_err(CudaError::from);
        let mut layers = Vec::with_capacity(weights.layers.len());
        let feed_forward = |ff: &FeedForward| -> Result<DeviceFeedForward, CudaError> {
            Ok(DeviceFeedForward {
                gate_up: matrix(&ff.gate_up)?,
                down: matrix(&ff.down)?,
            })
        };
        for l in &weights.layers {
            let mlp = match &l.mlp {
                Mlp::Dense(ff) => DeviceMlp::Dense(feed_forward(ff)?),
                Mlp::Experts(e) => DeviceMlp::Experts {
                    router: matrix(&e.router)?,
                    first: e.first,
                    local: e.local.iter().map(feed_forward).collect::<Result<_, _>>()?,
                },
            };
            layers.push(DeviceLayer {
                attn_norm: floats(&l.attn_norm)?,
                qkv: matrix(&l.qkv)?,
                qkv_bias: l.qkv_bias.as_deref().map(floats).transpose()?,
                o: matrix(&l.o)?,
                mlp_norm: floats(&l.mlp_norm)?,
                mlp,
            });
        }
        Ok(DeviceWeights {
            embed: matrix(&weights.embed)?,
            layers,
            norm: floats(&weights.norm)?,
            lm_head: weights.lm_head.as_ref().map(matrix).transpose()?,
        })
    }

    /// Random weights of `config`'s shape from `seed`, built on the device. Matrices are uniform with the
    /// variance of a 1/sqrt(fan-in) initialisation, so activations stay in range through every layer; norm weights
    /// are ones. A mixture of experts gets experts `experts` of each layer (all of them, or a rank's share).
    pub fn synthetic(
        stream: &Arc<CudaStream>,
        kernels: &Kernels,
        config: &ModelConfig,
        seed: u64,
        experts: std::ops::Range<usize>,
    ) -> Result<Self, CudaError> {
        let mut next_seed = seed;
        let mut matrix = |rows: usize, cols: usize| -> Result<DeviceMatrix, CudaError> {
            // SAFETY-free: alloc_zeros then fill; zeros are valid bf16.
            let mut data = stream.alloc_zeros::<bf16>(rows * cols)?;
            next_seed = next_seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let scale = (3.0 / cols as f32).sqrt();
            kernels.fill_uniform(stream, &mut data, next_seed, scale)?;
            Ok(DeviceMatrix { rows, cols, data })
        };
        let (h, q, kv, inter) = (config.hidden, config.q_dim(), config.kv_dim(), config.intermediate);
        let embed = matrix(config.vocab_size, h)?;
        let mut layers = Vec::with_capacity(config.n_layers);
        for _ in 0..config.n_layers {
            layers.push(DeviceLayer {
                attn_norm: stream.clone_htod(&vec![1.0f32; h])?,
                qkv: matrix(q + 2 * kv, h)?,
                qkv_bias: None,
                o: matrix(h, q)?,
                mlp_norm: stream.clone_htod(&vec![1.0f32; h])?,
                mlp: match config.is_moe() {
                    false => DeviceMlp::Dense(DeviceFeedForward {
                        gate_up: matrix(2 * inter, h)?,
                        down: matrix(h, inter)?,
                    }),
                    true => DeviceMlp::Experts {
                        router: matrix(config.n_experts, h)?,
                        first: experts.start,
                        local: experts
                            .clone()
                            .map(|_| {
                                Ok(DeviceFeedForward {
                                    gate_up: matrix(2 * inter, h)?,
                                    down: matrix(h, inter)?,
                                })
                            })
                            .collect::<Result<_, CudaError>>()?,
                    },
                },
            });
        }
        let lm_head = if config.tie_embeddings {
            None
        } else {
            Some(matrix(config.vocab_size, h)?)
        };
        Ok(DeviceWeights {
            embed,
            layers,
            norm: stream.clone_htod(&vec![1.0f32; h])?,
            lm_head,
        })
    }
}

/// Dequantizes a host matrix a slab of rows at a time and uploads it as bf16.
fn upload_matrix(stream: &Arc<CudaStream>, m: &Matrix) -> Result<DeviceMatrix, CudaError> {
    let mut host = Vec::with_capacity(m.rows * m.cols);
    const SLAB_ROWS: usize = 256;
    let mut rows_f32 = vec![0.0f32; SLAB_ROWS * m.cols];
    let mut r = 0;
    while r < m.rows {
        let n = SLAB_ROWS.min(m.rows - r);
        let slab = &mut rows_f32[..n * m.cols];
        m.dequantize_rows(r, slab);
        host.extend(slab.iter().map(|&v| bf16::from_f32(v)));
        r += n;
    }
    Ok(DeviceMatrix {
        rows: m.rows,
        cols: m.cols,
        data: stream.clone_htod(&host)?,
    })
}
