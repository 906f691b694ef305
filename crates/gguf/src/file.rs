//! `GgufFile`: an opened, validated GGUF file — its metadata, its tensor list, and access to tensor data.
//!
//! The file is memory-mapped (or held in memory, for `from_bytes`) and parsed once on open; after that every
//! tensor's data range is known to lie inside the file, so `tensor_data` is a slice and `tensor_f32` a dequantize.
//! Opening costs one pass over the header (for a 100 MB model with a 49k-token vocabulary, a few milliseconds);
//! tensor data is paged in only when read.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dequant::{can_dequantize, dequantize};
use crate::error::{DequantError, GgufError};
use crate::parse::{self, Layout};
use crate::tensor::TensorInfo;
use crate::value::Value;

/// An opened GGUF file.
pub struct GgufFile {
    path: PathBuf,
    bytes: Storage,
    layout: Layout,
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Owned(bytes) => bytes,
        }
    }
}

impl GgufFile {
    /// Opens, maps and validates the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // An empty mapping is an error on some platforms; an empty file fails parsing with a clear message anyway.
        let bytes = if len == 0 {
            Storage::Owned(Vec::new())
        } else {
            Storage::Mapped(map_read_only(&file).map_err(io)?)
        };
        Self::parse(path, bytes)
    }

    /// Validates a GGUF file held in memory; `name` stands for its path in errors.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<Self, GgufError> {
        Self::parse(PathBuf::from(name), Storage::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Storage) -> Result<Self, GgufError> {
        match parse::parse(bytes.bytes()) {
            Ok(layout) => Ok(Self { path, bytes, layout }),
            Err(malformed) => Err(GgufError::Format {
                path,
                context: malformed.context,
                kind: malformed.kind,
            }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.layout.version
    }

    /// Alignment of tensor data in the file (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.layout.alignment
    }

    /// File offset where the data section (and tensor offset 0) starts.
    pub fn data_offset(&self) -> u64 {
        self.layout.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, Value> {
        &self.layout.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.layout.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_owned(),
        })
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_owned(),
            expected,
            found: found.type_name(),
        }
    }

    /// An integer value of any width or signedness that fits in a `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.require(key)?;
        value
            .as_u64()
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", value))
    }

    /// A float or integer value, rounded to the nearest `f32`.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let value = self.require(key)?;
        value
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| self.wrong_type(key, "a number", value))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.require(key)?;
        value.as_str().ok_or_else(|| self.wrong_type(key, "a string", value))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        let value = self.require(key)?;
        value.as_bool().ok_or_else(|| self.wrong_type(key, "a bool", value))
    }

    /// The items of an array value, each converted by `item`, or a `WrongType` error naming `expected`.
    fn get_array<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        item: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Vec<T>, GgufError> {
        let value = self.require(key)?;
        let items = value.as_array().ok_or_else(|| self.wrong_type(key, expected, value))?;
        items
            .iter()
            .map(|v| item(v).ok_or_else(|| self.wrong_type(key, expected, value)))
            .collect()
    }

    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        self.get_array(key, "an array of strings", Value::as_str)
    }

    /// An array of integers of any width, each fitting in an `i64`.
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        self.get_array(key, "an array of integers", Value::as_i64)
    }

    /// An array of floats or integers, each rounded to the nearest `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        self.get_array(key, "an array of numbers", |v| v.as_f64().map(|v| v as f32))
    }

    /// `general.architecture` ("llama", "qwen2", ...), the prefix of the model's hyperparameter keys.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.layout.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let index = *self.layout.by_name.get(name)?;
        self.layout.tensors.get(index)
    }

    /// The raw bytes of a tensor of this file. An `info` that does not describe data inside this file (one made up,
    /// or taken from another file) gives an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let range = info
            .checked_byte_len()
            .zip(self.layout.data_offset.checked_add(info.offset))
            .and_then(|(len, start)| Some((usize::try_from(start).ok()?, usize::try_from(len).ok()?)))
            .and_then(|(start, len)| Some(start..start.checked_add(len)?));
        range.and_then(|range| self.bytes.bytes().get(range)).unwrap_or(&[])
    }

    /// Dequantizes a whole tensor to f32, row-major; its shape is `info.shape()` (dims reversed, outermost first).
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name).ok_or_else(|| GgufError::NoSuchTensor {
            path: self.path.clone(),
            name: name.to_owned(),
        })?;
        // Refuse before allocating: the output may be many times the size of the data.
        if !can_dequantize(info.ty) {
            return Err(self.tensor_error(info, DequantError::Unsupported { ty: info.ty }));
        }
        // A parsed tensor's data lies in the file, so its element count fits in memory-sized arithmetic.
        let n = usize::try_from(info.n_elements()).map_err(|_| {
            self.tensor_error(
                info,
                DequantError::LengthMismatch {
                    ty: info.ty,
                    bytes: self.tensor_data(info).len(),
                    elements: usize::MAX,
                },
            )
        })?;
        let mut out = vec![0.0f32; n];
        self.tensor_f32_into(info, &mut out)?;
        Ok(out)
    }

    /// Dequantizes a tensor into a caller's buffer of exactly `info.n_elements()` values.
    pub fn tensor_f32_into(&self, info: &TensorInfo, out: &mut [f32]) -> Result<(), GgufError> {
        dequantize(info.ty, self.tensor_data(info), out).map_err(|source| self.tensor_error(info, source))
    }

    fn tensor_error(&self, info: &TensorInfo, source: DequantError) -> GgufError {
        GgufError::Tensor {
            path: self.path.clone(),
            name: info.name.clone(),
            source,
        }
    }
}

/// Maps `file` read-only.
#[allow(unsafe_code)] // memmap2 cannot prove the file stays unchanged; see SAFETY
fn map_read_only(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is only read, through `&[u8]`. It is sound as long as no process truncates or rewrites
    // the file while it is mapped; model files are immutable once published (the model store writes a temporary
    // file and renames it into place), which is the contract every mmap-based model loader relies on.
    unsafe { Mmap::map(file) }
}

impl fmt::Debug for GgufFile {
    /// A summary: the metadata of a real model holds a whole vocabulary.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.layout.version)
            .field("metadata_keys", &self.layout.metadata.len())
            .field("tensors", &self.layout.tensors.len())
            .field("data_offset", &self.layout.data_offset)
            .finish()
    }
}
