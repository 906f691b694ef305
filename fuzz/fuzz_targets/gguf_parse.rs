//! Fuzzes the GGUF reader: any byte string must parse to a file or an error, and a file that parses must survive
//! everything a model loader does with it (reading each metadata value, dequantizing each tensor) without a panic.

#![no_main]

use cleave_gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else {
        return;
    };
    for (key, value) in file.metadata() {
        let _ = (value.to_string(), value.as_u64(), value.as_i64(), value.as_f64(), value.as_array());
        let _ = (file.get_u64(key), file.get_f32(key), file.get_str(key), file.get_bool(key));
        let _ = (file.get_str_array(key), file.get_i64_array(key), file.get_f32_array(key));
    }
    let _ = file.architecture();
    for info in file.tensors() {
        let _ = (info.shape(), info.byte_len(), file.tensor_data(info).len());
        if let Ok(values) = file.tensor_f32(&info.name) {
            assert_eq!(values.len() as u64, info.n_elements());
        }
    }
});
