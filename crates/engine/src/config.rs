//! The shape and numerics of a Llama-family model, read from GGUF metadata or a Hugging Face `config.json`.
//!
//! Invariant: a `ModelConfig` that exists is self-consistent (heads divide evenly, dimensions non-zero), so the
//! model code never re-checks shapes. Parsing costs microseconds.

use std::path::Path;

use cleave_gguf::GgufFile;
use serde::Deserialize;

use crate::error::EngineError;

/// Llama-3 style RoPE frequency scaling (`rope_type: llama3`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    pub factor: f32,
    pub low_freq_factor: f32,
    pub high_freq_factor: f32,
    pub original_max_position_embeddings: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Architecture name as the file states it (`llama`, `mistral`, `qwen2`, ...).
    pub architecture: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rope_theta: f32,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub rms_eps: f32,
    pub max_context: usize,
    pub tie_embeddings: bool,
    /// Qwen2-style biases on the q/k/v projections.
    pub qkv_bias: bool,
    /// Routed experts per layer (Mixtral-style mixture of experts); 0 for a dense MLP. Each expert is a SwiGLU MLP
    /// of width `intermediate`.
    pub n_experts: usize,
    /// Experts each token is routed to (top-k of the router's softmax, renormalised); 0 for a dense MLP.
    pub n_experts_used: usize,
}

impl ModelConfig {
    /// Reads `<arch>.*` keys from GGUF metadata. `tie_embeddings` is decided by the loader from the tensors present.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, EngineError> {
        let arch = file.architecture()?.to_string();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(EngineError::model(
                file.path(),
                format!("unsupported architecture '{arch}' (supported: llama, mistral, qwen2)"),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_key = |k: &str| -> Result<usize, EngineError> { Ok(file.get_u64(&key(k))? as usize) };
        let optional = |k: &str| -> Result<usize, EngineError> {
            match file.get(&key(k)) {
                Some(_) => usize_key(k),
                None => Ok(0),
            }
        };
        let hidden = usize_key("embedding_length")?;
        let n_heads = usize_key("attention.head_count")?;
        let n_kv_heads = match file.get(&key("attention.head_count_kv")) {
            Some(_) => usize_key("attention.head_count_kv")?,
            None => n_heads,
        };
        let head_dim = match file.get(&key("attention.key_length")) {
            Some(_) => usize_key("attention.key_length")?,
            None if n_heads > 0 => hidden / n_heads,
            None => 0,
        };
        let vocab_size = match file.get(&key("vocab_size")) {
            Some(_) => usize_key("vocab_size")?,
            None => file.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_theta = match file.get(&key("rope.freq_base")) {
            Some(_) => file.get_f32(&key("rope.freq_base"))?,
            None => 10_000.0,
        };
        let rope_scaling = match file.get(&key("rope.scaling.type")) {
            Some(_) if file.get_str(&key("rope.scaling.type"))? == "llama3" => Some(Llama3RopeScaling {
                factor: file.get_f32(&key("rope.scaling.factor"))?,
                low_freq_factor: file.get_f32(&key("rope.scaling.low_freq_factor")).unwrap_or(1.0),
                high_freq_factor: file.get_f32(&key("rope.scaling.high_freq_factor")).unwrap_or(4.0),
                original_max_position_embeddings: file
                    .get_u64(&key("rope.scaling.original_context_length"))
                    .unwrap_or(8192) as usize,
            }),
            Some(_) => {
                let kind = file.get_str(&key("rope.scaling.type"))?;
                if kind != "none" {
                    return Err(EngineError::model(
                        file.path(),
                        format!("unsupported rope scaling '{kind}'"),
                    ));
                }
                None
            }
            None => None,
        };
        let config = ModelConfig {
            n_layers: usize_key("block_count")?,
            hidden,
            intermediate: usize_key("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            rope_theta,
            rope_scaling,
            rms_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            max_context: usize_key("context_length")?,
            tie_embeddings: file.tensor("output.weight").is_none(),
            qkv_bias: file.tensor("blk.0.attn_q.bias").is_some(),
            n_experts: optional("expert_count")?,
            n_experts_used: optional("expert_used_count")?,
            architecture: arch,
        };
        config.validate(file.path())
    }

    /// Reads a Hugging Face `config.json` (transformers 4.x `rope_scaling` and 5.x `rope_parameters` forms).
    pub fn from_hf_config(path: &Path) -> Result<Self, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
        let raw: HfConfig =
            serde_json::from_str(&text).map_err(|e| EngineError::model(path, format!("invalid config.json: {e}")))?;
        let model_type = raw.model_type.unwrap_or_else(|| "llama".to_string());
        if !matches!(model_type.as_str(), "llama" | "mistral" | "mixtral" | "qwen2") {
            return Err(EngineError::model(
                path,
                format!("unsupported model_type '{model_type}' (supported: llama, mistral, mixtral, qwen2)"),
            ));
        }
        let rope = raw.rope_parameters.or(raw.rope_scaling);
        let rope_theta = rope
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            Some(r) => match r.rope_type.as_deref().or(r.kind.as_deref()) {
                Some("llama3") => Some(Llama3RopeScaling {
                    factor: r.factor.unwrap_or(8.0),
                    low_freq_factor: r.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: r.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: r.original_max_position_embeddings.unwrap_or(8192),
                }),
                Some("default") | None => None,
                Some(other) => {
                    return Err(EngineError::model(path, format!("unsupported rope_type '{other}'")));
                }
            },
            None => None,
        };
        let n_heads = raw.num_attention_heads;
        let config = ModelConfig {
            architecture: model_type.clone(),
            n_layers: raw.num_hidden_layers,
            hidden: raw.hidden_size,
            intermediate: raw.intermediate_size,
            n_heads,
            n_kv_heads: raw.num_key_value_heads.unwrap_or(n_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size.checked_div(n_heads).unwrap_or(0)),
            vocab_size: raw.vocab_size,
            rope_theta,
            rope_scaling,
            rms_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            max_context: raw.max_position_embeddings.unwrap_or(4096),
            tie_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias: raw.attention_bias.unwrap_or(model_type == "qwen2"),
            n_experts: raw.num_local_experts.unwrap_or(0),
            n_experts_used: raw.num_experts_per_tok.unwrap_or(0),
        };
        config.validate(path)
    }

    fn validate(self, path: &Path) -> Result<Self, EngineError> {
        let bad = |what: String| Err(EngineError::model(path, what));
        if self.n_layers == 0 || self.hidden == 0 || self.intermediate == 0 || self.vocab_size == 0 {
            return bad(format!("model dimensions must be non-zero: {self:?}"));
        }
        if self.n_heads == 0 || self.n_kv_heads == 0 || self.head_dim == 0 {
            return bad(format!("attention heads and head dim must be non-zero: {self:?}"));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "query heads ({}) must be a multiple of key/value heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.n_experts > 0 && (self.n_experts_used == 0 || self.n_experts_used > self.n_experts) {
            return bad(format!(
                "experts per token ({}) must be between 1 and the number of experts ({})",
                self.n_experts_used, self.n_experts
            ));
        }
        if self.n_experts == 0 && self.n_experts_used > 0 {
            return bad(format!("{} experts per token but no experts", self.n_experts_used));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head dim {} must be even for RoPE", self.head_dim));
        }
        if self.rms_eps.is_nan() || self.rms_eps <= 0.0 || self.rope_theta.is_nan() || self.rope_theta <= 0.0 {
            return bad("rms epsilon and rope theta must be positive".to_string());
        }
        Ok(self)
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Whether each layer's MLP is a mixture of routed experts.
    pub fn is_moe(&self) -> bool {
        self.n_experts > 0
    }

    /// Parameters, counting the output head once when tied.
    pub fn n_params(&self) -> usize {
        let attn = self.hidden * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * self.hidden;
        let mlp = 3 * self.hidden * self.intermediate * self.n_experts.max(1) + self.hidden * self.n_experts;
        let per_layer = attn + mlp + 2 * self.hidden;
        let head = if self.tie_embeddings {
            0
        } else {
            self.vocab_size * self.hidden
        };
        self.n_layers * per_layer + self.vocab_size * self.hidden + head + self.hidden
    }

    /// Parameters a batch-1 decode step leaves unread: the experts a token is not routed to (every layer's
    /// `n_experts − n_experts_used` of them; none in a dense model).
    pub fn unrouted_expert_params(&self) -> usize {
        let unused = self.n_experts.saturating_sub(self.n_experts_used);
        self.n_layers * unused * 3 * self.hidden * self.intermediate
    }

    /// RoPE inverse frequencies for each of the `head_dim / 2` rotation pairs, with Llama-3 scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        (0..half)
            .map(|i| {
                let inv = 1.0 / self.rope_theta.powf((2 * i) as f32 / self.head_dim as f32);
                match self.rope_scaling {
                    Some(s) => llama3_scale(inv, s),
                    None => inv,
                }
            })
            .collect()
    }
}

fn llama3_scale(inv_freq: f32, s: Llama3RopeScaling) -> f32 {
    let old_len = s.original_max_position_embeddings as f32;
    let low_wavelen = old_len / s.low_freq_factor;
    let high_wavelen = old_len / s.high_freq_factor;
    let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
    if wavelen < high_wavelen {
        inv_freq
    } else if wavelen > low_wavelen {
        inv_freq / s.factor
    } else {
        let smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRope>,
    rope_parameters: Option<HfRope>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
}

#[derive(Deserialize)]
struct HfRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    rope_theta: Option<f32>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mixtral-8x7B's shape (the synthetic one) leaves 6 of 8 experts unread per token: 32 layers × 6 × 3 × 4096 × 14336 parameters,
    /// i.e. a batch-1 step reads ~12.9 B of its ~46.7 B; a dense model leaves nothing.
    #[test]
    fn unrouted_experts_are_what_a_batch_1_step_skips() {
        let mixtral = crate::cuda::synthetic_config("mixtral-8x7b").unwrap();
        assert_eq!(mixtral.unrouted_expert_params(), 32 * 6 * 3 * 4096 * 14_336);
        let active = mixtral.n_params() - mixtral.unrouted_expert_params();
        assert!((12.5e9..13.5e9).contains(&(active as f64)), "{active}");
        let dense = ModelConfig {
            n_experts: 0,
            n_experts_used: 0,
            ..mixtral
        };
        assert_eq!(dense.unrouted_expert_params(), 0);
    }
}
