//! The f32 micro-kernels: one `rows × NR` tile of `A · panel`, the whole
//! reduction in registers. AVX-512 (12 × 32), AVX2 + FMA (6 × 16) and plain
//! Rust (4 × 8); [`kernel`] picks by [`Isa`].

use super::gemm::Isa;

/// One `rows × NR` tile (rows ≤ MR) of `A·panel` into `tile` (row stride NR).
///
/// # Safety
/// `a` has `rows` rows of `k` floats, `lda` apart; `b` a packed panel of
/// `k × NR`, 64-byte aligned; `tile` room for `MR × NR`.
pub unsafe fn kernel(
    isa: Isa,
    rows: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    tile: *mut f32,
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::tile_avx512(rows, k, a, lda, b, tile),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::tile_avx2(rows, k, a, lda, b, tile),
        _ => portable_tile(rows, k, a, lda, b, tile),
    }
}

unsafe fn portable_tile(
    rows: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    tile: *mut f32,
) {
    const NR: usize = 8;
    let mut acc = [[0f32; NR]; 4];
    for kk in 0..k {
        let bp = std::slice::from_raw_parts(b.add(kk * NR), NR);
        for (i, acc_row) in acc.iter_mut().enumerate().take(rows) {
            let av = *a.add(i * lda + kk);
            for j in 0..NR {
                acc_row[j] += av * bp[j];
            }
        }
    }
    for (i, acc_row) in acc.iter().enumerate().take(rows) {
        std::ptr::copy_nonoverlapping(acc_row.as_ptr(), tile.add(i * NR), NR);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    macro_rules! dispatch {
        ($f:ident, $rows:expr, $($arg:expr),*) => {
            match $rows {
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*),
                5 => $f::<5>($($arg),*),
                6 => $f::<6>($($arg),*),
                7 => $f::<7>($($arg),*),
                8 => $f::<8>($($arg),*),
                9 => $f::<9>($($arg),*),
                10 => $f::<10>($($arg),*),
                11 => $f::<11>($($arg),*),
                _ => $f::<12>($($arg),*),
            }
        };
    }

    pub(super) unsafe fn tile_avx2(
        rows: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        t: *mut f32,
    ) {
        dispatch!(avx2_mr, rows.min(6), k, a, lda, b, t)
    }

    pub(super) unsafe fn tile_avx512(
        rows: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        t: *mut f32,
    ) {
        dispatch!(avx512_mr, rows, k, a, lda, b, t)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_mr<const MR: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        t: *mut f32,
    ) {
        if MR > 6 {
            return;
        }
        let mut c0 = [_mm256_setzero_ps(); MR];
        let mut c1 = [_mm256_setzero_ps(); MR];
        let mut bp = b;
        let mut ap = a;
        for _ in 0..k {
            let b0 = _mm256_load_ps(bp);
            let b1 = _mm256_load_ps(bp.add(8));
            for i in 0..MR {
                let av = _mm256_broadcast_ss(&*ap.add(i * lda));
                c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
            }
            bp = bp.add(16);
            ap = ap.add(1);
        }
        for i in 0..MR {
            _mm256_storeu_ps(t.add(i * 16), c0[i]);
            _mm256_storeu_ps(t.add(i * 16 + 8), c1[i]);
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_mr<const MR: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        b: *const f32,
        t: *mut f32,
    ) {
        let mut c0 = [_mm512_setzero_ps(); MR];
        let mut c1 = [_mm512_setzero_ps(); MR];
        let mut bp = b;
        let mut ap = a;
        for _ in 0..k {
            let b0 = _mm512_load_ps(bp);
            let b1 = _mm512_load_ps(bp.add(16));
            for i in 0..MR {
                let av = _mm512_set1_ps(*ap.add(i * lda));
                c0[i] = _mm512_fmadd_ps(av, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(av, b1, c1[i]);
            }
            bp = bp.add(32);
            ap = ap.add(1);
        }
        for i in 0..MR {
            _mm512_storeu_ps(t.add(i * 32), c0[i]);
            _mm512_storeu_ps(t.add(i * 32 + 16), c1[i]);
        }
    }
}
