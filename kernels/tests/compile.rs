//! The kernel sources compile with NVRTC for Hopper. Needs only the NVRTC library, not a GPU; runs when
//! `CLEAVE_TEST_NVRTC=1` (cudarc panics when the library is absent, so it cannot probe for it safely).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn every_kernel_compiles_for_sm_90a() {
    if std::env::var("CLEAVE_TEST_NVRTC").as_deref() != Ok("1") {
        eprintln!("skipped: set CLEAVE_TEST_NVRTC=1 where the NVRTC library is installed");
        return;
    }
    let ptx = match cleave_kernels::compile_ptx("sm_90a") {
        Ok(ptx) => ptx,
        Err(e) => panic!("{e}"),
    };
    for name in [
        "embed_rows",
        "rms_norm",
        "silu_mul",
        "fill_uniform_bf16",
        "rope_write_kv",
        "paged_attention",
        "prefill_attention",
        "flash_prefill_hd64",
        "flash_prefill_hd128",
        "decode_attention_hd64",
        "decode_attention_hd128",
    ] {
        assert!(ptx.contains(&format!(".entry {name}")), "no kernel {name} in the PTX");
    }
}
