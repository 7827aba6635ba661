//! Row operations of the encoder: element-wise sums, GELU, layer norm and
//! softmax. 256-bit vector code where the build targets AVX2 + FMA (this
//! workspace's default, `.cargo/config.toml`), the same formulas in plain Rust
//! elsewhere, and 512-bit code for GELU and softmax when the CPU has AVX-512.

use super::gemm::Isa;

/// `out = a + b`.
pub fn add2(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// `out = a + b + c`.
pub fn add3(out: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) {
    for (((o, x), y), z) in out.iter_mut().zip(a).zip(b).zip(c) {
        *o = x + y + z;
    }
}

/// Sum in eight lanes (vectorises; the order differs from a serial sum only
/// by rounding).
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += f(*v);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| f(*v)).sum();
    acc.iter().sum::<f32>() + tail
}

/// The largest value; 512-bit vectors when `isa` allows.
pub fn row_max(x: &[f32], isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: Isa::Avx512 is only chosen when the CPU has AVX-512F.
        return unsafe { simd512::max(x) };
    }
    let _ = isa;
    lane_max(x)
}

/// The largest value, in sixteen lanes (vectorises; NaN is passed over).
fn lane_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = if *v > *a { *v } else { *a };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    acc.iter().copied().fold(tail, f32::max)
}

/// In place: `x = (x - mean) / sqrt(var + eps) * gain + shift`.
pub fn layer_norm(x: &mut [f32], gain: &[f32], shift: &[f32], eps: f32) {
    let n = x.len() as f32;
    let mean = lane_sum(x, |v| v) / n;
    let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, g), s) in x.iter_mut().zip(gain).zip(shift) {
        *v = (*v - mean) * inv * g + s;
    }
}

/// In place: `x = x · Φ(x)`, the exact (erf) GELU; erf is good to 1.5e-7.
/// 512-bit vectors when `isa` allows.
pub fn gelu(x: &mut [f32], isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: Isa::Avx512 is only chosen when the CPU has AVX-512F.
        unsafe { simd512::gelu(x) };
        return;
    }
    let _ = isa;
    gelu256(x);
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
fn gelu256(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: the build enables AVX2 and FMA; c has 8 elements.
        unsafe { simd::gelu8(c.as_mut_ptr()) };
    }
    for v in chunks.into_remainder() {
        *v = gelu_scalar(*v);
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
fn gelu256(x: &mut [f32]) {
    for v in x {
        *v = gelu_scalar(*v);
    }
}

/// In place: `x = exp(x - max)`, returning the sum: a softmax whose
/// normalisation is left to the caller (attention scales its output row
/// instead of every score).
pub fn exp_sum(x: &mut [f32], max: f32, isa: Isa) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: Isa::Avx512 is only chosen when the CPU has AVX-512F.
        return unsafe { simd512::exp_shifted(x, max) };
    }
    let _ = isa;
    exp_shifted(x, max);
    lane_sum(x, |v| v)
}

/// In place: `x = exp(x - shift)`.
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
fn exp_shifted(x: &mut [f32], shift: f32) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: the build enables AVX2 and FMA; c has 8 elements.
        unsafe { simd::exp8_shifted(c.as_mut_ptr(), shift) };
    }
    for v in chunks.into_remainder() {
        *v = exp_scalar(*v - shift);
    }
}

/// In place: `x = exp(x - shift)`.
#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
)))]
fn exp_shifted(x: &mut [f32], shift: f32) {
    for v in x {
        *v = exp_scalar(*v - shift);
    }
}

// Cephes-style exp: 2^n · p(r) with r = x − n·ln 2 in [−ln2/2, ln2/2]
// (ln 2 split in two for exact reduction), a degree-6 polynomial.
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_P: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];
const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;

/// exp, relative error about 2e-7 (the vector code's formula).
pub fn exp_scalar(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_P[0];
    for c in &EXP_P[1..] {
        p = p * r + c;
    }
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

// Abramowitz & Stegun 7.1.26: erf(x) = 1 − t·P(t)·e^(−x²), t = 1/(1 + p·x),
// absolute error below 1.5e-7 for x ≥ 0 (odd extension below).
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [
    1.061_405_4,
    -1.453_152_1,
    1.421_413_8,
    -0.284_496_74,
    0.254_829_6,
];

/// erf, absolute error below 1.5e-7 (plus rounding).
pub fn erf_scalar(x: f32) -> f32 {
    let ax = x.abs();
    let t = 1.0 / (1.0 + ERF_P * ax);
    let mut p = ERF_A[0];
    for c in &ERF_A[1..] {
        p = p * t + c;
    }
    let y = 1.0 - p * t * exp_scalar(-ax * ax);
    y.copysign(x)
}

/// One float to bf16, rounded to nearest even (NaN stays NaN).
pub fn bf16(x: f32) -> u16 {
    if x.is_nan() {
        return 0x7fc0;
    }
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The exact GELU on one value.
pub fn gelu_scalar(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_scalar(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma"
))]
mod simd {
    use std::arch::x86_64::*;

    use super::*;

    #[inline(always)]
    unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_max_ps(
            _mm256_min_ps(x, _mm256_set1_ps(EXP_HI)),
            _mm256_set1_ps(EXP_LO),
        );
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(LOG2E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let y = _mm256_fmadd_ps(
            _mm256_mul_ps(p, r),
            r,
            _mm256_add_ps(r, _mm256_set1_ps(1.0)),
        );
        let pow = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        _mm256_mul_ps(y, _mm256_castsi256_ps(pow))
    }

    /// # Safety
    /// `p` points at 8 floats.
    pub unsafe fn exp8_shifted(p: *mut f32, shift: f32) {
        let x = _mm256_sub_ps(_mm256_loadu_ps(p), _mm256_set1_ps(shift));
        _mm256_storeu_ps(p, exp(x));
    }

    /// # Safety
    /// `p` points at 8 floats.
    pub unsafe fn gelu8(p: *mut f32) {
        let x = _mm256_loadu_ps(p);
        let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
        let sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0));
        let az = _mm256_andnot_ps(_mm256_set1_ps(-0.0), z);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(az, _mm256_set1_ps(ERF_P), one));
        let mut poly = _mm256_set1_ps(ERF_A[0]);
        for c in &ERF_A[1..] {
            poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(*c));
        }
        let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(az, az)));
        let erf = _mm256_fnmadd_ps(_mm256_mul_ps(poly, t), e, one);
        let erf = _mm256_or_ps(erf, sign);
        let half_x = _mm256_mul_ps(x, _mm256_set1_ps(0.5));
        _mm256_storeu_ps(p, _mm256_fmadd_ps(half_x, erf, half_x));
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod simd512 {
    use std::arch::x86_64::*;

    use super::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(
            _mm512_min_ps(x, _mm512_set1_ps(EXP_HI)),
            _mm512_set1_ps(EXP_LO),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(LOG2E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let y = _mm512_fmadd_ps(
            _mm512_mul_ps(p, r),
            r,
            _mm512_add_ps(r, _mm512_set1_ps(1.0)),
        );
        // y · 2^n in one instruction
        _mm512_scalef_ps(y, n)
    }

    /// exp for x ≤ 0 to a relative error of about 1e-4 (enough for a value
    /// rounded to bf16 next): 2^n · q(f) with x·log2 e = n + f, |f| ≤ ½,
    /// q a degree-4 Taylor polynomial of 2^f.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp_coarse(x: __m512) -> __m512 {
        let y = _mm512_mul_ps(x, _mm512_set1_ps(LOG2E));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(y);
        let f = _mm512_sub_ps(y, n);
        const L: f32 = std::f32::consts::LN_2;
        let mut q = _mm512_set1_ps(L * L * L * L / 24.0);
        for c in [L * L * L / 6.0, L * L / 2.0, L, 1.0] {
            q = _mm512_fmadd_ps(q, f, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(q, n)
    }

    /// In place: `x = exp(x - shift)`.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted(x: &mut [f32], shift: f32) -> f32 {
        let mut chunks = x.chunks_exact_mut(16);
        let s = _mm512_set1_ps(shift);
        let mut sum = _mm512_setzero_ps();
        for c in &mut chunks {
            let v = exp(_mm512_sub_ps(_mm512_loadu_ps(c.as_ptr()), s));
            sum = _mm512_add_ps(sum, v);
            _mm512_storeu_ps(c.as_mut_ptr(), v);
        }
        let mut total = _mm512_reduce_add_ps(sum);
        for v in chunks.into_remainder() {
            *v = exp_scalar(*v - shift);
            total += *v;
        }
        total
    }

    /// `dst = bf16(exp(x - shift))` (rounded to nearest even); returns the
    /// sum of the f32 values.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dst` holds `x.len()` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_to_bf16(x: &[f32], shift: f32, dst: &mut [u16]) -> f32 {
        debug_assert!(dst.len() >= x.len());
        let s = _mm512_set1_ps(shift);
        let mut sum = _mm512_setzero_ps();
        let full = x.len() / 16 * 16;
        let (src, out) = (x.as_ptr(), dst.as_mut_ptr());
        for c in (0..full).step_by(16) {
            let v = exp_coarse(_mm512_sub_ps(_mm512_loadu_ps(src.add(c)), s));
            sum = _mm512_add_ps(sum, v);
            _mm512_mask_cvtepi32_storeu_epi16(out.add(c) as *mut _, 0xffff, bf16_lanes(v));
        }
        let mut total = _mm512_reduce_add_ps(sum);
        for c in full..x.len() {
            let v = exp_scalar(x[c] - shift);
            total += v;
            dst[c] = bf16(v);
        }
        total
    }

    /// Sixteen floats to bf16, rounded to nearest even (finite inputs).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn to_bf16(v: __m512) -> __m256i {
        _mm512_cvtepi32_epi16(bf16_lanes(v))
    }

    /// Sixteen floats to bf16 (rounded to nearest even, finite inputs), each
    /// in the low half of its 32-bit lane.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn bf16_lanes(v: __m512) -> __m512i {
        let b = _mm512_castps_si512(v);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
        _mm512_srli_epi32::<16>(r)
    }

    /// The largest value.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max(x: &[f32]) -> f32 {
        let mut chunks = x.chunks_exact(16);
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in &mut chunks {
            m = _mm512_max_ps(m, _mm512_loadu_ps(c.as_ptr()));
        }
        let tail = chunks
            .remainder()
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        _mm512_reduce_max_ps(m).max(tail)
    }

    /// In place: the exact GELU.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gelu(x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(16);
        for c in &mut chunks {
            let v = _mm512_loadu_ps(c.as_ptr());
            let z = _mm512_mul_ps(v, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
            let az = _mm512_abs_ps(z);
            let one = _mm512_set1_ps(1.0);
            // 1/(1 + p·|z|) by a 14-bit reciprocal and one Newton step (a
            // division costs 16 cycles a vector here)
            let den = _mm512_fmadd_ps(az, _mm512_set1_ps(ERF_P), one);
            let r0 = _mm512_rcp14_ps(den);
            let t = _mm512_mul_ps(r0, _mm512_fnmadd_ps(den, r0, _mm512_set1_ps(2.0)));
            let mut poly = _mm512_set1_ps(ERF_A[0]);
            for a in &ERF_A[1..] {
                poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(*a));
            }
            let e = exp(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(az, az)));
            // erf(|z|), then its sign from z: Φ(x)·x = x/2 · (1 + erf(z))
            let erf_abs = _mm512_fnmadd_ps(_mm512_mul_ps(poly, t), e, one);
            let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(z, _mm512_setzero_ps());
            let erf = _mm512_mask_sub_ps(erf_abs, neg, _mm512_setzero_ps(), erf_abs);
            let half_x = _mm512_mul_ps(v, _mm512_set1_ps(0.5));
            _mm512_storeu_ps(c.as_mut_ptr(), _mm512_fmadd_ps(half_x, erf, half_x));
        }
        for v in chunks.into_remainder() {
            *v = gelu_scalar(*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        let mut x = -20.0f32;
        while x < 20.0 {
            let e = exp_scalar(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let z = x / 4.0;
            worst_erf = worst_erf.max((erf_scalar(z) as f64 - erf64(z as f64)).abs());
            x += 0.001;
        }
        assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
        assert!(worst_erf < 1e-6, "erf absolute error {worst_erf}");
    }

    /// erf to double precision by its Taylor series (|x| ≤ 5 is enough here).
    fn erf64(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to even (1.0)
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16(-2.0), 0xc000);
        assert_eq!(bf16(f32::NAN) & 0x7fc0, 0x7fc0);
    }

    /// The softmax of the bf16 attention: each probability within bf16's
    /// rounding of exp, the sum (kept in f32) within 1e-4.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn exp_to_bf16_is_close() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: no AVX-512 on this CPU");
            return;
        }
        let xs: Vec<f32> = (0..333).map(|i| -(i as f32) * 0.091).collect();
        let mut out = vec![0u16; xs.len()];
        // SAFETY: AVX-512F checked above.
        let sum = unsafe { simd512::exp_to_bf16(&xs, 0.25, &mut out) } as f64;
        let want_sum: f64 = xs.iter().map(|x| (*x as f64 - 0.25).exp()).sum();
        assert!(
            (sum - want_sum).abs() / want_sum < 1e-4,
            "{sum} vs {want_sum}"
        );
        for (x, b) in xs.iter().zip(&out) {
            let got = f32::from_bits((*b as u32) << 16) as f64;
            let want = (*x as f64 - 0.25).exp();
            assert!(
                (got - want).abs() <= want * 0.0042,
                "exp({x} - 0.25) = {got} vs {want}"
            );
        }
    }

    #[test]
    fn vector_paths_agree_with_scalar() {
        for isa in Isa::available() {
            vector_paths_agree_on(isa);
        }
    }

    fn vector_paths_agree_on(isa: Isa) {
        let xs: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.07).collect();
        let mut g = xs.clone();
        gelu(&mut g, isa);
        for (x, y) in xs.iter().zip(&g) {
            assert!(
                (gelu_scalar(*x) - y).abs() < 1e-6,
                "{isa:?} gelu({x}) = {y}"
            );
        }
        // softmax as attention computes it: row max, exp and sum, then 1/Σ
        let mut s = xs.clone();
        let inv = 1.0 / exp_sum(&mut s, row_max(&xs, isa), isa);
        let max = xs.iter().copied().fold(f32::MIN, f32::max) as f64;
        let total: f64 = xs.iter().map(|x| (*x as f64 - max).exp()).sum();
        for (x, y) in xs.iter().zip(&s) {
            let y = y * inv;
            let want = (*x as f64 - max).exp() / total;
            assert!(
                (want - y as f64).abs() < 1e-6,
                "softmax at {x}: {y} vs {want}"
            );
        }
        let mut ln = xs.clone();
        let ones = vec![1.0; xs.len()];
        let zeros = vec![0.0; xs.len()];
        layer_norm(&mut ln, &ones, &zeros, 1e-12);
        let mean: f32 = ln.iter().sum::<f32>() / ln.len() as f32;
        let var: f32 = ln.iter().map(|v| v * v).sum::<f32>() / ln.len() as f32;
        assert!(
            mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-4,
            "{mean} {var}"
        );
    }
}
