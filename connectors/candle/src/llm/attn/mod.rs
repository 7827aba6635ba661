//! Attention's arithmetic on the CPU: the dot products of queries with keys
//! and the weighted sums of values, in tiles, with one definition of each
//! value so the one-token step, the fused prompt and the generic path's
//! one-row attention agree bit for bit.
//!
//! A dot product is 8 partial sums (lane l takes elements l, l + 8, …, by
//! fused multiply-adds), added in a fixed tree (4, 2, 1 apart), plus the
//! elements past the last whole 8. A weighted sum over keys takes each key
//! in order, `o = fma(w, v, o)` element by element. Tiles compute several
//! of them at once (a key row loaded once for several queries; an output
//! chunk kept in registers across keys), each with the same operations in
//! the same order as alone.
//!
//! Keys and values are read as the cache holds them ([`Kv`]): f32, f16
//! widened exactly to f32 as they are loaded (F16C's `vcvtph2ps`, or
//! `half` in plain Rust: the same values), or Q8_0 blocks widened (exactly)
//! into a buffer first.

use half::f16;

use crate::llm::quant::Kernels;

/// Keys or values as the cache stores them.
#[derive(Clone, Copy)]
pub(super) enum Kv<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// Q8_0 blocks of 32 values (34 bytes each), widened to f32 (exactly)
    /// before the tiles read them.
    Q8(&'a [u8]),
}

impl<'a> Kv<'a> {
    /// The cache tensor's CPU storage from element `offset` on.
    pub(super) fn of(s: &'a candle_core::CpuStorage, offset: usize) -> candle_core::Result<Self> {
        Ok(match s {
            candle_core::CpuStorage::F16(v) => Kv::F16(&v[offset..]),
            candle_core::CpuStorage::U8(v) => Kv::Q8(&v[offset..]),
            _ => Kv::F32(&s.as_slice::<f32>()?[offset..]),
        })
    }

    /// The cache type it is.
    pub(super) fn kind(&self) -> super::kv::KvCacheType {
        use super::kv::KvCacheType;
        match self {
            Kv::F32(_) => KvCacheType::F32,
            Kv::F16(_) => KvCacheType::F16,
            Kv::Q8(_) => KvCacheType::Q8_0,
        }
    }

    /// Values `r` (whole blocks of 32 for Q8_0: row boundaries are).
    pub(super) fn slice(self, r: std::ops::Range<usize>) -> Self {
        match self {
            Kv::F32(v) => Kv::F32(&v[r]),
            Kv::F16(v) => Kv::F16(&v[r]),
            Kv::Q8(v) => Kv::Q8(&v[r.start / 32 * 34..r.end / 32 * 34]),
        }
    }

    /// Whether it holds Q8_0 blocks.
    pub(super) fn is_q8(&self) -> bool {
        matches!(self, Kv::Q8(_))
    }

    /// Q8_0 values widened to f32 in `buf`, which the tiles then read.
    pub(super) fn widened<'b>(self, buf: &'b mut Vec<f32>) -> Kv<'b>
    where
        'a: 'b,
    {
        match self {
            Kv::Q8(b) => {
                super::kv::dequantize_q8(b, buf);
                Kv::F32(buf)
            }
            other => other,
        }
    }
}

/// One key/value head's keys and values as the tiles read them: a Q8_0
/// cache's rows widened (exactly) once for all the query heads sharing them.
#[derive(Default)]
pub(super) struct HeadRows {
    held: Option<usize>,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl HeadRows {
    /// The rows `kr`, `vr` of key/value head `kvh`: as they are, or widened.
    pub(super) fn get<'s, 'a: 's>(
        &'s mut self,
        kr: Kv<'a>,
        vr: Kv<'a>,
        kvh: usize,
    ) -> (Kv<'s>, Kv<'s>) {
        if !kr.is_q8() {
            return (kr, vr);
        }
        if self.held != Some(kvh) {
            kr.widened(&mut self.k);
            vr.widened(&mut self.v);
            self.held = Some(kvh);
        }
        (Kv::F32(&self.k), Kv::F32(&self.v))
    }
}

/// An element type keys and values may be held in.
pub(super) trait Elem: Copy + Sync {
    /// Its value as f32 (exact).
    fn f32(self) -> f32;
    /// 8 of them at `p`, as f32.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; 8 elements are readable at `p`.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Elem for f32 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }
}

impl Elem for f16 {
    #[inline(always)]
    fn f32(self) -> f32 {
        self.to_f32()
    }
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Whether the vector tiles run (AVX2, FMA, F16C): the kernels chosen
/// ([`Kernels::detect`]) are not the portable ones.
#[inline(always)]
fn simd() -> bool {
    Kernels::detect() != Kernels::Portable
}

/// Whether AVX-512's 32 registers are there for the bigger tiles and the
/// kernels chosen use them (`MAGPIE_LLM_KERNELS=avx2` keeps AVX2's tiles, as
/// on a CPU without AVX-512).
#[inline(always)]
fn wide() -> bool {
    Kernels::detect() == Kernels::Avx512
}

/// The tree that adds 8 partial sums.
#[inline(always)]
fn reduce(mut a: [f32; 8]) -> f32 {
    for w in [4, 2, 1] {
        for i in 0..w {
            a[i] += a[i + w];
        }
    }
    a[0]
}

/// `Q × K` dot products of query rows `q` with key rows `k` (all `n` long).
#[inline(always)]
fn tile<T: Elem, const Q: usize, const K: usize>(
    q: [&[f32]; Q],
    k: [&[T]; K],
    n: usize,
) -> [[f32; K]; Q] {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the CPU has AVX2, FMA and F16C (simd(): Kernels::detect checked them).
        return unsafe { vector::tile(q, k, n) };
    }
    tile_portable(q, k, n)
}

/// [`tile`] in plain Rust: the same operations lane by lane.
#[inline(always)]
fn tile_portable<T: Elem, const Q: usize, const K: usize>(
    q: [&[f32]; Q],
    k: [&[T]; K],
    n: usize,
) -> [[f32; K]; Q] {
    let mut acc = [[[0f32; 8]; K]; Q];
    let whole = n / 8 * 8;
    for c in (0..whole).step_by(8) {
        for i in 0..Q {
            for j in 0..K {
                for l in 0..8 {
                    acc[i][j][l] = q[i][c + l].mul_add(k[j][c + l].f32(), acc[i][j][l]);
                }
            }
        }
    }
    std::array::from_fn(|i| std::array::from_fn(|j| reduce(acc[i][j]) + tail(q[i], k[j], whole, n)))
}

/// The elements past the last whole 8, in order.
#[inline(always)]
fn tail<T: Elem>(a: &[f32], b: &[T], from: usize, n: usize) -> f32 {
    let mut s = 0f32;
    for e in from..n {
        s = a[e].mul_add(b[e].f32(), s);
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod vector;

/// `a · b`, as every tile computes it (the reference the tests hold the
/// tiles to).
#[cfg(test)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    tile::<f32, 1, 1>([a], [b], n)[0][0]
}

/// `out[j] = scale · (q · key j)` for `out.len()` keys, key j at
/// `keys[j * n..]`: eight keys a tile.
pub(super) fn scores(q: &[f32], keys: Kv<'_>, n: usize, scale: f32, out: &mut [f32]) {
    let mut buf = Vec::new();
    match keys.widened(&mut buf) {
        Kv::F32(k) => scores_in(q, k, n, scale, out),
        Kv::F16(k) => scores_in(q, k, n, scale, out),
        Kv::Q8(_) => unreachable!("widened"),
    }
}

fn scores_in<T: Elem>(q: &[f32], keys: &[T], n: usize, scale: f32, out: &mut [f32]) {
    let m = out.len();
    let mut j = 0;
    while j + 8 <= m {
        let k: [&[T]; 8] = std::array::from_fn(|t| &keys[(j + t) * n..(j + t + 1) * n]);
        let v = tile::<T, 1, 8>([q], k, n)[0];
        for (o, v) in out[j..j + 8].iter_mut().zip(v) {
            *o = v * scale;
        }
        j += 8;
    }
    for (t, o) in out.iter_mut().enumerate().skip(j) {
        *o = tile::<T, 1, 1>([q], [&keys[t * n..(t + 1) * n]], n)[0][0] * scale;
    }
}

/// `scores[r][j] = scale · (row r · key j)` for query rows `rows` against
/// the keys `keys[j * n..]` (`span` of them), the scores of row r at
/// `out[r * span..]`: tiles of 4 rows × 4 keys (a short tile repeats its
/// last row or key and drops the copy), built with AVX-512's 32 registers
/// where the CPU has them (the same operations, so the same values).
pub(super) fn score_block(
    rows: &[&[f32]],
    keys: Kv<'_>,
    n: usize,
    span: usize,
    scale: f32,
    out: &mut [f32],
) {
    let mut buf = Vec::new();
    let keys = keys.widened(&mut buf);
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512 F and VL (wide(): Kernels::detect checked them).
        return unsafe {
            match keys {
                Kv::F32(k) => score_block_512(rows, k, n, span, scale, out),
                Kv::F16(k) => score_block_512(rows, k, n, span, scale, out),
                Kv::Q8(_) => unreachable!("widened"),
            }
        };
    }
    match keys {
        Kv::F32(k) => score_block_in(rows, k, n, span, scale, out),
        Kv::F16(k) => score_block_in(rows, k, n, span, scale, out),
        Kv::Q8(_) => unreachable!("widened"),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn score_block_512<T: Elem>(
    rows: &[&[f32]],
    keys: &[T],
    n: usize,
    span: usize,
    scale: f32,
    out: &mut [f32],
) {
    score_block_in(rows, keys, n, span, scale, out)
}

#[inline(always)]
fn score_block_in<T: Elem>(
    rows: &[&[f32]],
    keys: &[T],
    n: usize,
    span: usize,
    scale: f32,
    out: &mut [f32],
) {
    let nr = rows.len();
    for r0 in (0..nr).step_by(4) {
        let q: [&[f32]; 4] = std::array::from_fn(|i| rows[(r0 + i).min(nr - 1)]);
        for j0 in (0..span).step_by(4) {
            let k: [&[T]; 4] = std::array::from_fn(|t| {
                let j = (j0 + t).min(span - 1);
                &keys[j * n..(j + 1) * n]
            });
            let v = tile::<T, 4, 4>(q, k, n);
            for (i, v) in v.iter().enumerate().take((nr - r0).min(4)) {
                for (t, v) in v.iter().enumerate().take((span - j0).min(4)) {
                    out[(r0 + i) * span + j0 + t] = v * scale;
                }
            }
        }
    }
}

/// `y += w · x`, element by element in fused multiply-adds.
pub(super) fn axpy(y: &mut [f32], w: f32, x: Kv<'_>) {
    let mut buf = Vec::new();
    match x.widened(&mut buf) {
        Kv::F32(x) => axpy_in(y, w, x),
        Kv::F16(x) => axpy_in(y, w, x),
        Kv::Q8(_) => unreachable!("widened"),
    }
}

#[inline(always)]
fn axpy_in<T: Elem>(y: &mut [f32], w: f32, x: &[T]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: the CPU has AVX2, FMA and F16C (simd(): Kernels::detect checked them).
        return unsafe { vector::axpy(y, w, x) };
    }
    for (o, v) in y.iter_mut().zip(x) {
        *o = w.mul_add(v.f32(), *o);
    }
}

/// `outs[r] += Σ_j weights[r * span + j] · value j` over the `span` values
/// `vals[j * n..]`, keys in order: as [`axpy`] key after key, with each
/// 16-value chunk of 4 output rows held in registers across the keys. A zero
/// weight adds nothing (the output starts at +0 and `fma(0, v, o) = o`).
pub(super) fn weighted_block(
    outs: &mut [&mut [f32]],
    weights: &[f32],
    vals: Kv<'_>,
    n: usize,
    span: usize,
) {
    let mut buf = Vec::new();
    let vals = vals.widened(&mut buf);
    #[cfg(target_arch = "x86_64")]
    if wide() {
        // SAFETY: the CPU has AVX-512 F and VL (wide(): Kernels::detect checked them).
        return unsafe {
            match vals {
                Kv::F32(v) => weighted_block_512(outs, weights, v, n, span),
                Kv::F16(v) => weighted_block_512(outs, weights, v, n, span),
                Kv::Q8(_) => unreachable!("widened"),
            }
        };
    }
    match vals {
        Kv::F32(v) => weighted_block_in(outs, weights, v, n, span),
        Kv::F16(v) => weighted_block_in(outs, weights, v, n, span),
        Kv::Q8(_) => unreachable!("widened"),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
unsafe fn weighted_block_512<T: Elem>(
    outs: &mut [&mut [f32]],
    weights: &[f32],
    vals: &[T],
    n: usize,
    span: usize,
) {
    weighted_block_in(outs, weights, vals, n, span)
}

#[inline(always)]
fn weighted_block_in<T: Elem>(
    outs: &mut [&mut [f32]],
    weights: &[f32],
    vals: &[T],
    n: usize,
    span: usize,
) {
    const R: usize = 4;
    const C: usize = 16;
    let nr = outs.len();
    let whole = n / C * C;
    let vector = simd();
    for r0 in (0..nr).step_by(R) {
        let rr = (nr - r0).min(R);
        let w: [&[f32]; R] = std::array::from_fn(|i| {
            let r = r0 + i.min(rr - 1);
            &weights[r * span..(r + 1) * span]
        });
        for c in (0..whole).step_by(C) {
            #[cfg(target_arch = "x86_64")]
            if vector && rr == R {
                let o: [*mut f32; R] = std::array::from_fn(|i| outs[r0 + i].as_mut_ptr());
                // SAFETY: the CPU has AVX2, FMA and F16C; the 4 rows are
                // distinct and n long, the chunk inside them.
                unsafe { vector::weighted_chunk(o, w, vals, n, span, c) };
                continue;
            }
            let _ = vector;
            let mut acc = [[0f32; C]; R];
            for (i, a) in acc.iter_mut().enumerate().take(rr) {
                a.copy_from_slice(&outs[r0 + i][c..c + C]);
            }
            for j in 0..span {
                let v = &vals[j * n + c..j * n + c + C];
                for (i, a) in acc.iter_mut().enumerate() {
                    for l in 0..C {
                        a[l] = w[i][j].mul_add(v[l].f32(), a[l]);
                    }
                }
            }
            for (i, a) in acc.iter().enumerate().take(rr) {
                outs[r0 + i][c..c + C].copy_from_slice(a);
            }
        }
        for i in 0..rr {
            for j in 0..span {
                let o = &mut outs[r0 + i][whole..n];
                axpy_in(o, w[i][j], &vals[j * n + whole..j * n + n]);
            }
        }
    }
}

#[cfg(test)]
mod tests;
