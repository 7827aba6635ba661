//! Device selection and CPU feature checks.

use candle_core::Device;

/// The GPU when built with `cuda` and one is present, else the CPU (with a message).
pub fn select_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => tracing::warn!("no usable CUDA device ({e}); running on the CPU"),
        }
    }
    Device::Cpu
}

/// True when the CPU has the vector instructions this build was compiled for
/// (AVX2 and FMA on x86-64; always true elsewhere).
pub fn cpu_features_ok() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut missing = Vec::new();
        if !std::arch::is_x86_feature_detected!("avx2") {
            missing.push("AVX2");
        }
        if !std::arch::is_x86_feature_detected!("fma") {
            missing.push("FMA");
        }
        if !missing.is_empty() {
            return Err(format!(
                "this CPU lacks {}, which this build of magpie uses; rebuild without the \
                 target-cpu setting in .cargo/config.toml (slower, but runs anywhere)",
                missing.join(" and ")
            ));
        }
    }
    Ok(())
}
