//! A writer of small synthetic GGUF files, built byte by byte so tests can make valid files and then break them.
//!
//! It follows the format independently of the crate's reader (only `Value` is shared): header, metadata, tensor
//! infos, padding to the alignment, then each tensor's data padded to the alignment. It records where the u64
//! counts and lengths sit, so corruption tests can overwrite exactly those.

use cleave_gguf::Value;

pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
    /// Written instead of the computed offset when set.
    pub offset: Option<u64>,
}

pub struct GgufBuilder {
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
    /// Alignment used for the layout; does not by itself write `general.alignment`.
    pub alignment: usize,
}

/// A file and the offsets of every u64 count or length in it.
pub struct Built {
    pub bytes: Vec<u8>,
    pub length_fields: Vec<usize>,
    pub data_offset: usize,
    /// End of the last tensor's data; only padding follows.
    pub content_len: usize,
}

impl GgufBuilder {
    pub fn new() -> Self {
        Self {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        }
    }

    pub fn kv(mut self, key: &str, value: Value) -> Self {
        self.metadata.push((key.to_owned(), value));
        self
    }

    pub fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        self.tensors.push(TensorSpec {
            name: name.to_owned(),
            dims: dims.to_vec(),
            type_id,
            data,
            offset: None,
        });
        self
    }

    /// An F32 tensor holding `values`.
    pub fn f32_tensor(self, name: &str, dims: &[u64], values: &[f32]) -> Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, 0, data)
    }

    pub fn build(&self) -> Vec<u8> {
        self.build_with_fields().bytes
    }

    pub fn build_with_fields(&self) -> Built {
        let mut out = Out::default();
        out.bytes.extend_from_slice(b"GGUF");
        out.u32(self.version);
        out.len_field(self.tensors.len() as u64);
        out.len_field(self.metadata.len() as u64);
        for (key, value) in &self.metadata {
            out.string(key);
            out.u32(type_id(value));
            out.value(value);
        }
        let mut offset = 0u64;
        for tensor in &self.tensors {
            out.string(&tensor.name);
            out.u32(tensor.dims.len() as u32);
            for &d in &tensor.dims {
                out.u64(d);
            }
            out.u32(tensor.type_id);
            out.u64(tensor.offset.unwrap_or(offset));
            offset += (tensor.data.len() as u64).next_multiple_of(self.alignment as u64);
        }
        out.pad(self.alignment);
        let data_offset = out.bytes.len();
        let mut content_len = data_offset;
        for tensor in &self.tensors {
            out.bytes.extend_from_slice(&tensor.data);
            content_len = out.bytes.len();
            out.pad(self.alignment);
        }
        Built {
            bytes: out.bytes,
            length_fields: out.length_fields,
            data_offset,
            content_len,
        }
    }
}

#[derive(Default)]
struct Out {
    bytes: Vec<u8>,
    length_fields: Vec<usize>,
}

impl Out {
    fn u32(&mut self, v: u32) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, v: u64) {
        self.bytes.extend_from_slice(&v.to_le_bytes());
    }

    fn len_field(&mut self, v: u64) {
        self.length_fields.push(self.bytes.len());
        self.u64(v);
    }

    fn string(&mut self, s: &str) {
        self.len_field(s.len() as u64);
        self.bytes.extend_from_slice(s.as_bytes());
    }

    fn pad(&mut self, alignment: usize) {
        let len = self.bytes.len().next_multiple_of(alignment);
        self.bytes.resize(len, 0);
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::U8(v) => self.bytes.push(*v),
            Value::I8(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::U16(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::I16(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::U32(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::I32(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::U64(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::I64(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::F32(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::F64(v) => self.bytes.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => self.bytes.push(u8::from(*v)),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                // An empty array is written as an array of u8.
                self.u32(items.first().map_or(0, type_id));
                self.len_field(items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
        }
    }
}

/// GGUF's id for the type of `value`.
pub fn type_id(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A small valid file with every value type, a nested array, and tensors of three types; the base of the
/// corruption and mutation tests.
pub fn sample_file() -> GgufBuilder {
    let q8_0_block: Vec<u8> = [0x00u8, 0x3c] // d = 1.0
        .into_iter()
        .chain((0..32).map(|i| (i as i8 - 16) as u8))
        .collect();
    GgufBuilder::new()
        .kv("general.architecture", Value::String("llama".into()))
        .kv("llama.block_count", Value::U32(2))
        .kv("t.u8", Value::U8(200))
        .kv("t.i8", Value::I8(-100))
        .kv("t.u16", Value::U16(60000))
        .kv("t.i16", Value::I16(-30000))
        .kv("t.i32", Value::I32(-2_000_000_000))
        .kv("t.u64", Value::U64(u64::MAX))
        .kv("t.i64", Value::I64(i64::MIN))
        .kv("t.f32", Value::F32(1e-5))
        .kv("t.f64", Value::F64(-0.125))
        .kv("t.bool", Value::Bool(true))
        .kv(
            "t.strings",
            Value::Array(vec![
                Value::String("a".into()),
                Value::String("βγ".into()),
                Value::String(String::new()),
            ]),
        )
        .kv("t.scores", Value::Array(vec![Value::F32(-1.5), Value::F32(2.0)]))
        .kv(
            "t.nested",
            Value::Array(vec![
                Value::Array(vec![Value::I16(1), Value::I16(-2)]),
                Value::Array(vec![Value::I16(3)]),
            ]),
        )
        .kv("t.empty", Value::Array(Vec::new()))
        .f32_tensor("norm", &[4], &[1.0, -2.0, 0.5, 8.0])
        .tensor("embed", &[32, 1], 8, q8_0_block)
        .f32_tensor("matrix", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
}
