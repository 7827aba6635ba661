//! With the `cuda` feature: compiles the fused attention kernel
//! (src/llm/flash/flash.cu) to PTX with nvcc, for the compute capability in
//! CUDA_COMPUTE_CAP (as candle's kernels; default 80). The driver compiles
//! the PTX for the card at load. scripts/setup_cuda.sh installs nvcc.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/llm/flash/flash.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("flash.ptx");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap: u32 = std::env::var("CUDA_COMPUTE_CAP")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(80);
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/llm/flash/flash.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("nvcc failed ({s}) on src/llm/flash/flash.cu"),
        Err(e) => panic!(
            "the cuda feature needs nvcc ({nvcc}: {e}): run `eval \"$(scripts/setup_cuda.sh)\"` first, or set NVCC"
        ),
    }
}
