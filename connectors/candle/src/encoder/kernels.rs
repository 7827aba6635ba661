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
    let ops = (k, a, lda, b, tile);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => x86::tile_avx512(rows, ops),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::tile_avx2(rows, ops),
        _ => portable_tile(rows, ops),
    }
}

/// A tile's operands as [`kernel`] takes them: `k`, `a`, `lda`, `b`, `tile`.
type Operands = (usize, *const f32, usize, *const f32, *mut f32);

unsafe fn portable_tile(rows: usize, (k, a, lda, b, tile): Operands) {
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

    pub(super) unsafe fn tile_avx2(rows: usize, (k, a, lda, b, t): super::Operands) {
        by_rows!(avx2_mr, rows, [1, 2, 3, 4, 5; 6], (k, a, lda, b, t))
    }

    pub(super) unsafe fn tile_avx512(rows: usize, (k, a, lda, b, t): super::Operands) {
        by_rows!(avx512_mr, rows, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11; 12], (k, a, lda, b, t))
    }

    /// An `MR × 2W` microkernel for one vector width `W`: each step loads two
    /// vectors of the panel row and broadcasts one value of each of the `MR`
    /// rows against them.
    macro_rules! microkernel {
        ($name:ident, $feature:literal, $w:literal,
         $zero:ident, $load:ident, $set1:ident, $fma:ident, $store:ident) => {
            #[target_feature(enable = $feature)]
            unsafe fn $name<const MR: usize>(
                k: usize,
                a: *const f32,
                lda: usize,
                b: *const f32,
                t: *mut f32,
            ) {
                let mut c0 = [$zero(); MR];
                let mut c1 = [$zero(); MR];
                let mut bp = b;
                let mut ap = a;
                for _ in 0..k {
                    let b0 = $load(bp);
                    let b1 = $load(bp.add($w));
                    for i in 0..MR {
                        let av = $set1(*ap.add(i * lda));
                        c0[i] = $fma(av, b0, c0[i]);
                        c1[i] = $fma(av, b1, c1[i]);
                    }
                    bp = bp.add(2 * $w);
                    ap = ap.add(1);
                }
                for i in 0..MR {
                    $store(t.add(i * 2 * $w), c0[i]);
                    $store(t.add(i * 2 * $w + $w), c1[i]);
                }
            }
        };
    }

    microkernel! { avx2_mr, "avx2,fma", 8, _mm256_setzero_ps, _mm256_load_ps,
    _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps }
    microkernel! { avx512_mr, "avx512f", 16, _mm512_setzero_ps, _mm512_load_ps,
    _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps }
}
