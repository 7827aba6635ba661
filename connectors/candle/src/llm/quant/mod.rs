//! Quantized weight matrices in the bytes a GGUF file holds, and their
//! products with activations, on kernels magpie owns.
//!
//! Every type is multiplied as it is stored (nothing widened at load):
//! activations are quantized per row to 8 bits (blocks of 32 with one scale
//! for the 32-value types, blocks of 256 with 16-value sums for the K types),
//! and each dot product runs in integers per block, scaled in f32, as ggml
//! does. `portable` holds the plain-Rust kernels (any CPU, and the reference
//! the vector kernels are tested against); `avx2` the AVX2 + FMA ones, chosen
//! at run time when the CPU has them. `MAGPIE_LLM_KERNELS=portable` forces
//! the portable path.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod formats;
mod matrix;
mod packed;
mod packed_k;
mod portable;

pub use formats::{dequantize_row, QType};
pub use matrix::{quantize_rows, QMatrix};

/// Activations of one row quantized to 8 bits: 32-value blocks (for Q4_0,
/// Q4_1, Q5_0, Q5_1, Q8_0) or 256-value blocks (for Q4_K, Q5_K, Q6_K).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Act32 {
    /// Scale: value ≈ d · q.
    pub d: f32,
    /// d · Σ q (the sum the types with a minimum need).
    pub s: f32,
    /// Σ q (what packed rows, stored unsigned, subtract).
    pub sum: i32,
    /// The codes.
    pub q: [i8; 32],
}

/// A 256-value block of activations with the sums of each 16 codes.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Act256 {
    /// Scale: value ≈ d · q.
    pub d: f32,
    /// The codes.
    pub q: [i8; 256],
    /// Σ q over each 16 values.
    pub bsums: [i16; 16],
    /// Σ q over each 32 values (what packed Q4_K rows' minimums multiply).
    pub bsum32: [i16; 8],
}

/// One row's quantized activations, in the block size a weight type wants.
#[derive(Clone, Copy)]
pub enum Acts<'a> {
    /// For the 32-value types.
    B32(&'a [Act32]),
    /// For the K types.
    B256(&'a [Act256]),
}

/// Which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// Plain Rust, any CPU.
    Portable,
    /// AVX2 + FMA (and F16C, which every such CPU has).
    Avx2,
    /// The AVX2 kernels, the prompt tiles built with AVX-512 F/BW/VL for its
    /// 32 registers (the same values bit for bit).
    Avx512,
}

impl Kernels {
    /// Whether these kernels use AVX-512 VNNI.
    pub fn vnni(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self == Kernels::Avx512 {
            return std::arch::is_x86_feature_detected!("avx512vnni");
        }
        false
    }

    /// The instructions packed rows ([`QMatrix::packed`]) run on with these
    /// kernels.
    pub fn pack_isa(self) -> PackIsa {
        match self {
            Kernels::Portable => PackIsa::Portable,
            _ if self.vnni() => PackIsa::Vnni,
            _ => PackIsa::Avx2,
        }
    }

    /// The best this CPU has (`MAGPIE_LLM_KERNELS=portable` forces plain
    /// Rust, `MAGPIE_LLM_KERNELS=avx2` the AVX2 build on an AVX-512 CPU;
    /// `MAGPIE_LLM_KERNELS=candle` leaves these kernels out and runs candle's,
    /// as on a GPU).
    pub fn detect() -> Self {
        static K: std::sync::OnceLock<Kernels> = std::sync::OnceLock::new();
        *K.get_or_init(|| {
            if std::env::var("MAGPIE_LLM_KERNELS").as_deref() == Ok("portable") {
                return Kernels::Portable;
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                let wide = std::env::var("MAGPIE_LLM_KERNELS").as_deref() != Ok("avx2")
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl");
                return if wide { Kernels::Avx512 } else { Kernels::Avx2 };
            }
            Kernels::Portable
        })
    }
}

/// What the packed-row kernels run on: the same values on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackIsa {
    /// Plain Rust.
    Portable,
    /// AVX2 (`vpmaddubsw` + `vpmaddwd` for each 4-byte dot product).
    Avx2,
    /// AVX-512 VNNI (`vpdpbusd`).
    Vnni,
}

/// Quantize `x` (a multiple of 32 long) into 32-value blocks.
pub fn quantize32(x: &[f32], out: &mut Vec<Act32>) {
    out.clear();
    for b in x.chunks_exact(32) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut q = [0i8; 32];
        let mut sum = 0i32;
        for (o, v) in q.iter_mut().zip(b) {
            *o = (v * id).round() as i8;
            sum += *o as i32;
        }
        // ggml keeps the scale in f16; so do we, so results match it
        let d = half::f16::from_f32(d).to_f32();
        out.push(Act32 {
            d,
            s: d * sum as f32,
            sum,
            q,
        });
    }
}

/// Quantize `x` (a multiple of 256 long) into 256-value blocks.
pub fn quantize256(x: &[f32], out: &mut Vec<Act256>) {
    out.clear();
    for b in x.chunks_exact(256) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut blk = Act256 {
            d,
            q: [0; 256],
            bsums: [0; 16],
            bsum32: [0; 8],
        };
        for (o, v) in blk.q.iter_mut().zip(b) {
            *o = (v * id).round().clamp(-127.0, 127.0) as i8;
        }
        for (g, s) in blk.bsums.iter_mut().enumerate() {
            *s = blk.q[g * 16..(g + 1) * 16].iter().map(|&v| v as i16).sum();
        }
        for (j, s) in blk.bsum32.iter_mut().enumerate() {
            *s = blk.bsums[2 * j] + blk.bsums[2 * j + 1];
        }
        out.push(blk);
    }
}

/// `w · x[j]` for one weight row of type `ty` (its bytes) and `N` rows of
/// activations quantized for that type (each weight block is unpacked once
/// for all `N`).
///
/// # Panics
/// When the activations' block size does not match the type.
pub fn dots<const N: usize>(kernels: Kernels, ty: QType, w: &[u8], x: &[Acts<'_>; N]) -> [f32; N] {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernels::Avx2 and Avx512 are only detected where the CPU has
        // AVX2, FMA and F16C.
        Kernels::Avx2 | Kernels::Avx512 => unsafe { avx2::dots(ty, w, x) },
        _ => std::array::from_fn(|j| portable::dot(ty, w, &x[j])),
    }
}

/// `R` weight rows of a 32-value type against `N` rows of activations (the
/// prompt tiles: 2 × 4, or 3 × 8 with AVX-512): `[token][row]`, each value
/// what [`dots`] gives for it, bit for bit.
///
/// # Panics
/// For a K type.
pub fn dots_rows<const R: usize, const N: usize>(
    kernels: Kernels,
    ty: QType,
    rows: [&[u8]; R],
    a: [&[Act32]; N],
) -> [[f32; R]; N] {
    assert!(!ty.is_k(), "row tiles take the 32-value types");
    match kernels {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernels::Avx2 is only detected where the CPU has AVX2, FMA and F16C.
        Kernels::Avx2 => unsafe { avx2::dots_rows(ty, rows, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernels::Avx512 is only detected where the CPU also has
        // AVX-512 F, BW and VL.
        Kernels::Avx512 => unsafe { avx2::dots_rows_avx512(ty, rows, a) },
        _ => std::array::from_fn(|t| {
            std::array::from_fn(|r| portable::dot(ty, rows[r], &Acts::B32(a[t])))
        }),
    }
}

/// `out[r] = w_r · x` for `out.len()` consecutive rows of `ty` (`row_bytes`
/// each) from the start of `w`: what [`dots`] gives row by row, with the
/// dispatch and set-up paid once.
pub fn dot_range(
    kernels: Kernels,
    ty: QType,
    w: &[u8],
    row_bytes: usize,
    x: Acts<'_>,
    out: &mut [f32],
) {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernels::Avx512 is only detected where the CPU has AVX2,
        // FMA, F16C and AVX-512 F/BW/VL; VNNI is checked here.
        Kernels::Avx512 if kernels.vnni() => unsafe {
            avx2::dot_range_vnni(ty, w, row_bytes, x, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Kernels::Avx2 and Avx512 are only detected where the CPU has
        // AVX2, FMA and F16C.
        Kernels::Avx2 | Kernels::Avx512 => unsafe { avx2::dot_range(ty, w, row_bytes, x, out) },
        _ => {
            for (r, o) in out.iter_mut().enumerate() {
                *o = portable::dot(ty, &w[r * row_bytes..(r + 1) * row_bytes], &x);
            }
        }
    }
}

/// `w · x` for one weight row and one row of activations.
pub fn dot(kernels: Kernels, ty: QType, w: &[u8], x: &Acts<'_>) -> f32 {
    dots::<1>(kernels, ty, w, &[*x])[0]
}

#[cfg(test)]
mod tests;
