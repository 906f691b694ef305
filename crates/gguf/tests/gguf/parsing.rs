//! Valid synthetic files: every value type, tensor layout, alignment, typed getters and their errors.

use cleave_gguf::{GgmlType, GgufError, GgufFile, Value};

use crate::writer::{GgufBuilder, sample_file};

fn open(builder: &GgufBuilder) -> GgufFile {
    GgufFile::from_bytes(builder.build(), "test.gguf").unwrap()
}

#[test]
fn reads_every_value_type() {
    let file = open(&sample_file());
    assert_eq!(file.version(), 3);
    assert_eq!(file.path().to_str(), Some("test.gguf"));
    let expect = [
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(2)),
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-100)),
        ("t.u16", Value::U16(60000)),
        ("t.i16", Value::I16(-30000)),
        ("t.i32", Value::I32(-2_000_000_000)),
        ("t.u64", Value::U64(u64::MAX)),
        ("t.i64", Value::I64(i64::MIN)),
        ("t.f32", Value::F32(1e-5)),
        ("t.f64", Value::F64(-0.125)),
        ("t.bool", Value::Bool(true)),
        ("t.empty", Value::Array(Vec::new())),
    ];
    for (key, value) in expect {
        assert_eq!(file.get(key), Some(&value), "{key}");
    }
    let nested = file.get("t.nested").unwrap().as_array().unwrap();
    assert_eq!(nested[0], Value::Array(vec![Value::I16(1), Value::I16(-2)]));
    assert_eq!(nested[1], Value::Array(vec![Value::I16(3)]));
    assert_eq!(file.metadata().len(), 16);
}

#[test]
fn typed_getters_convert_losslessly() {
    let file = open(&sample_file());
    assert_eq!(file.architecture().unwrap(), "llama");
    assert_eq!(file.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(file.get_u64("t.u8").unwrap(), 200);
    assert_eq!(file.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(file.get_f32("t.f32").unwrap(), 1e-5);
    assert_eq!(file.get_f32("t.f64").unwrap(), -0.125);
    assert_eq!(file.get_f32("t.i16").unwrap(), -30000.0);
    assert!(file.get_bool("t.bool").unwrap());
    assert_eq!(file.get_str_array("t.strings").unwrap(), ["a", "βγ", ""]);
    assert_eq!(file.get_f32_array("t.scores").unwrap(), [-1.5, 2.0]);
    assert_eq!(file.get_i64_array("t.empty").unwrap(), Vec::<i64>::new());
    assert_eq!(file.get("t.i8").unwrap().as_i64(), Some(-100));
    assert_eq!(file.get("t.i64").unwrap().as_f64(), Some(i64::MIN as f64));
}

#[test]
fn typed_getters_name_file_and_key() {
    let file = open(&sample_file());
    let missing = file.get_u64("llama.context_length").unwrap_err();
    assert!(matches!(missing, GgufError::MissingKey { .. }));
    assert_eq!(
        missing.to_string(),
        "test.gguf: metadata key 'llama.context_length' is missing"
    );

    let wrong = file.get_str("llama.block_count").unwrap_err();
    assert_eq!(
        wrong.to_string(),
        "test.gguf: metadata key 'llama.block_count' is u32, expected a string"
    );
    // Negative values do not fit a u64; u64::MAX does not fit an i64.
    assert!(file.get_u64("t.i8").is_err());
    assert!(file.get("t.u64").unwrap().as_i64().is_none());
    assert!(file.get_bool("t.u8").is_err());
    assert!(file.get_f32("general.architecture").is_err());
    let not_strings = file.get_str_array("t.scores").unwrap_err();
    assert!(
        not_strings
            .to_string()
            .contains("'t.scores' is array of f32, expected an array of strings"),
        "{not_strings}"
    );
    assert!(file.get_i64_array("t.nested").is_err());
    assert!(file.get_f32_array("t.f32").is_err());
}

#[test]
fn tensors_keep_file_order_shape_and_data() {
    let file = open(&sample_file());
    let names: Vec<&str> = file.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["norm", "embed", "matrix"]);

    let matrix = file.tensor("matrix").unwrap();
    assert_eq!(matrix.dims, [3, 2]);
    assert_eq!(matrix.shape(), [2, 3]);
    assert_eq!(matrix.n_elements(), 6);
    assert_eq!(matrix.byte_len(), 24);
    assert_eq!(matrix.ty, GgmlType::F32);
    assert_eq!(file.tensor_f32("matrix").unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    let embed = file.tensor("embed").unwrap();
    assert_eq!((embed.ty, embed.byte_len(), embed.offset), (GgmlType::Q8_0, 34, 32));
    assert_eq!(file.tensor_data(embed).len(), 34);
    let expected: Vec<f32> = (0..32).map(|i| (i - 16) as f32).collect();
    assert_eq!(file.tensor_f32("embed").unwrap(), expected);

    assert_eq!(file.tensor_f32("norm").unwrap(), [1.0, -2.0, 0.5, 8.0]);
    assert_eq!(file.data_offset() % 32, 0);
    assert_eq!(file.alignment(), 32);
}

#[test]
fn honours_general_alignment() {
    let mut builder = sample_file().kv("general.alignment", Value::U32(64));
    builder.alignment = 64;
    let file = open(&builder);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    for info in file.tensors() {
        assert_eq!(info.offset % 64, 0, "{}", info.name);
    }
    assert_eq!(file.tensor("matrix").unwrap().offset, 128);
    assert_eq!(file.tensor_f32("matrix").unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn accepts_version_2_and_files_without_tensors() {
    let mut builder = sample_file();
    builder.version = 2;
    assert_eq!(open(&builder).version(), 2);

    let empty = GgufBuilder::new();
    let file = open(&empty);
    assert!(file.tensors().is_empty() && file.metadata().is_empty());
    // A tensor-less file may end right after its infos, before any padding.
    let mut bytes = empty.build();
    bytes.truncate(24);
    assert!(GgufFile::from_bytes(bytes, "short.gguf").is_ok());
}

#[test]
fn scalar_and_empty_tensors() {
    let builder = GgufBuilder::new()
        .f32_tensor("scalar", &[], &[7.5])
        .tensor("empty", &[32, 0], 2, Vec::new());
    let file = open(&builder);
    let scalar = file.tensor("scalar").unwrap();
    assert_eq!((scalar.n_elements(), scalar.shape()), (1, vec![]));
    assert_eq!(file.tensor_f32("scalar").unwrap(), [7.5]);
    assert_eq!(file.tensor_f32("empty").unwrap(), Vec::<f32>::new());
}

#[test]
fn unsupported_and_missing_tensors_are_errors() {
    let builder = sample_file().tensor("iq", &[256], GgmlType::IQ2_XXS.id(), vec![0; 66]);
    let file = open(&builder);
    let info = file.tensor("iq").unwrap();
    // Sizes are right even for types that cannot be dequantized.
    assert_eq!(info.byte_len(), 66);
    assert_eq!(file.tensor_data(info).len(), 66);
    let err = file.tensor_f32("iq").unwrap_err();
    assert_eq!(
        err.to_string(),
        "test.gguf: tensor 'iq': unsupported tensor type IQ2_XXS: cannot dequantize it to f32"
    );
    let missing = file.tensor_f32("nope").unwrap_err();
    assert_eq!(missing.to_string(), "test.gguf: no tensor named 'nope'");
}

#[test]
fn foreign_tensor_info_gives_no_data() {
    let file = open(&sample_file());
    let mut foreign = file.tensor("matrix").unwrap().clone();
    foreign.offset = 1 << 40;
    assert!(file.tensor_data(&foreign).is_empty());
    assert!(file.tensor_f32_into(&foreign, &mut [0.0; 6]).is_err());
    foreign.dims = vec![u64::MAX, u64::MAX];
    assert!(file.tensor_data(&foreign).is_empty());
    assert_eq!(foreign.n_elements(), u64::MAX);
}

#[test]
fn open_maps_a_file_and_names_it_in_errors() {
    let dir = std::env::temp_dir().join(format!("cleave-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.gguf");
    std::fs::write(&path, sample_file().build()).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.path(), path);
    assert_eq!(file.tensor_f32("norm").unwrap(), [1.0, -2.0, 0.5, 8.0]);
    assert!(format!("{file:?}").contains("tensors: 3"));

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let err = GgufFile::open(&empty).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!("{}: header:", empty.display())),
        "{err}"
    );

    let absent = dir.join("absent.gguf");
    let err = GgufFile::open(&absent).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    assert!(err.to_string().starts_with(&absent.display().to_string()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GgufFile>();
    assert_send_sync::<GgufError>();
}

#[test]
fn values_display_briefly() {
    let many = Value::Array((0..10).map(Value::I32).collect());
    assert_eq!(many.to_string(), "[0, 1, 2, 3, ... (10 items)]");
    assert_eq!(Value::String("x".into()).to_string(), "\"x\"");
    assert_eq!(many.type_name(), "array of i32");
}
