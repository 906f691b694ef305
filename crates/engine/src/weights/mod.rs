//! Model weights: reading a Llama-family checkpoint (GGUF or Hugging Face safetensors) into `LlamaWeights`.
//!
//! Linear layers keep their stored precision (see `Matrix`); norms become f32. q/k/v and gate/up are fused into one
//! matrix each so a layer runs one GEMM per projection group. A mixture-of-experts layer (Mixtral-style) holds a
//! router and one such MLP per expert. Loading checks every tensor's presence and shape against the config and
//! names the file and tensor when one is wrong.

mod gguf;
mod matrix;
mod safetensors;

pub use matrix::{Matrix, WeightData};

use crate::config::ModelConfig;
use crate::error::EngineError;

#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    /// `[q_dim + 2 * kv_dim, hidden]`: query rows, then key rows, then value rows.
    pub qkv: Matrix,
    pub qkv_bias: Option<Vec<f32>>,
    pub o: Matrix,
    pub mlp_norm: Vec<f32>,
    pub mlp: Mlp,
}

/// A layer's MLP: one SwiGLU block, or routed experts.
#[derive(Debug)]
pub enum Mlp {
    Dense(FeedForward),
    Experts(Experts),
}

/// A SwiGLU MLP: `down(silu(gate(x)) * up(x))` — a dense layer's MLP or one expert.
#[derive(Debug)]
pub struct FeedForward {
    /// `[2 * intermediate, hidden]`: gate rows, then up rows.
    pub gate_up: Matrix,
    pub down: Matrix,
}

impl FeedForward {
    fn byte_len(&self) -> usize {
        self.gate_up.byte_len() + self.down.byte_len()
    }
}

/// A mixture of experts: each token goes to the top `n_experts_used` experts of the router's softmax, their
/// outputs weighted by the renormalised probabilities.
#[derive(Debug)]
pub struct Experts {
    /// `[n_experts, hidden]`: one router logit per expert.
    pub router: Matrix,
    /// The model's expert number of `local[0]`: experts `first..first + local.len()` are held here (all of them on
    /// one device; a contiguous share on an expert-parallel rank).
    pub first: usize,
    pub local: Vec<FeedForward>,
}

impl Mlp {
    /// The dense MLP, if this layer has one.
    pub fn dense(&self) -> Option<&FeedForward> {
        match self {
            Mlp::Dense(ff) => Some(ff),
            Mlp::Experts(_) => None,
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            Mlp::Dense(ff) => ff.byte_len(),
            Mlp::Experts(e) => e.router.byte_len() + e.local.iter().map(FeedForward::byte_len).sum::<usize>(),
        }
    }
}

#[derive(Debug)]
pub struct LlamaWeights {
    pub embed: Matrix,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `None` when the output head is tied to the embedding.
    pub lm_head: Option<Matrix>,
}

impl LlamaWeights {
    pub fn byte_len(&self) -> usize {
        let layer_bytes: usize = self
            .layers
            .iter()
            .map(|l| {
                (l.attn_norm.len() + l.mlp_norm.len() + l.qkv_bias.as_ref().map_or(0, Vec::len)) * 4
                    + l.qkv.byte_len()
                    + l.o.byte_len()
                    + l.mlp.byte_len()
            })
            .sum();
        self.embed.byte_len() + layer_bytes + self.norm.len() * 4 + self.lm_head.as_ref().map_or(0, Matrix::byte_len)
    }

    pub fn head(&self) -> &Matrix {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

pub use gguf::load_gguf;
pub use safetensors::load_hf_dir;

/// Names and reads tensors of one checkpoint format; the assembly into `LlamaWeights` is shared.
trait TensorSource {
    fn has(&self, name: &str) -> bool;
    /// A `[rows, cols]` linear weight.
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, EngineError>;
    /// A `[n, rows, cols]` stack of linear weights (GGUF's experts), as one `[n · rows, cols]` matrix.
    fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Matrix, EngineError>;
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, EngineError>;
}

/// Tensor names of the per-layer and global weights in one format.
struct TensorNames {
    embed: &'static str,
    norm: &'static str,
    head: &'static str,
    layer: fn(usize, &str) -> String,
    experts: ExpertNames,
}

/// Where a format keeps a layer's experts.
enum ExpertNames {
    /// One `[n_experts, rows, cols]` tensor per projection (`gate`, `up`, `down`).
    Stacked(fn(usize, &str) -> String),
    /// One tensor per expert and projection: (layer, expert, projection).
    Each(fn(usize, usize, &str) -> String),
}

const GGUF_NAMES: TensorNames = TensorNames {
    embed: "token_embd.weight",
    norm: "output_norm.weight",
    head: "output.weight",
    layer: |i, part| {
        let suffix = match part {
            "attn_norm" => "attn_norm.weight",
            "q" => "attn_q.weight",
            "k" => "attn_k.weight",
            "v" => "attn_v.weight",
            "q_bias" => "attn_q.bias",
            "k_bias" => "attn_k.bias",
            "v_bias" => "attn_v.bias",
            "o" => "attn_output.weight",
            "mlp_norm" => "ffn_norm.weight",
            "gate" => "ffn_gate.weight",
            "up" => "ffn_up.weight",
            "router" => "ffn_gate_inp.weight",
            _ => "ffn_down.weight",
        };
        format!("blk.{i}.{suffix}")
    },
    experts: ExpertNames::Stacked(|i, part| format!("blk.{i}.ffn_{part}_exps.weight")),
};

const HF_NAMES: TensorNames = TensorNames {
    embed: "model.embed_tokens.weight",
    norm: "model.norm.weight",
    head: "lm_head.weight",
    layer: |i, part| {
        let suffix = match part {
            "attn_norm" => "input_layernorm.weight",
            "q" => "self_attn.q_proj.weight",
            "k" => "self_attn.k_proj.weight",
            "v" => "self_attn.v_proj.weight",
            "q_bias" => "self_attn.q_proj.bias",
            "k_bias" => "self_attn.k_proj.bias",
            "v_bias" => "self_attn.v_proj.bias",
            "o" => "self_attn.o_proj.weight",
            "mlp_norm" => "post_attention_layernorm.weight",
            "gate" => "mlp.gate_proj.weight",
            "up" => "mlp.up_proj.weight",
            "router" => "block_sparse_moe.gate.weight",
            _ => "mlp.down_proj.weight",
        };
        format!("model.layers.{i}.{suffix}")
    },
    experts: ExpertNames::Each(|i, e, part| {
        let w = match part {
            "gate" => "w1",
            "up" => "w3",
            _ => "w2",
        };
        format!("model.layers.{i}.block_sparse_moe.experts.{e}.{w}.weight")
    }),
};

/// Assembles the model from a source. `unpermute_qk` undoes llama.cpp's interleaving of q/k rows for its
/// adjacent-pair RoPE, so one rotate-half RoPE serves every format.
fn assemble(
    src: &dyn TensorSource,
    names: &TensorNames,
    cfg: &ModelConfig,
    unpermute_qk: bool,
) -> Result<LlamaWeights, EngineError> {
    let (h, q_dim, kv_dim, inter) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate);
    let mut layers = Vec::with_capacity(cfg.n_layers);
    for i in 0..cfg.n_layers {
        let name = |part: &str| (names.layer)(i, part);
        let mut q = src.matrix(&name("q"), q_dim, h)?;
        let mut k = src.matrix(&name("k"), kv_dim, h)?;
        if unpermute_qk {
            q = q.permute_rows(&rope_unpermutation(cfg.n_heads, cfg.head_dim));
            k = k.permute_rows(&rope_unpermutation(cfg.n_kv_heads, cfg.head_dim));
        }
        let v = src.matrix(&name("v"), kv_dim, h)?;
        let qkv_bias = if cfg.qkv_bias {
            let mut bias = src.vector(&name("q_bias"), q_dim)?;
            bias.extend(src.vector(&name("k_bias"), kv_dim)?);
            bias.extend(src.vector(&name("v_bias"), kv_dim)?);
            Some(bias)
        } else {
            None
        };
        layers.push(LayerWeights {
            attn_norm: src.vector(&name("attn_norm"), h)?,
            qkv: Matrix::concat_rows(vec![q, k, v]),
            qkv_bias,
            o: src.matrix(&name("o"), h, q_dim)?,
            mlp_norm: src.vector(&name("mlp_norm"), h)?,
            mlp: if cfg.is_moe() {
                Mlp::Experts(experts(src, names, cfg, i)?)
            } else {
                Mlp::Dense(FeedForward {
                    gate_up: Matrix::concat_rows(vec![
                        src.matrix(&name("gate"), inter, h)?,
                        src.matrix(&name("up"), inter, h)?,
                    ]),
                    down: src.matrix(&name("down"), h, inter)?,
                })
            },
        });
    }
    let lm_head = if !cfg.tie_embeddings && src.has(names.head) {
        Some(src.matrix(names.head, cfg.vocab_size, h)?)
    } else {
        None
    };
    Ok(LlamaWeights {
        embed: src.matrix(names.embed, cfg.vocab_size, h)?,
        layers,
        norm: src.vector(names.norm, h)?,
        lm_head,
    })
}

/// Layer `layer`'s router and experts.
fn experts(
    src: &dyn TensorSource,
    names: &TensorNames,
    cfg: &ModelConfig,
    layer: usize,
) -> Result<Experts, EngineError> {
    let (h, inter, n) = (cfg.hidden, cfg.intermediate, cfg.n_experts);
    let projections: [Vec<Matrix>; 3] = match names.experts {
        ExpertNames::Stacked(name) => [
            src.stacked(&name(layer, "gate"), n, inter, h)?.split_rows(n),
            src.stacked(&name(layer, "up"), n, inter, h)?.split_rows(n),
            src.stacked(&name(layer, "down"), n, h, inter)?.split_rows(n),
        ],
        ExpertNames::Each(name) => {
            let each = |part: &str, rows: usize, cols: usize| -> Result<Vec<Matrix>, EngineError> {
                (0..n).map(|e| src.matrix(&name(layer, e, part), rows, cols)).collect()
            };
            [each("gate", inter, h)?, each("up", inter, h)?, each("down", h, inter)?]
        }
    };
    let [gate, up, down] = projections;
    let local = gate
        .into_iter()
        .zip(up)
        .zip(down)
        .map(|((gate, up), down)| FeedForward {
            gate_up: Matrix::concat_rows(vec![gate, up]),
            down,
        })
        .collect();
    Ok(Experts {
        router: src.matrix(&(names.layer)(layer, "router"), n, h)?,
        first: 0,
        local,
    })
}

/// Row order that turns llama.cpp's interleaved q/k rows back into Hugging Face's half-split layout: within each
/// head, HF row `i2 * half + j` is stored at row `2 * j + i2`.
fn rope_unpermutation(n_heads: usize, head_dim: usize) -> Vec<usize> {
    let half = head_dim / 2;
    let mut order = Vec::with_capacity(n_heads * head_dim);
    for head in 0..n_heads {
        for i2 in 0..2 {
            for j in 0..half {
                order.push(head * head_dim + 2 * j + i2);
            }
        }
    }
    order
}
