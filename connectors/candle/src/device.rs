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

/// A device in words, with its memory where it can tell (a GPU).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceReport {
    /// `cpu (2 threads, LLM kernels AVX2+FMA)` or `cuda:0 NVIDIA H200 (compute 9.0)`.
    pub name: String,
    /// Device memory in use (by every process on it), bytes; GPUs only.
    pub memory_used_bytes: Option<u64>,
    /// Device memory in all, bytes; GPUs only.
    pub memory_total_bytes: Option<u64>,
}

/// What `dev` is, for `docqa model info` and the benchmarks.
pub fn describe_device(dev: &Device) -> DeviceReport {
    match dev {
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let ctx = d.cuda_stream().context().clone();
            let name = ctx.name().unwrap_or_else(|_| "unnamed GPU".into());
            let cap = ctx
                .compute_capability()
                .map(|(a, b)| format!(" (compute {a}.{b})"))
                .unwrap_or_default();
            let mem = ctx.mem_get_info().ok();
            DeviceReport {
                name: format!("cuda:{} {name}{cap}", ctx.ordinal()),
                memory_used_bytes: mem.map(|(free, total)| (total - free) as u64),
                memory_total_bytes: mem.map(|(_, total)| total as u64),
            }
        }
        _ => {
            let kernels = match crate::llm::quant::Kernels::detect() {
                crate::llm::quant::Kernels::Avx2 => "AVX2+FMA",
                #[cfg(target_arch = "x86_64")]
                crate::llm::quant::Kernels::Avx512
                    if std::arch::is_x86_feature_detected!("avx512vnni") =>
                {
                    "AVX2+FMA, AVX-512 prompt tiles, VNNI block sums"
                }
                crate::llm::quant::Kernels::Avx512 => "AVX2+FMA, prompt tiles AVX-512",
                crate::llm::quant::Kernels::Portable => "portable",
            };
            DeviceReport {
                name: format!(
                    "cpu ({} threads, LLM kernels {kernels})",
                    candle_core::utils::get_num_threads()
                ),
                memory_used_bytes: None,
                memory_total_bytes: None,
            }
        }
    }
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

/// Keep large tensor buffers in the heap between operations instead of mapping and
/// unmapping them for every op (glibc's default for blocks over its mmap threshold).
/// candle allocates a fresh output per op; on 256-token batches the page faults
/// cost about a fifth of the embedding time (BENCHMARKS.md). Call once at start-up.
/// Does nothing on platforms other than Linux with glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// candle picks its quantized CPU kernels at run time: on CPUs with AVX512-VNNI
/// (and AMX) one-token decode and multi-token prompt steps then take kernels
/// that quantize activations differently, so logits depend on how a prompt was
/// batched (measured: up to 0.3 on a tiny model, 0.7 on Gemma 3 270M, where the
/// AVX2 tier agrees within 1e-3). magpie keeps every x86 CPU on the AVX2 tier, so
/// answers are the same whatever the CPU and however the prompt was split.
/// `MAGPIE_CPU_KERNELS=native` keeps candle's own choice. Called by
/// [`crate::LocalLlm::load`]; call it at start-up, before other threads run.
pub fn uniform_cpu_kernels() {
    let native = std::env::var("MAGPIE_CPU_KERNELS").as_deref() == Ok("native");
    if !native && std::env::var_os("MISTRALRS_FORCE_AVX2").is_none() {
        std::env::set_var("MISTRALRS_FORCE_AVX2", "1");
    }
}

/// candle's f32 matmul asks for the thread count on every call, and without
/// `RAYON_NUM_THREADS` that means reading /proc to count physical cores (2.6%
/// of LLM decode time in a profile). Set it once, to the count candle would
/// find. Call at start-up, before other threads run.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}
