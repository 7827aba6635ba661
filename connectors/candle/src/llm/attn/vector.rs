//! The AVX2 + FMA + F16C tiles (the same operations as the plain-Rust ones).

use std::arch::x86_64::*;

use super::Elem;

/// The 8 lanes of `v` added as [`super::reduce`] adds them.
#[inline(always)]
unsafe fn reduce(v: __m256) -> f32 {
    let b = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)))
}

/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile<T: Elem, const Q: usize, const K: usize>(
    q: [&[f32]; Q],
    k: [&[T]; K],
    n: usize,
) -> [[f32; K]; Q] {
    assert!(q.iter().all(|r| r.len() >= n) && k.iter().all(|r| r.len() >= n));
    let mut acc = [[_mm256_setzero_ps(); K]; Q];
    let whole = n / 8 * 8;
    let (qp, kp) = (q.map(|r| r.as_ptr()), k.map(|r| r.as_ptr()));
    let mut c = 0;
    while c < whole {
        let kv: [__m256; K] = std::array::from_fn(|j| T::load8(kp[j].add(c)));
        for i in 0..Q {
            let qv = _mm256_loadu_ps(qp[i].add(c));
            for j in 0..K {
                acc[i][j] = _mm256_fmadd_ps(qv, kv[j], acc[i][j]);
            }
        }
        c += 8;
    }
    std::array::from_fn(|i| {
        std::array::from_fn(|j| reduce(acc[i][j]) + super::tail(q[i], k[j], whole, n))
    })
}

/// `R` output rows' 16-value chunk at `c` plus Σ_j w[r][j] · value j,
/// keys in order.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the chunk lies inside every row and value.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn weighted_chunk<T: Elem, const R: usize>(
    outs: [*mut f32; R],
    w: [&[f32]; R],
    vals: &[T],
    n: usize,
    span: usize,
    c: usize,
) {
    assert!(vals.len() >= span * n && c + 16 <= n && w.iter().all(|w| w.len() >= span));
    let mut acc: [[__m256; 2]; R] = std::array::from_fn(|i| {
        [
            _mm256_loadu_ps(outs[i].add(c)),
            _mm256_loadu_ps(outs[i].add(c + 8)),
        ]
    });
    let v = vals.as_ptr();
    for j in 0..span {
        let (v0, v1) = (T::load8(v.add(j * n + c)), T::load8(v.add(j * n + c + 8)));
        for i in 0..R {
            let wj = _mm256_set1_ps(*w[i].get_unchecked(j));
            acc[i][0] = _mm256_fmadd_ps(wj, v0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(wj, v1, acc[i][1]);
        }
    }
    for i in 0..R {
        _mm256_storeu_ps(outs[i].add(c), acc[i][0]);
        _mm256_storeu_ps(outs[i].add(c + 8), acc[i][1]);
    }
}

/// `y += w · x` by 8-value vectors (the same values as element by element).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy<T: Elem>(y: &mut [f32], w: f32, x: &[T]) {
    let n = y.len().min(x.len());
    let whole = n / 8 * 8;
    let wv = _mm256_set1_ps(w);
    let (yp, xp) = (y.as_mut_ptr(), x.as_ptr());
    let mut c = 0;
    while c < whole {
        _mm256_storeu_ps(
            yp.add(c),
            _mm256_fmadd_ps(wv, T::load8(xp.add(c)), _mm256_loadu_ps(yp.add(c))),
        );
        c += 8;
    }
    for e in whole..n {
        y[e] = w.mul_add(x[e].f32(), y[e]);
    }
}
