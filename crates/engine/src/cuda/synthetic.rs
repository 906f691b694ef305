//! Named model shapes for `synthetic:<shape>` models: random bf16 weights built on the device, no download — for
//! benchmarks and for checking the CUDA path against PyTorch with the same random weights.

use crate::config::{Llama3RopeScaling, ModelConfig};
use crate::error::EngineError;

/// The shapes `synthetic:` knows, by name.
pub const SYNTHETIC_SHAPES: [&str; 4] = ["llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b", "mixtral-8x7b"];

/// The configuration of a named shape: the published Llama-3 ones (vocabulary 128,256, RoPE scaling of Llama 3.1),
/// and Mixtral-8x7B's mixture of experts.
pub fn synthetic_config(shape: &str) -> Result<ModelConfig, EngineError> {
    if shape == "mixtral-8x7b" {
        return Ok(mixtral_8x7b());
    }
    let (n_layers, hidden, intermediate, n_heads, n_kv_heads, tie) = match shape {
        "llama-3.2-1b" => (16, 2048, 8192, 32, 8, true),
        "llama-3.1-8b" => (32, 4096, 14336, 32, 8, false),
        "llama-3.1-70b" => (80, 8192, 28672, 64, 8, false),
        other => {
            return Err(EngineError::invalid(
                "model",
                format!(
                    "unknown synthetic shape {other:?} (known: {})",
                    SYNTHETIC_SHAPES.join(", ")
                ),
            ));
        }
    };
    Ok(ModelConfig {
        architecture: "llama".to_owned(),
        n_layers,
        hidden,
        intermediate,
        n_heads,
        n_kv_heads,
        head_dim: hidden / n_heads,
        vocab_size: 128_256,
        rope_theta: 500_000.0,
        rope_scaling: Some(Llama3RopeScaling {
            factor: if shape == "llama-3.2-1b" { 32.0 } else { 8.0 },
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        }),
        rms_eps: 1e-5,
        max_context: 131_072,
        tie_embeddings: tie,
        qkv_bias: false,
        n_experts: 0,
        n_experts_used: 0,
    })
}

/// Mixtral-8x7B's published shape: 32 layers of 8 experts (top-2), 4,096 wide, 32 query and 8 KV heads, a 32,000-token
/// vocabulary, RoPE θ 10⁶ without scaling.
fn mixtral_8x7b() -> ModelConfig {
    ModelConfig {
        architecture: "llama".to_owned(),
        n_layers: 32,
        hidden: 4096,
        intermediate: 14_336,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        vocab_size: 32_000,
        rope_theta: 1_000_000.0,
        rope_scaling: None,
        rms_eps: 1e-5,
        max_context: 32_768,
        tie_embeddings: false,
        qkv_bias: false,
        n_experts: 8,
        n_experts_used: 2,
    }
}
