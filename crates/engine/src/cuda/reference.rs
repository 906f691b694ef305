//! A check of the CUDA backend against an independent implementation: writes the backend's weights as a Hugging Face
//! Llama checkpoint (`config.json` + `model.safetensors`, bf16, the standard tensor names) together with the
//! backend's logits for a fixed prompt, so transformers can load the very same weights on the same GPU and compare
//! (`scripts/gpu_reference_check.py`). Meant for synthetic models, whose weights exist nowhere else.
//!
//! The fused matrices split back into Hugging Face's: qkv rows are q, then k, then v (no RoPE permutation: cleave and
//! transformers both pair element i with i + head_dim/2); gate|up rows are gate, then up.

use std::path::Path;

use half::bf16;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

use super::weights::{DeviceMatrix, DeviceMlp};
use super::{CudaBackend, CudaError};
use crate::backend::Backend;
use crate::error::EngineError;
use crate::model::SeqChunk;

/// The prompt both implementations run: fixed ids spread over the vocabulary.
pub fn reference_prompt(vocab: usize, len: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 7919 + 13) % vocab) as u32).collect()
}

fn io(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Internal(format!("{}: {e}", path.display()))
}

impl CudaBackend {
    fn host_rows(&self, m: &DeviceMatrix, rows: std::ops::Range<usize>) -> Result<Vec<u8>, CudaError> {
        let slice = m.data.slice(rows.start * m.cols..rows.end * m.cols);
        let host: Vec<bf16> = self.stream.clone_dtoh(&slice)?;
        Ok(host.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    /// Writes `dir/config.json`, `dir/model.safetensors`, `dir/prompt.json` and `dir/logits.f32` (the last
    /// prompt position's logits, little-endian f32).
    pub fn write_reference(&mut self, dir: &Path, prompt_len: usize) -> Result<(), EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let cfg = self.config.clone();
        let (q, kv, inter) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate);
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut matrix = |name: String, m: &DeviceMatrix, rows: std::ops::Range<usize>| -> Result<(), CudaError> {
            let bytes = self.host_rows(m, rows.clone())?;
            tensors.push((name, vec![rows.len(), m.cols], bytes));
            Ok(())
        };
        matrix(
            "model.embed_tokens.weight".into(),
            &self.weights.embed,
            0..cfg.vocab_size,
        )?;
        if let Some(head) = &self.weights.lm_head {
            matrix("lm_head.weight".into(), head, 0..cfg.vocab_size)?;
        }
        for (i, l) in self.weights.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            matrix(format!("{p}.self_attn.q_proj.weight"), &l.qkv, 0..q)?;
            matrix(format!("{p}.self_attn.k_proj.weight"), &l.qkv, q..q + kv)?;
            matrix(format!("{p}.self_attn.v_proj.weight"), &l.qkv, q + kv..q + 2 * kv)?;
            matrix(format!("{p}.self_attn.o_proj.weight"), &l.o, 0..l.o.rows)?;
            let DeviceMlp::Dense(ff) = &l.mlp else {
                return Err(EngineError::invalid(
                    "model",
                    "the transformers reference is written for dense models",
                ));
            };
            matrix(format!("{p}.mlp.gate_proj.weight"), &ff.gate_up, 0..inter)?;
            matrix(format!("{p}.mlp.up_proj.weight"), &ff.gate_up, inter..2 * inter)?;
            matrix(format!("{p}.mlp.down_proj.weight"), &ff.down, 0..ff.down.rows)?;
        }
        let mut norm = |name: String, v: &cudarc::driver::CudaSlice<f32>| -> Result<(), CudaError> {
            let host: Vec<f32> = self.stream.clone_dtoh(v)?;
            let bytes = host.iter().flat_map(|x| bf16::from_f32(*x).to_le_bytes()).collect();
            tensors.push((name, vec![host.len()], bytes));
            Ok(())
        };
        for (i, l) in self.weights.layers.iter().enumerate() {
            norm(format!("model.layers.{i}.input_layernorm.weight"), &l.attn_norm)?;
            norm(format!("model.layers.{i}.post_attention_layernorm.weight"), &l.mlp_norm)?;
        }
        norm("model.norm.weight".into(), &self.weights.norm)?;

        let file = dir.join("model.safetensors");
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::BF16, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| io(&file, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        safetensors::serialize_to_file(views, None, &file).map_err(|e| io(&file, e))?;
        drop(tensors);

        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": cfg.hidden,
            "intermediate_size": cfg.intermediate,
            "num_hidden_layers": cfg.n_layers,
            "num_attention_heads": cfg.n_heads,
            "num_key_value_heads": cfg.n_kv_heads,
            "head_dim": cfg.head_dim,
            "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_eps,
            "rope_theta": cfg.rope_theta,
            "rope_scaling": cfg.rope_scaling.map(|s| serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            })),
            "max_position_embeddings": cfg.max_context,
            "tie_word_embeddings": cfg.tie_embeddings,
            "attention_bias": false,
            "mlp_bias": false,
            "hidden_act": "silu",
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        });
        let path = dir.join("config.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap_or_default()).map_err(|e| io(&path, e))?;

        let prompt = reference_prompt(cfg.vocab_size, prompt_len);
        let blocks: Vec<u32> = (0..prompt_len.div_ceil(self.kv.shape().block_size) as u32).collect();
        let logits = self.forward_plain(&[SeqChunk {
            tokens: &prompt,
            start_pos: 0,
            blocks: &blocks,
            want_logits: true,
        }])?;
        let path = dir.join("prompt.json");
        std::fs::write(&path, serde_json::to_vec(&prompt).unwrap_or_default()).map_err(|e| io(&path, e))?;
        let path = dir.join("logits.f32");
        let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
        Ok(())
    }
}
