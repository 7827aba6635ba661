//! Weight rows packed eight at a time, for the vector kernels (AVX-512 VNNI,
//! or AVX2).
//!
//! In a file's layout each row is its own run of blocks, so a vector
//! instruction sees 32 values of one row and the 8 lanes of its sum must be
//! added up at the end of every dot product. Packed, the same bytes are laid
//! out by group of 8 rows and block: the 8 rows' scales, then their codes 4
//! bytes at a time, interleaved, so that one `vpdpbusd` multiplies 4 values
//! of each of the 8 rows by the same 4 activation codes (broadcast) and each
//! lane sums one row. Eight of them make a block's 8 integer dot products,
//! which one conversion, one multiply and one FMA scale into 8 accumulators:
//! ~12 instructions for 256 multiply-adds, against ~56 in the file's layout.
//!
//! Without VNNI each `vpdpbusd` is `vpmaddubsw` + `vpmaddwd` + `vpaddd` (the
//! same integers; Q8_0 multiplies the codes' magnitudes by the activations
//! with their signs there, as its offset codes would pass `vpmaddubsw`'s i16
//! pairs), and a tile holds half the tokens in AVX2's 16 registers.
//!
//! The codes are kept unsigned (`vpdpbusd` multiplies unsigned weights by
//! signed activations): code + 8 (Q4_0), + 16 (Q5_0), + 128 (Q8_0), and the
//! accumulator starts at −offset · Σ activation codes, so every block's
//! integer sum is exact, the signed sum. A (row, token) value is, over the
//! blocks in order, `acc = fma(isum as f32, d_w · d_x, acc)`, whatever the
//! tile: the prompt, one token, AVX2 and the plain-Rust path
//! ([`group`] on any [`PackIsa`]) give the same values bit for bit. Nothing is widened: a packed
//! matrix holds the file's bytes, as many, moved.
//!
//! Group block layout (8 × the type's block bytes):
//! - 16 bytes: the 8 rows' f16 scales;
//! - Q8_0: 8 steps of 32 bytes, step k = rows 0..8 × codes 4k..4k+4 (+128);
//! - Q4_0 and Q5_0: 4 × 32 bytes of nibbles, byte (4r + j) of the m-th
//!   holding row r's value 4m + j (low nibble) and 4m + 16 + j (high): the
//!   file's own pairing, so step k < 4 is the low nibbles of the k-th, step
//!   k ≥ 4 the high nibbles of the (k − 4)-th;
//! - Q5_0: then 32 bytes of fifth bits, byte (4r + j) holding in bit k that of
//!   row r's value 4k + j.

use super::formats::QType;
use super::{Act32, PackIsa};

/// Rows per group.
pub const GROUP: usize = 8;

/// The types that pack.
pub fn packable(ty: QType) -> bool {
    matches!(ty, QType::Q4_0 | QType::Q5_0 | QType::Q8_0)
}

/// What is added to a code to make it unsigned.
fn offset(ty: QType) -> i32 {
    match ty {
        QType::Q4_0 => 8,
        QType::Q5_0 => 16,
        _ => 128,
    }
}

/// The bytes of `rows` rows (a multiple of [`GROUP`]) of `cols` values, in
/// the file's layout, packed.
pub fn pack(ty: QType, rows: usize, cols: usize, src: &[u8]) -> Vec<u8> {
    assert!(
        packable(ty) && rows.is_multiple_of(GROUP),
        "pack {ty:?} × {rows}"
    );
    let (bs, nb) = (ty.block_bytes(), cols / 32);
    let rb = ty.row_bytes(cols);
    let mut out = vec![0u8; rows * rb];
    for (gi, dst) in out.chunks_exact_mut(GROUP * bs).enumerate() {
        let (g, i) = (gi / nb, gi % nb);
        for r in 0..GROUP {
            let b = &src[(g * GROUP + r) * rb + i * bs..][..bs];
            dst[2 * r..2 * r + 2].copy_from_slice(&b[..2]);
            let codes = match ty {
                QType::Q5_0 => 6,
                _ => 2,
            };
            let steps = if ty == QType::Q8_0 { 8 } else { 4 };
            for k in 0..steps {
                for j in 0..4 {
                    let v = b[codes + 4 * k + j];
                    dst[16 + 32 * k + 4 * r + j] = if ty == QType::Q8_0 { v ^ 0x80 } else { v };
                }
            }
            if ty == QType::Q5_0 {
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..4 {
                    dst[144 + 4 * r + j] =
                        (0..8).map(|k| (((qh >> (4 * k + j)) & 1) as u8) << k).sum();
                }
            }
        }
    }
    out
}

/// Row `r` of a packed matrix back in the file's layout.
pub fn unpack_row(ty: QType, data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (bs, nb) = (ty.block_bytes(), cols / 32);
    let (g, lane) = (r / GROUP, r % GROUP);
    for (i, b) in out.chunks_exact_mut(bs).take(nb).enumerate() {
        let src = &data[(g * nb + i) * GROUP * bs..][..GROUP * bs];
        b[..2].copy_from_slice(&src[2 * lane..2 * lane + 2]);
        let codes = if ty == QType::Q5_0 { 6 } else { 2 };
        let steps = if ty == QType::Q8_0 { 8 } else { 4 };
        for k in 0..steps {
            for j in 0..4 {
                let v = src[16 + 32 * k + 4 * lane + j];
                b[codes + 4 * k + j] = if ty == QType::Q8_0 { v ^ 0x80 } else { v };
            }
        }
        if ty == QType::Q5_0 {
            let mut qh = 0u32;
            for j in 0..4 {
                let h = src[144 + 4 * lane + j];
                for k in 0..8 {
                    qh |= (((h >> k) & 1) as u32) << (4 * k + j);
                }
            }
            b[2..6].copy_from_slice(&qh.to_le_bytes());
        }
    }
}

/// The signed code of row `lane`'s value `v` in a packed group block.
fn code(ty: QType, blk: &[u8], lane: usize, v: usize) -> i32 {
    let (k, j) = (v / 4, v % 4);
    match ty {
        QType::Q8_0 => (blk[16 + 32 * k + 4 * lane + j] ^ 0x80) as i8 as i32,
        _ => {
            let byte = blk[16 + 32 * (k % 4) + 4 * lane + j];
            let nib = if k < 4 { byte & 0xf } else { byte >> 4 } as i32;
            let high = if ty == QType::Q5_0 {
                (((blk[144 + 4 * lane + j] >> k) & 1) as i32) << 4
            } else {
                0
            };
            (nib | high) - offset(ty)
        }
    }
}

/// The 8 rows of group `g` (its bytes, `blocks` blocks) against `N` rows of
/// activations: `[token][row]`, on `isa` (the same values bit for bit).
pub fn group<const N: usize>(
    isa: PackIsa,
    ty: QType,
    g: &[u8],
    xs: [&[Act32]; N],
) -> [[f32; 8]; N] {
    let nb = g.len() / (GROUP * ty.block_bytes());
    assert!(xs.iter().all(|x| x.len() >= nb), "activations too short");
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: PackIsa::Vnni comes from Kernels::pack_isa only where the
        // CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI, PackIsa::Avx2
        // where it has AVX2, FMA and F16C; the sizes were checked above.
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
    let gb = GROUP * ty.block_bytes();
    std::array::from_fn(|t| {
        std::array::from_fn(|lane| {
            let mut acc = 0f32;
            for (i, blk) in g.chunks_exact(gb).enumerate() {
                let x = &xs[t][i];
                let isum: i32 = (0..32)
                    .map(|v| code(ty, blk, lane, v) * x.q[v] as i32)
                    .sum();
                let d = half::f16::from_le_bytes([blk[2 * lane], blk[2 * lane + 1]]).to_f32();
                acc = (isum as f32).mul_add(d * x.d, acc);
            }
            acc
        })
    })
}

#[cfg(target_arch = "x86_64")]
pub(super) mod vector {
    use std::arch::x86_64::*;

    use super::{QType, GROUP};
    use crate::llm::quant::Act32;

    const Q4: u8 = 0;
    const Q5: u8 = 1;
    const Q8: u8 = 2;

    /// # Safety
    /// The CPU has AVX2, FMA, F16C and AVX-512 F/BW/VL/VNNI; `g` holds `nb`
    /// group blocks of `ty` and each `xs[t]` `nb` blocks.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn group_vnni<const N: usize>(
        ty: QType,
        g: *const u8,
        nb: usize,
        xs: [*const Act32; N],
    ) -> [[f32; 8]; N] {
        group_in::<N, true>(ty, g, nb, xs)
    }

    /// [`group_vnni`] on AVX2 alone.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; sizes as for [`group_vnni`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn group_avx2<const N: usize>(
        ty: QType,
        g: *const u8,
        nb: usize,
        xs: [*const Act32; N],
    ) -> [[f32; 8]; N] {
        group_in::<N, false>(ty, g, nb, xs)
    }

    #[inline(always)]
    unsafe fn group_in<const N: usize, const VNNI: bool>(
        ty: QType,
        g: *const u8,
        nb: usize,
        xs: [*const Act32; N],
    ) -> [[f32; 8]; N] {
        rows(match ty {
            QType::Q4_0 => group_t::<Q4, N, VNNI>(g, nb, xs),
            QType::Q5_0 => group_t::<Q5, N, VNNI>(g, nb, xs),
            _ => group_t::<Q8, N, VNNI>(g, nb, xs),
        })
    }

    /// A tile's accumulators (8 rows each) as arrays.
    #[inline(always)]
    pub(in crate::llm::quant) unsafe fn rows<const N: usize>(acc: [__m256; N]) -> [[f32; 8]; N] {
        acc.map(|a| {
            let mut o = [0f32; 8];
            _mm256_storeu_ps(o.as_mut_ptr(), a);
            o
        })
    }

    /// `s` plus, in each 32-bit lane, the dot product of its 4 unsigned
    /// bytes of `u` with the 4 signed bytes of `x`: `vpdpbusd`, or on AVX2
    /// `vpmaddubsw` + `vpmaddwd` (exact while no byte pair passes the i16
    /// limit: codes up to 63 against |x| ≤ 127).
    #[inline(always)]
    pub(in crate::llm::quant) unsafe fn dot4<const VNNI: bool>(
        s: __m256i,
        u: __m256i,
        x: __m256i,
    ) -> __m256i {
        if VNNI {
            _mm256_dpbusd_epi32(s, u, x)
        } else {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
            _mm256_add_epi32(s, p)
        }
    }

    /// Step `k`'s codes (unsigned) of a group block at `b`: 8 rows × 4.
    #[inline(always)]
    unsafe fn codes<const T: u8>(b: *const u8, k: usize) -> __m256i {
        if T == Q8 {
            return _mm256_loadu_si256(b.add(16 + 32 * k) as *const __m256i);
        }
        let v = _mm256_loadu_si256(b.add(16 + 32 * (k % 4)) as *const __m256i);
        let v = if k < 4 { v } else { _mm256_srli_epi16(v, 4) };
        let nib = _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
        if T == Q4 {
            return nib;
        }
        let h = _mm256_loadu_si256(b.add(144) as *const __m256i);
        // bit k of each byte to bit 4 (16-bit shifts: what crosses from the
        // neighbouring byte lands outside bit 4)
        let h = if k <= 4 {
            _mm256_sll_epi16(h, _mm_cvtsi32_si128(4 - k as i32))
        } else {
            _mm256_srl_epi16(h, _mm_cvtsi32_si128(k as i32 - 4))
        };
        _mm256_or_si256(nib, _mm256_and_si256(h, _mm256_set1_epi8(0x10)))
    }

    #[inline(always)]
    unsafe fn group_t<const T: u8, const N: usize, const VNNI: bool>(
        g: *const u8,
        nb: usize,
        xs: [*const Act32; N],
    ) -> [__m256; N] {
        let (bs, off) = match T {
            Q4 => (18, 8),
            Q5 => (22, 16),
            _ => (34, 128),
        };
        // Q8_0's codes + 128 reach 255, past vpmaddubsw's i16 pairs: on AVX2
        // they are taken back to signed, their magnitudes multiplied by the
        // activations with their signs (pairs ≤ 2 × 128 × 127), no offset
        let signed = T == Q8 && !VNNI;
        let gb = GROUP * bs;
        let mut acc = [_mm256_setzero_ps(); N];
        for i in 0..nb {
            let b = g.add(i * gb);
            let x: [&Act32; N] = std::array::from_fn(|t| &*xs[t].add(i));
            let mut s: [__m256i; N] = std::array::from_fn(|t| {
                _mm256_set1_epi32(if signed { 0 } else { -off * x[t].sum })
            });
            for k in 0..8 {
                let u = codes::<T>(b, k);
                let (u, q) = if signed {
                    let q = _mm256_xor_si256(u, _mm256_set1_epi8(0x80u8 as i8));
                    (_mm256_sign_epi8(q, q), q)
                } else {
                    (u, u)
                };
                for t in 0..N {
                    let xq = (x[t].q.as_ptr().add(4 * k) as *const i32).read_unaligned();
                    let xq = _mm256_set1_epi32(xq);
                    let xq = if signed { _mm256_sign_epi8(xq, q) } else { xq };
                    s[t] = dot4::<VNNI>(s[t], u, xq);
                }
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(b as *const __m128i));
            for t in 0..N {
                let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x[t].d));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), scale, acc[t]);
            }
        }
        acc
    }
}
