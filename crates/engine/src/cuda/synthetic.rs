//! Named model shapes for `synthetic:<shape>` models: random bf16 weights built on the device, no download — for
//! benchmarks and for checking the CUDA path against PyTorch with the same random weights.

use crate::config::{Llama3RopeScaling, ModelConfig};
use crate::error::EngineError;

/// The shapes `synthetic:` knows, by name.
pub const SYNTHETIC_SHAPES: [&str; 3] = ["llama-3.2-1b", "llama-3.1-8b", "llama-3.1-70b"];

/// The Llama-3 configuration of a named shape (the published ones, vocabulary 128,256, RoPE scaling of Llama 3.1).
pub fn synthetic_config(shape: &str) -> Result<ModelConfig, EngineError> {
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
