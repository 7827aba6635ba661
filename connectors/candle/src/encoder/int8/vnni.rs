//! The int8 tile on AVX-512 VNNI (`vpdpbusd`), and the row quantizer for
//! AMX and VNNI (codes as bytes).

use std::arch::x86_64::*;

/// # Safety
/// The CPU has AVX-512F; `dst` is at least `row.len()` bytes.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn quantize_row(row: &[f32], dst: &mut [u8]) -> (f32, f32) {
    let k = row.len();
    let full = k / 16 * 16;
    let mut hi = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut lo = _mm512_set1_ps(f32::INFINITY);
    for c in (0..full).step_by(16) {
        let v = _mm512_loadu_ps(row.as_ptr().add(c));
        hi = _mm512_max_ps(hi, v);
        lo = _mm512_min_ps(lo, v);
    }
    let (mut max, mut min) = (_mm512_reduce_max_ps(hi), _mm512_reduce_min_ps(lo));
    for v in &row[full..] {
        max = max.max(*v);
        min = min.min(*v);
    }
    let step = (max - min) / 255.0;
    if !(step > 0.0 && step.is_finite()) {
        // a constant row (or one with no finite range): every code 0, value = min
        dst.fill(0);
        return (0.0, if min.is_finite() { min } else { 0.0 });
    }
    let inv = _mm512_set1_ps(1.0 / step);
    let base = _mm512_set1_ps(min);
    let (zero, top) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
    for c in (0..full).step_by(16) {
        let x = _mm512_sub_ps(_mm512_loadu_ps(row.as_ptr().add(c)), base);
        let q = _mm512_cvtps_epi32(_mm512_mul_ps(x, inv));
        let q = _mm512_min_epi32(_mm512_max_epi32(q, zero), top);
        _mm_storeu_si128(
            dst.as_mut_ptr().add(c) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
    }
    for (d, v) in dst[full..k].iter_mut().zip(&row[full..]) {
        *d = super::code(*v, min, step) as u8;
    }
    dst[k..].fill(0);
    (step, min)
}

pub(super) unsafe fn tile(rows: usize, groups: usize, o: super::Operands) {
    by_rows!(mr, rows, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11; 12], (groups, o))
}

#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn mr<const MR: usize>(groups: usize, o: super::Operands) {
    let (a, b, lda) = (o.a, o.b, o.lda);
    let (sw, ws, a_scale, a_min, t) = (o.sw, o.ws, o.a_scale, o.a_min, o.t);
    let mut c0 = [_mm512_setzero_si512(); MR];
    let mut c1 = [_mm512_setzero_si512(); MR];
    let mut bp = b;
    let mut ap = a;
    for _ in 0..groups {
        let b0 = _mm512_load_si512(bp as *const _);
        let b1 = _mm512_load_si512(bp.add(64) as *const _);
        for i in 0..MR {
            let av = _mm512_set1_epi32((ap.add(i * lda) as *const i32).read_unaligned());
            c0[i] = _mm512_dpbusd_epi32(c0[i], av, b0);
            c1[i] = _mm512_dpbusd_epi32(c1[i], av, b1);
        }
        bp = bp.add(128);
        ap = ap.add(4);
    }
    for i in 0..MR {
        let (sa, ma) = (*a_scale.add(i), *a_min.add(i));
        super::scale_back(c0[i], c1[i], sw, ws, sa, ma, t.add(i * 32));
    }
}
