//! Q8_0 matrix-vector and matrix-matrix products for the CPU.
//!
//! Profiling Gemma 3 270M decode (BENCHMARKS.md) put 47% of the time in
//! candle's Q8_0 dot product, which walks one weight row at a time with a
//! single accumulator (latency-bound on the FMA chain), and another 14% in
//! threads waiting at its barrier. Most of that is the tied 262,144 × 640
//! output layer. Here four weight rows share each activation block (four
//! independent accumulators), every prompt token reuses the four rows while
//! they sit in L1, and the work runs on candle's own thread pool so no second
//! pool competes for the cores. Numerics follow ggml: activations are
//! quantized per 32 values to int8 with an f16 scale.

use candle_core::quantized::{GgmlDType, QTensor};

use super::quant::{quantize32, Act32, Kernels};
use candle_core::{Device, Result, Tensor};
use half::f16;

const QK: usize = 32;
const BLOCK: usize = 34; // f16 scale + 32 int8

/// A Q8_0 weight matrix `[rows, cols]` in ggml's block layout. Several rows
/// (prompt processing) go through the tiled kernel here; a single row
/// (decoding) through [`super::quant::QMatrix`]'s, over the same bytes.
pub struct Q8Matrix {
    tensor: std::sync::Arc<QTensor>,
    gemv: std::sync::Arc<super::quant::QMatrix>,
    rows: usize,
    cols: usize,
}

struct OutPtr(*mut f32);
// SAFETY: each worker writes a disjoint set of output indices.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl Q8Matrix {
    /// Take a Q8_0 tensor on the CPU; anything else is handed back.
    pub fn from_qtensor(t: QTensor) -> std::result::Result<Self, QTensor> {
        let ok = t.dtype() == GgmlDType::Q8_0 && t.device().is_cpu();
        let Ok((rows, cols)) = t.shape().dims2() else {
            return Err(t);
        };
        if !ok || cols % QK != 0 || t.storage_size_in_bytes() != rows * (cols / QK) * BLOCK {
            return Err(t);
        }
        let tensor = std::sync::Arc::new(t);
        let gemv = match super::quant::QMatrix::from_qtensor(tensor.clone()) {
            Ok(g) => std::sync::Arc::new(g),
            Err(t) => {
                drop(t);
                return Err(std::sync::Arc::into_inner(tensor).expect("one owner"));
            }
        };
        Ok(Self {
            tensor,
            gemv,
            rows,
            cols,
        })
    }

    /// The same bytes as magpie's general quantized matrix (its GEMV).
    pub fn gemv(&self) -> &std::sync::Arc<super::quant::QMatrix> {
        &self.gemv
    }

    fn bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        // borrowed for CPU storage (checked in from_qtensor)
        self.tensor.data().unwrap_or_default()
    }

    fn row<'a>(&self, data: &'a [u8], r: usize) -> &'a [u8] {
        let stride = self.cols / QK * BLOCK;
        &data[r * stride..(r + 1) * stride]
    }

    /// Rows `ids` dequantized: `[ids.len(), cols]`.
    pub fn embedding(&self, ids: &[u32]) -> Result<Tensor> {
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            if id as usize >= self.rows {
                candle_core::bail!("token id {id} is outside the embedding table");
            }
            self.gemv.dequantize(id as usize, row);
        }
        Tensor::from_vec(out, (ids.len(), self.cols), &Device::Cpu)
    }

    /// `x · Wᵀ` for `x` of shape `[..., cols]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let cols = *dims.last().unwrap_or(&0);
        if cols != self.cols {
            candle_core::bail!("q8 matmul: input width {cols}, weights {}", self.cols);
        }
        let m = x.elem_count() / cols;
        if m <= 1 {
            return self.gemv.forward(x);
        }
        let data = self.bytes();
        let data = &data[..];
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let acts: Vec<Vec<Act32>> = xs
            .chunks_exact(cols)
            .map(|row| {
                let mut a = Vec::new();
                quantize32(row, &mut a);
                a
            })
            .collect();
        let mut out = vec![0f32; m * self.rows];
        let ptr = OutPtr(out.as_mut_ptr());
        let groups = self.rows.div_ceil(4);
        let avx = Kernels::detect() == Kernels::Avx2;
        candle_core::utils::barrier_pool().execute_chunked(groups, |range| {
            let p = &ptr;
            for g in range {
                let r0 = g * 4;
                let n = (self.rows - r0).min(4);
                let rows: [&[u8]; 4] = std::array::from_fn(|i| self.row(data, r0 + i.min(n - 1)));
                let write = |t: usize, dots: &[f32; 4]| {
                    for (i, v) in dots.iter().take(n).enumerate() {
                        // SAFETY: (t, r0 + i) is written by this group only.
                        unsafe { *p.0.add(t * self.rows + r0 + i) = *v };
                    }
                };
                let mut t = 0;
                #[cfg(target_arch = "x86_64")]
                if avx {
                    // two tokens at a time: each weight block is loaded once for both
                    while t + 1 < acts.len() {
                        // SAFETY: AVX2/FMA/F16C checked at run time; rows hold cols/32 blocks.
                        let (d0, d1) = unsafe { dot4x2_avx2(&rows, &acts[t], &acts[t + 1]) };
                        write(t, &d0);
                        write(t + 1, &d1);
                        t += 2;
                    }
                }
                while t < acts.len() {
                    let dots = if avx {
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: as above.
                        unsafe {
                            dot4_avx2(&rows, &acts[t])
                        }
                        #[cfg(not(target_arch = "x86_64"))]
                        dot4_scalar(&rows, &acts[t])
                    } else {
                        dot4_scalar(&rows, &acts[t])
                    };
                    write(t, &dots);
                    t += 1;
                }
            }
        });
        let mut shape = dims;
        *shape.last_mut().unwrap() = self.rows;
        Tensor::from_vec(out, shape, &Device::Cpu)
    }
}

fn dot4_scalar(rows: &[&[u8]; 4], a: &[Act32]) -> [f32; 4] {
    let mut out = [0f32; 4];
    for (r, row) in rows.iter().enumerate() {
        let mut acc = 0f32;
        for (b, blk) in row.chunks_exact(BLOCK).enumerate() {
            let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
            let s: i32 = blk[2..]
                .iter()
                .zip(&a[b].q)
                .map(|(&w, &x)| w as i8 as i32 * x as i32)
                .sum();
            acc += d * a[b].d * s as f32;
        }
        out[r] = acc;
    }
    out
}

/// Sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4_avx2(rows: &[&[u8]; 4], a: &[Act32]) -> [f32; 4] {
    use std::arch::x86_64::*;
    #[inline(always)]
    unsafe fn mul_sum(x: __m256i, y: __m256i) -> __m256 {
        let ax = _mm256_sign_epi8(x, x);
        let sy = _mm256_sign_epi8(y, x);
        let dot = _mm256_maddubs_epi16(ax, sy);
        let sum = _mm256_madd_epi16(dot, _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(sum)
    }
    #[inline(always)]
    unsafe fn step(blk: *const u8, y: __m256i, dy: f32, acc: __m256) -> __m256 {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (blk as *const u16).read_unaligned() as i32,
        )));
        let x = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        _mm256_fmadd_ps(_mm256_set1_ps(d * dy), mul_sum(x, y), acc)
    }
    let (mut a0, mut a1, mut a2, mut a3) = (
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
        _mm256_setzero_ps(),
    );
    let (p0, p1, p2, p3) = (
        rows[0].as_ptr(),
        rows[1].as_ptr(),
        rows[2].as_ptr(),
        rows[3].as_ptr(),
    );
    let nb = a.len().min(rows[0].len() / BLOCK);
    for (b, act) in a.iter().enumerate().take(nb) {
        let y = _mm256_loadu_si256(act.q.as_ptr() as *const __m256i);
        let dy = act.d;
        let off = b * BLOCK;
        a0 = step(p0.add(off), y, dy, a0);
        a1 = step(p1.add(off), y, dy, a1);
        a2 = step(p2.add(off), y, dy, a2);
        a3 = step(p3.add(off), y, dy, a3);
    }
    [hsum(a0), hsum(a1), hsum(a2), hsum(a3)]
}

/// Four weight rows against two activation rows: eight dot products, each
/// weight block loaded and made absolute once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4x2_avx2(rows: &[&[u8]; 4], a: &[Act32], b: &[Act32]) -> ([f32; 4], [f32; 4]) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut acc_a = [_mm256_setzero_ps(); 4];
    let mut acc_b = [_mm256_setzero_ps(); 4];
    let nb = a.len().min(b.len()).min(rows[0].len() / BLOCK);
    for blk in 0..nb {
        let ya = _mm256_loadu_si256(a[blk].q.as_ptr() as *const __m256i);
        let yb = _mm256_loadu_si256(b[blk].q.as_ptr() as *const __m256i);
        let (da, db) = (a[blk].d, b[blk].d);
        let off = blk * BLOCK;
        macro_rules! row {
            ($r:expr) => {{
                let p = rows[$r].as_ptr().add(off);
                let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                    (p as *const u16).read_unaligned() as i32,
                )));
                let x = _mm256_loadu_si256(p.add(2) as *const __m256i);
                let ax = _mm256_sign_epi8(x, x);
                let sa = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(ya, x)), ones);
                let sb = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, _mm256_sign_epi8(yb, x)), ones);
                acc_a[$r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(d * da), _mm256_cvtepi32_ps(sa), acc_a[$r]);
                acc_b[$r] =
                    _mm256_fmadd_ps(_mm256_set1_ps(d * db), _mm256_cvtepi32_ps(sb), acc_b[$r]);
            }};
        }
        row!(0);
        row!(1);
        row!(2);
        row!(3);
    }
    (
        [
            hsum(acc_a[0]),
            hsum(acc_a[1]),
            hsum(acc_a[2]),
            hsum(acc_a[3]),
        ],
        [
            hsum(acc_b[0]),
            hsum(acc_b[1]),
            hsum(acc_b[2]),
            hsum(acc_b[3]),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_scalar::<f32>())
            .unwrap()
    }

    #[test]
    fn matches_candle_q8_0_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (37, 96), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (1, 5, 96), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let ours = Q8Matrix::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap())
            .ok()
            .unwrap()
            .forward(&x)
            .unwrap();
        let theirs = candle_core::quantized::QMatMul::from_qtensor(q)
            .unwrap()
            .forward(&x)
            .unwrap();
        assert_eq!(ours.dims(), theirs.dims());
        let diff = max_abs_diff(&ours, &theirs);
        assert!(diff < 1e-3, "{diff}");
        let emb = Q8Matrix::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap())
            .ok()
            .unwrap()
            .embedding(&[3, 0])
            .unwrap();
        let deq = QTensor::quantize(&w, GgmlDType::Q8_0)
            .unwrap()
            .dequantize(&dev)
            .unwrap()
            .narrow(0, 3, 1)
            .unwrap();
        let d = max_abs_diff(&emb.narrow(0, 0, 1).unwrap(), &deq);
        assert!(d < 1e-6);
    }
}
