//! The CPU backend's kernels: f32 math, multi-threaded with rayon, vectorised by the compiler and `gemm`.

pub mod attention;
pub mod matmul;
pub mod moe;
pub mod ops;
mod qdot;
pub mod ring;
