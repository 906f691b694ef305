//! Compiles proto/cleave/v1/*.proto with tonic-prost-build (needs `protoc`, or `PROTOC` pointing at one), and
//! writes the descriptor set that the router's gRPC reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["cleave/v1/generation.proto", "cleave/v1/worker.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cleave_v1_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
