//! Weights from a Hugging Face model directory: `config.json` plus one or more `*.safetensors` files.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::{HF_NAMES, LlamaWeights, Matrix, TensorSource, WeightData, assemble};
use crate::config::ModelConfig;
use crate::error::EngineError;

struct SafetensorsSource<'a> {
    files: Vec<(PathBuf, SafeTensors<'a>)>,
    /// Tensor name → index into `files`.
    index: HashMap<String, usize>,
}

impl SafetensorsSource<'_> {
    fn view(
        &self,
        name: &str,
        expected: &[usize],
    ) -> Result<(&Path, safetensors::tensor::TensorView<'_>), EngineError> {
        let Some(&i) = self.index.get(name) else {
            let dir = self
                .files
                .first()
                .map(|(p, _)| p.parent().unwrap_or(p))
                .unwrap_or(Path::new("."));
            return Err(EngineError::model(dir, format!("missing tensor '{name}'")));
        };
        let (path, st) = &self.files[i];
        let view = st
            .tensor(name)
            .map_err(|e| EngineError::model(path, format!("tensor '{name}': {e}")))?;
        if view.shape() != expected {
            return Err(EngineError::model(
                path,
                format!("tensor '{name}' has shape {:?}, expected {expected:?}", view.shape()),
            ));
        }
        Ok((path, view))
    }
}

fn le_chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut a = [0u8; N];
        a.copy_from_slice(c);
        a
    })
}

impl TensorSource for SafetensorsSource<'_> {
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        let (path, view) = self.view(name, &[rows, cols])?;
        Ok(Matrix {
            rows,
            cols,
            data: weight_data(path, name, &view)?,
        })
    }

    fn stacked(&self, name: &str, n: usize, rows: usize, cols: usize) -> Result<Matrix, EngineError> {
        let (path, view) = self.view(name, &[n, rows, cols])?;
        Ok(Matrix {
            rows: n * rows,
            cols,
            data: weight_data(path, name, &view)?,
        })
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, EngineError> {
        let (path, view) = self.view(name, &[len])?;
        let as_row = Matrix {
            rows: 1,
            cols: len,
            data: weight_data(path, name, &view)?,
        };
        let mut out = vec![0.0; len];
        as_row.dequantize_rows(0, &mut out);
        Ok(out)
    }
}

fn weight_data(path: &Path, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<WeightData, EngineError> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => WeightData::F32(le_chunks::<4>(bytes).map(f32::from_le_bytes).collect()),
        Dtype::BF16 => WeightData::Bf16(le_chunks::<2>(bytes).map(bf16::from_le_bytes).collect()),
        Dtype::F16 => WeightData::F16(le_chunks::<2>(bytes).map(f16::from_le_bytes).collect()),
        other => {
            return Err(EngineError::model(
                path,
                format!("tensor '{name}' has unsupported dtype {other:?}"),
            ));
        }
    })
}

/// The safetensors files of a model directory: those named by `model.safetensors.index.json`, else every
/// `*.safetensors` file, sorted.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.exists() {
        let text = std::fs::read_to_string(&index_path).map_err(|e| EngineError::io(&index_path, e))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| EngineError::model(&index_path, format!("invalid JSON: {e}")))?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| EngineError::model(&index_path, "missing object 'weight_map'"))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(EngineError::model(dir, "no *.safetensors files in the model directory"));
    }
    Ok(files)
}

/// Loads config and weights from a Hugging Face model directory.
pub fn load_hf_dir(dir: &Path) -> Result<(ModelConfig, LlamaWeights), EngineError> {
    let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
    let paths = weight_files(dir)?;
    let mut maps = Vec::with_capacity(paths.len());
    for path in &paths {
        let file = File::open(path).map_err(|e| EngineError::io(path, e))?;
        // SAFETY: the map is read-only and lives for this function; a checkpoint modified underneath a running
        // load is outside what any loader can defend against.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        maps.push(map);
    }
    let mut files = Vec::with_capacity(paths.len());
    let mut index = HashMap::new();
    for (i, (path, map)) in paths.iter().zip(&maps).enumerate() {
        let st = SafeTensors::deserialize(map)
            .map_err(|e| EngineError::model(path, format!("not a valid safetensors file: {e}")))?;
        for name in st.names() {
            index.insert(name.to_string(), i);
        }
        files.push((path.clone(), st));
    }
    let source = SafetensorsSource { files, index };
    let weights = assemble(&source, &HF_NAMES, &config, false)?;
    Ok((config, weights))
}
