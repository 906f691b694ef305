//! Parses and validates a GGUF file's header, metadata and tensor infos (versions 2 and 3, little-endian).
//!
//! Layout: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata key/values, the tensor
//! infos, padding to `general.alignment` (default 32), then the data section. Invariant of a returned `Layout`:
//! keys and tensor names are unique, every tensor has at most 4 dimensions, a valid type, whole-block rows, an
//! aligned offset, and data lying inside the file. Cost: one pass over the header bytes (metadata strings are
//! copied; tensor data is not touched); nothing is allocated from a length before the file is seen to hold it.

use std::collections::{BTreeMap, HashMap};

use crate::GgmlType;
use crate::error::FormatError;
use crate::reader::Cursor;
use crate::tensor::TensorInfo;
use crate::value::{Value, ValueType};

/// The metadata key that sets the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Alignment of tensor data when the file does not set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;

const MAGIC: [u8; 4] = *b"GGUF";
/// Magic, version and the two counts.
const HEADER_LEN: u64 = 4 + 4 + 8 + 8;
/// Key length, value type and the smallest value (one byte).
const MIN_KV_LEN: u64 = 8 + 4 + 1;
/// Name length, dimension count, type and offset.
const MIN_TENSOR_INFO_LEN: u64 = 8 + 4 + 4 + 8;
/// Real files nest arrays at most once or twice; a bound keeps recursion off the end of the stack.
const MAX_ARRAY_NESTING: usize = 8;

/// Everything the header says about a file.
pub(crate) struct Layout {
    pub(crate) version: u32,
    pub(crate) metadata: BTreeMap<String, Value>,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) data_offset: u64,
    pub(crate) alignment: u64,
}

/// A format error and the part of the file it was found in.
pub(crate) struct Malformed {
    pub(crate) context: String,
    pub(crate) kind: FormatError,
}

trait Within<T> {
    fn within(self, context: impl FnOnce() -> String) -> Result<T, Malformed>;
}

impl<T> Within<T> for Result<T, FormatError> {
    fn within(self, context: impl FnOnce() -> String) -> Result<T, Malformed> {
        self.map_err(|kind| Malformed {
            context: context(),
            kind,
        })
    }
}

pub(crate) fn parse(bytes: &[u8]) -> Result<Layout, Malformed> {
    let header = || "header".to_owned();
    let mut cur = Cursor::new(bytes);
    if cur.file_size() < HEADER_LEN {
        return Err(FormatError::TooShort {
            size: cur.file_size(),
            min: HEADER_LEN,
        })
        .within(header);
    }
    let version = read_magic_and_version(&mut cur).within(header)?;
    let n_tensors = cur.count("tensor", MIN_TENSOR_INFO_LEN).within(header)?;
    let n_kv = cur.count("metadata entry", MIN_KV_LEN).within(header)?;

    let metadata = read_metadata(&mut cur, n_kv)?;
    let alignment = alignment(&metadata).within(|| format!("metadata '{ALIGNMENT_KEY}'"))?;
    let (tensors, by_name) = read_tensor_infos(&mut cur, n_tensors)?;
    // The offset is at most the file size and the alignment at most 2^31, so this cannot overflow.
    let data_offset = cur.offset().next_multiple_of(alignment);
    for info in &tensors {
        check_data_range(info, alignment, data_offset, cur.file_size()).within(|| format!("tensor '{}'", info.name))?;
    }
    Ok(Layout {
        version,
        metadata,
        tensors,
        by_name,
        data_offset,
        alignment,
    })
}

fn read_magic_and_version(cur: &mut Cursor<'_>) -> Result<u32, FormatError> {
    let magic = cur.take(4)?;
    if magic != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(FormatError::BadMagic { found });
    }
    match cur.u32()? {
        version @ (2 | 3) => Ok(version),
        // A big-endian writer stores version 3 as 0x03000000.
        version if (1..=3).contains(&version.swap_bytes()) => Err(FormatError::BigEndian { version }),
        version => Err(FormatError::UnsupportedVersion { version }),
    }
}

fn read_metadata(cur: &mut Cursor<'_>, n_kv: usize) -> Result<BTreeMap<String, Value>, Malformed> {
    let mut metadata = BTreeMap::new();
    for index in 0..n_kv {
        let key = cur.string().within(|| format!("key of metadata entry {index}"))?;
        let in_value = || format!("metadata '{key}'");
        let value = read_typed_value(cur, 0).within(in_value)?;
        if metadata.contains_key(&key) {
            return Err(FormatError::DuplicateKey).within(in_value);
        }
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// Reads a value type id, then a value of that type. `depth` counts the arrays this value sits in.
fn read_typed_value(cur: &mut Cursor<'_>, depth: usize) -> Result<Value, FormatError> {
    let ty = read_value_type(cur)?;
    read_value(cur, ty, depth)
}

fn read_value_type(cur: &mut Cursor<'_>) -> Result<ValueType, FormatError> {
    let offset = cur.offset();
    let id = cur.u32()?;
    ValueType::from_id(id).ok_or(FormatError::UnknownValueType { id, offset })
}

fn read_value(cur: &mut Cursor<'_>, ty: ValueType, depth: usize) -> Result<Value, FormatError> {
    Ok(match ty {
        ValueType::U8 => Value::U8(cur.u8()?),
        ValueType::I8 => Value::I8(cur.i8()?),
        ValueType::U16 => Value::U16(cur.u16()?),
        ValueType::I16 => Value::I16(cur.i16()?),
        ValueType::U32 => Value::U32(cur.u32()?),
        ValueType::I32 => Value::I32(cur.i32()?),
        ValueType::U64 => Value::U64(cur.u64()?),
        ValueType::I64 => Value::I64(cur.i64()?),
        ValueType::F32 => Value::F32(cur.f32()?),
        ValueType::F64 => Value::F64(cur.f64()?),
        ValueType::Bool => Value::Bool(cur.bool()?),
        ValueType::String => Value::String(cur.string()?),
        ValueType::Array => {
            let offset = cur.offset();
            let item_ty = read_value_type(cur)?;
            if item_ty == ValueType::Array && depth + 1 >= MAX_ARRAY_NESTING {
                return Err(FormatError::NestingTooDeep {
                    max: MAX_ARRAY_NESTING,
                    offset,
                });
            }
            let n = cur.count("array item", item_ty.min_encoded_len())?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(read_value(cur, item_ty, depth + 1)?);
            }
            Value::Array(items)
        }
    })
}

fn alignment(metadata: &BTreeMap<String, Value>) -> Result<u64, FormatError> {
    let Some(value) = metadata.get(ALIGNMENT_KEY) else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    match value.as_u64() {
        Some(a) if a.is_power_of_two() && a <= u64::from(u32::MAX) => Ok(a),
        _ => Err(FormatError::BadAlignment {
            value: format!("{value} ({})", value.type_name()),
        }),
    }
}

type TensorInfos = (Vec<TensorInfo>, HashMap<String, usize>);

fn read_tensor_infos(cur: &mut Cursor<'_>, n_tensors: usize) -> Result<TensorInfos, Malformed> {
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut by_name = HashMap::with_capacity(n_tensors);
    for index in 0..n_tensors {
        let name = cur.string().within(|| format!("name of tensor info {index}"))?;
        let info = read_tensor_info(cur, name)?;
        if by_name.contains_key(&info.name) {
            return Err(FormatError::DuplicateTensor).within(|| format!("tensor '{}'", info.name));
        }
        by_name.insert(info.name.clone(), index);
        tensors.push(info);
    }
    Ok((tensors, by_name))
}

/// Reads the rest of one tensor info after its name, and checks its shape.
fn read_tensor_info(cur: &mut Cursor<'_>, name: String) -> Result<TensorInfo, Malformed> {
    let context = || format!("tensor '{name}'");
    let n_dims = cur.u32().within(context)?;
    if n_dims > MAX_DIMS {
        return Err(FormatError::TooManyDims { n_dims, max: MAX_DIMS }).within(context);
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(cur.u64().within(context)?);
    }
    let type_id = cur.u32().within(context)?;
    let offset = cur.u64().within(context)?;
    let ty = GgmlType::from_id(type_id)
        .ok_or(FormatError::UnknownTensorType { id: type_id })
        .within(context)?;
    let info = TensorInfo { name, dims, ty, offset };
    check_shape(&info).within(|| format!("tensor '{}'", info.name))?;
    Ok(info)
}

fn check_shape(info: &TensorInfo) -> Result<(), FormatError> {
    // ggml holds element counts in int64_t.
    let fits_i64 = info.checked_n_elements().is_some_and(|n| i64::try_from(n).is_ok());
    if !fits_i64 {
        return Err(FormatError::ElementCountOverflow {
            dims: info.dims.clone(),
        });
    }
    let ne0 = info.dims.first().copied().unwrap_or(1);
    let block = info.ty.block_size() as u64;
    if !ne0.is_multiple_of(block) {
        return Err(FormatError::RowNotWholeBlocks {
            ty: info.ty,
            ne0,
            block,
        });
    }
    Ok(())
}

fn check_data_range(info: &TensorInfo, alignment: u64, data_offset: u64, size: u64) -> Result<(), FormatError> {
    if !info.offset.is_multiple_of(alignment) {
        return Err(FormatError::MisalignedTensor {
            offset: info.offset,
            alignment,
        });
    }
    let start = data_offset.checked_add(info.offset);
    let end = start
        .zip(info.checked_byte_len())
        .and_then(|(s, len)| s.checked_add(len));
    match (start, end) {
        (Some(_), Some(end)) if end <= size => Ok(()),
        _ => Err(FormatError::TensorOutOfBounds {
            start: start.unwrap_or(u64::MAX),
            end: end.unwrap_or(u64::MAX),
            size,
        }),
    }
}
