//! The int8 tile on AVX2: 16-bit codes through `vpmaddwd`, and the row
//! quantizer that writes them.

use std::arch::x86_64::*;

/// Codes as 16-bit lanes, the same values as [`super::vnni::quantize_row`]
/// gives: the same range, the same step, the first `k / 16 · 16` values
/// rounded to even by the vector unit and the rest by `f32::round`.
///
/// # Safety
/// The CPU has AVX2 and FMA; `dst` is at least `2 · row.len()` bytes.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row(row: &[f32], dst: &mut [u8]) -> (f32, f32) {
    let k = row.len();
    let full = k / 16 * 16;
    let mut hi = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut lo = _mm256_set1_ps(f32::INFINITY);
    for c in (0..full).step_by(8) {
        let v = _mm256_loadu_ps(row.as_ptr().add(c));
        hi = _mm256_max_ps(hi, v);
        lo = _mm256_min_ps(lo, v);
    }
    let (mut his, mut los) = ([0f32; 8], [0f32; 8]);
    _mm256_storeu_ps(his.as_mut_ptr(), hi);
    _mm256_storeu_ps(los.as_mut_ptr(), lo);
    let mut max = his.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    let mut min = los.iter().fold(f32::INFINITY, |m, v| m.min(*v));
    for v in &row[full..] {
        max = max.max(*v);
        min = min.min(*v);
    }
    let step = (max - min) / 255.0;
    if !(step > 0.0 && step.is_finite()) {
        dst.fill(0);
        return (0.0, if min.is_finite() { min } else { 0.0 });
    }
    let inv = _mm256_set1_ps(1.0 / step);
    let base = _mm256_set1_ps(min);
    let (zero, top) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
    for c in (0..full).step_by(16) {
        let mut q = [zero; 2];
        for (h, q) in q.iter_mut().enumerate() {
            let x = _mm256_sub_ps(_mm256_loadu_ps(row.as_ptr().add(c + 8 * h)), base);
            let v = _mm256_cvtps_epi32(_mm256_mul_ps(x, inv));
            *q = _mm256_min_epi32(_mm256_max_epi32(v, zero), top);
        }
        // 16 codes as u16, in order (packus works within 128-bit halves)
        let packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(q[0], q[1]), 0b11_01_10_00);
        _mm256_storeu_si256(dst.as_mut_ptr().add(2 * c) as *mut __m256i, packed);
    }
    for (i, v) in row.iter().enumerate().skip(full) {
        let q = super::code(*v, min, step);
        dst[2 * i..2 * i + 2].copy_from_slice(&q.to_le_bytes());
    }
    dst[2 * k..].fill(0);
    (step, min)
}

pub(super) unsafe fn tile(rows: usize, pairs: usize, o: super::Operands) {
    by_rows!(mr, rows, [1, 2, 3, 4, 5; 6], (pairs, o))
}

/// `MR` rows × 16 columns: each step broadcasts two 16-bit codes of a row
/// against two vectors of the panel (8 columns × the same two inputs);
/// `vpmaddwd` multiplies and adds each pair into 32 bits, exactly
/// (255 × 127 × 2 fits with room to spare).
#[target_feature(enable = "avx2,fma")]
unsafe fn mr<const MR: usize>(pairs: usize, o: super::Operands) {
    let (a, b, lda) = (o.a, o.b, o.lda);
    let (sw, ws, a_scale, a_min, t) = (o.sw, o.ws, o.a_scale, o.a_min, o.t);
    let mut c0 = [_mm256_setzero_si256(); MR];
    let mut c1 = [_mm256_setzero_si256(); MR];
    let mut bp = b as *const __m256i;
    let mut ap = a;
    for _ in 0..pairs {
        let b0 = _mm256_load_si256(bp);
        let b1 = _mm256_load_si256(bp.add(1));
        for i in 0..MR {
            let av = _mm256_set1_epi32((ap.add(i * lda) as *const i32).read_unaligned());
            c0[i] = _mm256_add_epi32(c0[i], _mm256_madd_epi16(av, b0));
            c1[i] = _mm256_add_epi32(c1[i], _mm256_madd_epi16(av, b1));
        }
        bp = bp.add(2);
        ap = ap.add(4);
    }
    for i in 0..MR {
        let (sa, ma) = (
            _mm256_set1_ps(*a_scale.add(i)),
            _mm256_set1_ps(*a_min.add(i)),
        );
        for (h, acc) in [c0[i], c1[i]].into_iter().enumerate() {
            let (w, m) = (
                _mm256_loadu_ps(sw.add(8 * h)),
                _mm256_loadu_ps(ws.add(8 * h)),
            );
            // as scale_back: s_w · s_a · Σ q·q_w + (s_w · Σ q_w) · min
            let v = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(acc),
                _mm256_mul_ps(w, sa),
                _mm256_mul_ps(m, ma),
            );
            _mm256_storeu_ps(t.add(i * 16 + 8 * h), v);
        }
    }
}
