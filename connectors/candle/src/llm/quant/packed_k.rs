//! Q4_K and Q6_K rows packed by eight, as [`super::packed`] packs the
//! 32-value types: one `vpdpbusd` multiplies 4 codes of each of 8 rows by 4
//! broadcast activation codes, each lane summing one row.
//!
//! A 256-value block has sub-block scales (8 of 32 values for Q4_K, with
//! minimums; 16 of 16 for Q6_K), so each sub-block's 8 integer sums are
//! multiplied by the 8 rows' scales in integers (`vpmulld`) and added into
//! the block's sum, which is exact; Q4_K's minimums meet the activations'
//! 32-value sums in one `vpdpwssd` per pair of sub-blocks; Q6_K's −32 starts
//! each sub-block's accumulator at −32 · Σ activation codes. A (row, token)
//! value is then, over the blocks in order, `acc = fma(isum, d·d_x, acc)`
//! (and for Q4_K `acc = fma(−msum, dmin·d_x, acc)`): the same in every tile,
//! in one-token steps and in plain Rust.
//!
//! Group block layouts (offsets in bytes):
//! - Q4_K (1,184 = 8 × 148: the 6-bit scales held as bytes, 4 more a row
//!   than the file's 12-byte encoding): `d` 0 (8 × f16), `dmin` 16, scales
//!   32 (sub-block j: 8 rows' bytes), minimums 96 (pair p of sub-blocks: 8
//!   rows × 2 bytes), codes 160: for chunk c (sub-blocks 2c and 2c + 1) and
//!   step k, 32 bytes, byte (4r + j) the file's byte 32c + 4k + j of row r
//!   (its low nibble sub-block 2c's value 4k + j, its high one 2c + 1's).
//! - Q6_K (1,680 = 8 × 210, as the file): `d` 0, scales 16 (sub-block j of
//!   16 values: 8 rows' i8), low nibbles 144: for chunk pair (g, g + 4) of 32
//!   values and step k, 32 bytes, byte (4r + j) holding value 4k + j of
//!   chunk g (low nibble) and of chunk g + 4 (high); high bits 1,168: for
//!   step k and half h, 32 bytes, byte (4r + j) holding in bits 2i, 2i + 1
//!   those of chunk 4h + i's value 4k + j.

use super::formats::{f16_at, q6k_values, scale_min_k4, QType};
use super::packed::GROUP;
use super::{Act256, PackIsa};

const K4_DMIN: usize = 16;
const K4_SC: usize = 32;
const K4_MIN: usize = 96;
const K4_Q: usize = 160;
const K4_BYTES: usize = 1184;
const K6_SC: usize = 16;
const K6_QL: usize = 144;
const K6_QH: usize = 1168;
const K6_BYTES: usize = 1680;

/// The K types that pack.
pub fn packable(ty: QType) -> bool {
    matches!(ty, QType::Q4_K | QType::Q6_K)
}

/// Bytes of one group block (8 rows × 256 values).
pub fn group_block_bytes(ty: QType) -> usize {
    if ty == QType::Q4_K {
        K4_BYTES
    } else {
        K6_BYTES
    }
}

/// Bytes of `rows` packed rows of `cols` values.
pub fn packed_bytes(ty: QType, rows: usize, cols: usize) -> usize {
    rows / GROUP * cols / 256 * group_block_bytes(ty)
}

/// The bytes of `rows` rows (a multiple of [`GROUP`]) of `cols` values, in
/// the file's layout, packed.
pub fn pack(ty: QType, rows: usize, cols: usize, src: &[u8]) -> Vec<u8> {
    assert!(
        packable(ty) && rows.is_multiple_of(GROUP),
        "pack {ty:?} × {rows}"
    );
    let (bs, nb) = (ty.block_bytes(), cols / 256);
    let rb = ty.row_bytes(cols);
    let mut out = vec![0u8; packed_bytes(ty, rows, cols)];
    for (gi, dst) in out.chunks_exact_mut(group_block_bytes(ty)).enumerate() {
        let (g, i) = (gi / nb, gi % nb);
        for r in 0..GROUP {
            let b = &src[(g * GROUP + r) * rb + i * bs..][..bs];
            if ty == QType::Q4_K {
                dst[2 * r..2 * r + 2].copy_from_slice(&b[0..2]);
                dst[K4_DMIN + 2 * r..K4_DMIN + 2 * r + 2].copy_from_slice(&b[2..4]);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &b[4..16]);
                    dst[K4_SC + 8 * j + r] = sc;
                    dst[K4_MIN + 16 * (j / 2) + 2 * r + j % 2] = m;
                }
                for c in 0..4 {
                    for k in 0..8 {
                        for j in 0..4 {
                            dst[K4_Q + (8 * c + k) * 32 + 4 * r + j] = b[16 + 32 * c + 4 * k + j];
                        }
                    }
                }
            } else {
                dst[2 * r..2 * r + 2].copy_from_slice(&b[208..210]);
                for j in 0..16 {
                    dst[K6_SC + 8 * j + r] = b[192 + j];
                }
                let mut codes = [0u8; 256];
                q6k_values(b, |v, q| codes[v] = (q + 32) as u8);
                for (v, c) in codes.iter().enumerate() {
                    let (g, k, j) = (v / 32, v % 32 / 4, v % 4);
                    dst[K6_QL + ((g % 4) * 8 + k) * 32 + 4 * r + j] |= (c & 0xf) << (4 * (g / 4));
                    dst[K6_QH + (2 * k + g / 4) * 32 + 4 * r + j] |= (c >> 4) << (2 * (g % 4));
                }
            }
        }
    }
    out
}

/// Row `lane`'s code of value `v` (0..256) in a packed group block, and the
/// index of its sub-block.
fn code(ty: QType, blk: &[u8], lane: usize, v: usize) -> (i32, usize) {
    if ty == QType::Q4_K {
        let (c, half, l) = (v / 64, v % 64 / 32, v % 32);
        let byte = blk[K4_Q + (8 * c + l / 4) * 32 + 4 * lane + l % 4];
        let q = if half == 0 { byte & 0xf } else { byte >> 4 };
        (q as i32, 2 * c + half)
    } else {
        let (g, k, j) = (v / 32, v % 32 / 4, v % 4);
        let nib = (blk[K6_QL + ((g % 4) * 8 + k) * 32 + 4 * lane + j] >> (4 * (g / 4))) & 0xf;
        let hi = (blk[K6_QH + (2 * k + g / 4) * 32 + 4 * lane + j] >> (2 * (g % 4))) & 3;
        ((nib | hi << 4) as i32, v / 16)
    }
}

/// Row `r` of a packed matrix to f32, as the file's layout dequantizes (the
/// same operations, so the same values).
pub fn dequantize_row(ty: QType, data: &[u8], cols: usize, r: usize, out: &mut [f32]) {
    let (gb, nb) = (group_block_bytes(ty), cols / 256);
    let (g, lane) = (r / GROUP, r % GROUP);
    for (i, y) in out.chunks_exact_mut(256).take(nb).enumerate() {
        let blk = &data[(g * nb + i) * gb..][..gb];
        let d = f16_at(blk, 2 * lane);
        for (v, y) in y.iter_mut().enumerate() {
            let (q, j) = code(ty, blk, lane, v);
            *y = if ty == QType::Q4_K {
                let dmin = f16_at(blk, K4_DMIN + 2 * lane);
                let sc = blk[K4_SC + 8 * j + lane];
                let m = blk[K4_MIN + 16 * (j / 2) + 2 * lane + j % 2];
                d * sc as f32 * q as f32 - dmin * m as f32
            } else {
                d * blk[K6_SC + 8 * j + lane] as i8 as f32 * (q - 32) as f32
            };
        }
    }
}

/// The 8 rows of a packed group (its bytes) against `N` rows of
/// activations: `[token][row]`, on `isa` (the same values bit for bit).
pub fn group<const N: usize>(
    isa: PackIsa,
    ty: QType,
    g: &[u8],
    xs: [&[Act256]; N],
) -> [[f32; 8]; N] {
    let gb = group_block_bytes(ty);
    let nb = g.len() / gb;
    assert!(xs.iter().all(|x| x.len() >= nb), "activations too short");
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: PackIsa::Vnni comes from Kernels::pack_isa only where the
        // CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI, PackIsa::Avx2
        // where it has AVX2, FMA and F16C; sizes checked above.
        PackIsa::Vnni => {
            return unsafe { vector::group_vnni(ty, g.as_ptr(), nb, xs.map(|x| x.as_ptr())) }
        }
        // SAFETY: as above.
        PackIsa::Avx2 => {
            return unsafe { vector::group_avx2(ty, g.as_ptr(), nb, xs.map(|x| x.as_ptr())) }
        }
        PackIsa::Portable => {}
    }
    let _ = isa;
    std::array::from_fn(|t| {
        std::array::from_fn(|lane| {
            let mut acc = 0f32;
            for (i, blk) in g.chunks_exact(gb).enumerate() {
                let x = &xs[t][i];
                let mut sub = [0i32; 16];
                for v in 0..256 {
                    let (q, j) = code(ty, blk, lane, v);
                    sub[j] += q * x.q[v] as i32;
                }
                let d = f16_at(blk, 2 * lane);
                if ty == QType::Q4_K {
                    let (mut isum, mut msum) = (0i32, 0i32);
                    for j in 0..8 {
                        isum += sub[j] * blk[K4_SC + 8 * j + lane] as i32;
                        let m = blk[K4_MIN + 16 * (j / 2) + 2 * lane + j % 2] as i32;
                        msum += m * x.bsum32[j] as i32;
                    }
                    let dmin = f16_at(blk, K4_DMIN + 2 * lane);
                    acc = (isum as f32).mul_add(d * x.d, acc);
                    acc = (-(msum as f32)).mul_add(dmin * x.d, acc);
                } else {
                    let isum: i32 = (0..16)
                        .map(|j| {
                            (sub[j] - 32 * x.bsums[j] as i32)
                                * blk[K6_SC + 8 * j + lane] as i8 as i32
                        })
                        .sum();
                    acc = (isum as f32).mul_add(d * x.d, acc);
                }
            }
            acc
        })
    })
}

#[cfg(target_arch = "x86_64")]
mod vector {
    use std::arch::x86_64::*;

    use super::*;

    use crate::llm::quant::packed::vector::{dot4, rows};

    /// # Safety
    /// The CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; `g` holds `nb`
    /// group blocks of `ty` and each `xs[t]` `nb` blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn group_vnni<const N: usize>(
        ty: QType,
        g: *const u8,
        nb: usize,
        xs: [*const Act256; N],
    ) -> [[f32; 8]; N] {
        group_in::<N, true>(ty, g, nb, xs)
    }

    /// [`group_vnni`] on AVX2 alone (every code is below 64, so `vpmaddubsw`
    /// pairs stay exact).
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; sizes as for [`group_vnni`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn group_avx2<const N: usize>(
        ty: QType,
        g: *const u8,
        nb: usize,
        xs: [*const Act256; N],
    ) -> [[f32; 8]; N] {
        group_in::<N, false>(ty, g, nb, xs)
    }

    #[inline(always)]
    unsafe fn group_in<const N: usize, const VNNI: bool>(
        ty: QType,
        g: *const u8,
        nb: usize,
        xs: [*const Act256; N],
    ) -> [[f32; 8]; N] {
        rows(if ty == QType::Q4_K {
            q4k::<N, VNNI>(g, nb, xs)
        } else {
            q6k::<N, VNNI>(g, nb, xs)
        })
    }

    #[inline(always)]
    unsafe fn bcast(p: *const i8) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }

    /// 8 bytes at `p` as 8 i32 lanes, zero- or sign-extended.
    #[inline(always)]
    unsafe fn bytes_u(p: *const u8) -> __m256i {
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
    }

    #[inline(always)]
    unsafe fn bytes_i(p: *const u8) -> __m256i {
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
    }

    #[inline(always)]
    unsafe fn f16x8(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[inline(always)]
    unsafe fn q4k<const N: usize, const VNNI: bool>(
        g: *const u8,
        nb: usize,
        xs: [*const Act256; N],
    ) -> [__m256; N] {
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let b = g.add(i * K4_BYTES);
            let x: [&Act256; N] = std::array::from_fn(|t| &*xs[t].add(i));
            let mut isum = [_mm256_setzero_si256(); N];
            for c in 0..4 {
                let mut sa = [_mm256_setzero_si256(); N];
                let mut sb = [_mm256_setzero_si256(); N];
                for k in 0..8 {
                    let v = _mm256_loadu_si256(b.add(K4_Q + (8 * c + k) * 32) as *const __m256i);
                    let lo = _mm256_and_si256(v, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    for t in 0..N {
                        let q = x[t].q.as_ptr().add(64 * c + 4 * k);
                        sa[t] = dot4::<VNNI>(sa[t], lo, bcast(q));
                        sb[t] = dot4::<VNNI>(sb[t], hi, bcast(q.add(32)));
                    }
                }
                let sca = bytes_u(b.add(K4_SC + 16 * c));
                let scb = bytes_u(b.add(K4_SC + 16 * c + 8));
                for t in 0..N {
                    let s = _mm256_add_epi32(
                        _mm256_mullo_epi32(sa[t], sca),
                        _mm256_mullo_epi32(sb[t], scb),
                    );
                    isum[t] = _mm256_add_epi32(isum[t], s);
                }
            }
            let mut msum = [_mm256_setzero_si256(); N];
            for p in 0..4 {
                let m =
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(b.add(K4_MIN + 16 * p) as *const __m128i));
                for t in 0..N {
                    let s = x[t].bsum32.as_ptr().add(2 * p) as *const i32;
                    let bs = _mm256_set1_epi32(s.read_unaligned());
                    msum[t] = if VNNI {
                        _mm256_dpwssd_epi32(msum[t], m, bs)
                    } else {
                        _mm256_add_epi32(msum[t], _mm256_madd_epi16(m, bs))
                    };
                }
            }
            let (d, dmin) = (f16x8(b), f16x8(b.add(K4_DMIN)));
            for t in 0..N {
                let dx = _mm256_set1_ps(x[t].d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dx), acc[t]);
                acc[t] =
                    _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum[t]), _mm256_mul_ps(dmin, dx), acc[t]);
            }
        }
        acc
    }

    #[inline(always)]
    unsafe fn q6k<const N: usize, const VNNI: bool>(
        g: *const u8,
        nb: usize,
        xs: [*const Act256; N],
    ) -> [__m256; N] {
        let (low, two) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(0x30));
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let b = g.add(i * K6_BYTES);
            let x: [&Act256; N] = std::array::from_fn(|t| &*xs[t].add(i));
            let mut isum = [_mm256_setzero_si256(); N];
            for c in 0..8 {
                let mut sa: [__m256i; N] =
                    std::array::from_fn(|t| _mm256_set1_epi32(-32 * x[t].bsums[2 * c] as i32));
                let mut sb: [__m256i; N] =
                    std::array::from_fn(|t| _mm256_set1_epi32(-32 * x[t].bsums[2 * c + 1] as i32));
                for k in 0..8 {
                    let v =
                        _mm256_loadu_si256(b.add(K6_QL + ((c % 4) * 8 + k) * 32) as *const __m256i);
                    let v = if c < 4 { v } else { _mm256_srli_epi16(v, 4) };
                    let h =
                        _mm256_loadu_si256(b.add(K6_QH + (2 * k + c / 4) * 32) as *const __m256i);
                    // bits 2i, 2i + 1 to bits 4, 5 (what crosses from the
                    // neighbouring byte in a 16-bit shift falls outside them)
                    let sh = 2 * (c % 4) as i32;
                    let h = if sh <= 4 {
                        _mm256_sll_epi16(h, _mm_cvtsi32_si128(4 - sh))
                    } else {
                        _mm256_srl_epi16(h, _mm_cvtsi32_si128(sh - 4))
                    };
                    let u = _mm256_or_si256(_mm256_and_si256(v, low), _mm256_and_si256(h, two));
                    for t in 0..N {
                        let q = bcast(x[t].q.as_ptr().add(32 * c + 4 * k));
                        if k < 4 {
                            sa[t] = dot4::<VNNI>(sa[t], u, q);
                        } else {
                            sb[t] = dot4::<VNNI>(sb[t], u, q);
                        }
                    }
                }
                let sca = bytes_i(b.add(K6_SC + 16 * c));
                let scb = bytes_i(b.add(K6_SC + 16 * c + 8));
                for t in 0..N {
                    let s = _mm256_add_epi32(
                        _mm256_mullo_epi32(sa[t], sca),
                        _mm256_mullo_epi32(sb[t], scb),
                    );
                    isum[t] = _mm256_add_epi32(isum[t], s);
                }
            }
            let d = f16x8(b);
            for t in 0..N {
                let dx = _mm256_set1_ps(x[t].d);
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), _mm256_mul_ps(d, dx), acc[t]);
            }
        }
        acc
    }
}
