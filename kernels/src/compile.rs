//! From the `.cu` sources to a loaded module: NVRTC compiles them for the device's architecture at first use, and
//! the PTX is cached on disk under a key of (sources, architecture, CUDA version), so later starts skip the
//! compiler. NVRTC rather than nvcc at build time because the build machines have no CUDA toolkit and the binary
//! must run where CUDA may be absent; the cost is one compile (about a second) per new kernel version and device.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};
use sha2::{Digest, Sha256};

use crate::KernelError;

/// Every kernel source, in the order they are concatenated (the common header first).
const SOURCES: [(&str, &str); 4] = [
    ("common.cuh", include_str!("../cuda/common.cuh")),
    ("elementwise.cu", include_str!("../cuda/elementwise.cu")),
    ("attention.cu", include_str!("../cuda/attention.cu")),
    ("flash.cu", include_str!("../cuda/flash.cu")),
];

/// How the module was obtained, for startup logs and the benchmark report.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    pub arch: String,
    /// `true` when NVRTC ran; `false` when the PTX came from the disk cache.
    pub compiled: bool,
    pub elapsed: Duration,
    pub cache_file: Option<PathBuf>,
}

/// The NVRTC target for a compute capability: `sm_90a` on Hopper (its arch-specific features), `sm_XY` otherwise.
pub fn arch_for(major: i32, minor: i32) -> String {
    if (major, minor) == (9, 0) {
        "sm_90a".to_owned()
    } else {
        format!("sm_{major}{minor}")
    }
}

fn source() -> String {
    SOURCES
        .iter()
        .map(|(name, text)| format!("// ---- {name}\n{text}\n"))
        .collect()
}

/// Compiles (or reads from `cache_dir`) and loads the kernels for `ctx`'s device.
pub(crate) fn load_module(
    ctx: &Arc<CudaContext>,
    cache_dir: Option<&Path>,
) -> Result<(Arc<CudaModule>, ModuleInfo), KernelError> {
    let started = Instant::now();
    let (major, minor) = ctx.compute_capability()?;
    let arch = arch_for(major, minor);
    let src = source();
    let mut hasher = Sha256::new();
    hasher.update(src.as_bytes());
    hasher.update(arch.as_bytes());
    // The NVRTC that produced the PTX comes with the CUDA version cudarc binds.
    hasher.update(b"cudarc-0.19/cuda-13000");
    let key: String = hasher.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    let cache_file = cache_dir.map(|d| d.join(format!("cleave-kernels-{arch}-{key}.ptx")));

    if let Some(file) = &cache_file
        && let Ok(ptx) = std::fs::read_to_string(file)
    {
        let module = ctx.load_module(Ptx::from_src(ptx))?;
        return Ok((
            module,
            ModuleInfo {
                arch,
                compiled: false,
                elapsed: started.elapsed(),
                cache_file,
            },
        ));
    }

    let ptx = compile_ptx(&arch)?;
    if let Some(file) = &cache_file {
        // A cache that cannot be written only costs the next start a compile.
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(file, &ptx));
        if let Err(error) = written {
            tracing::warn!(file = %file.display(), %error, "cannot cache the compiled kernels");
        }
    }
    let module = ctx.load_module(Ptx::from_src(ptx))?;
    Ok((
        module,
        ModuleInfo {
            arch,
            compiled: true,
            elapsed: started.elapsed(),
            cache_file,
        },
    ))
}

/// Compiles every kernel source for `arch` (e.g. `sm_90a`) to PTX with NVRTC. Needs the NVRTC library, not a GPU.
pub fn compile_ptx(arch: &str) -> Result<String, KernelError> {
    let arch_static: &'static str = match arch {
        "sm_90a" => "sm_90a",
        "sm_90" => "sm_90",
        "sm_80" => "sm_80",
        "sm_86" => "sm_86",
        "sm_89" => "sm_89",
        "sm_100" => "sm_100",
        "sm_120" => "sm_120",
        other => {
            return Err(KernelError::UnsupportedDevice { arch: other.to_owned() });
        }
    };
    let opts = CompileOptions {
        arch: Some(arch_static),
        options: vec!["-std=c++17".to_owned()],
        name: Some("cleave_kernels.cu".to_owned()),
        ..CompileOptions::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source(), opts).map_err(|e| KernelError::Compile {
        arch: arch.to_owned(),
        log: match e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
            other => other.to_string(),
        },
    })?;
    Ok(ptx.to_src())
}
