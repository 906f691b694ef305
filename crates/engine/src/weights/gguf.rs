//! Weights from a GGUF file: block-quantized tensors are kept quantized, floats are kept in their width.

use std::path::Path;

use cleave_gguf::{GgmlType, GgufFile};
use half::{bf16, f16};

use super::{GGUF_NAMES, LlamaWeights, Matrix, TensorSource, WeightData, assemble};
use crate::config::ModelConfig;
use crate::error::EngineError;

struct GgufSource<'a> {
    file: &'a GgufFile,
}

impl GgufSource<'_> {
    fn info(&self, name: &str, expected: &[usize]) -> Result<&cleave_gguf::TensorInfo, EngineError> {
        let info = self
            .file
            .tensor(name)
            .ok_or_else(|| EngineError::model(self.file.path(), format!("missing tensor '{name}'")))?;
        if info.shape() != expected {
            return Err(EngineError::model(
                self.file.path(),
                format!("tensor '{name}' has shape {:?}, expected {expected:?}", info.shape()),
            ));
        }
        Ok(info)
    }
}

impl TensorSource for GgufSource<'_> {
    fn has(&self, name: &str) -> bool {
        self.file.tensor(name).is_some()
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        self.shaped(name, &[rows, cols], rows, cols)
    }

    fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        self.shaped(name, &[n, rows, cols], n * rows, cols)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        self.info(name, &[len])?;
        Ok(self.file.tensor_f32(name)?)
    }
}

impl GgufSource<'_> {
    /// Tensor `name` of shape `shape`, read as a `[rows, cols]` matrix.
    fn shaped(&self, name: &str, shape: &[usize], rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        let info = self.info(name, shape)?;
        let bytes = self.file.tensor_data(info);
        let data = match info.ty {
            GgmlType::F32 => WeightData::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            GgmlType::F16 => WeightData::F16(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            GgmlType::BF16 => WeightData::Bf16(
                bytes
                    .chunks_exact(2)
                    .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            ),
            ty if cleave_gguf::can_dequantize(ty) => {
                if !cols.is_multiple_of(ty.block_size()) {
                    return Err(EngineError::model(
                        self.file.path(),
                        format!("tensor '{name}': row length {cols} is not a multiple of {ty:?}'s block size"),
                    ));
                }
                WeightData::Quantized {
                    ty,
                    bytes: bytes.to_vec(),
                    row_bytes: bytes.len() / rows,
                }
            }
            ty => {
                return Err(EngineError::model(
                    self.file.path(),
                    format!("tensor '{name}' has type {} which cleave cannot dequantize", ty.name()),
                ));
            }
        };
        Ok(Matrix { rows, cols, data })
    }
}

/// Loads config and weights from a GGUF file.
pub fn load_gguf(path: &Path) -> Result<(GgufFile, ModelConfig, LlamaWeights), EngineError> {
    let file = GgufFile::open(path)?;
    let config = ModelConfig::from_gguf(&file)?;
    // llama.cpp interleaves q/k rows for llama-style archs only; qwen2 GGUFs keep the Hugging Face order.
    let unpermute = matches!(config.architecture.as_str(), "llama" | "mistral");
    let weights = assemble(&GgufSource { file: &file }, &GGUF_NAMES, &config, unpermute)?;
    Ok((file, config, weights))
}
