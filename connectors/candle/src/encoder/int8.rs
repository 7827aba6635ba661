//! The int8 path of a linear layer: weights quantized once at load with one
//! scale per output channel, activations quantized per row as each product
//! starts, products summed in i32 by AVX-512 VNNI (`vpdpbusd`: 64 multiply-adds
//! an instruction, four times the f32 rate), then scaled back to f32 for the
//! same epilogue as the f32 path.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes, which suits activations
//! quantized asymmetrically: a row maps its range [min, max] onto 0..=255
//! (`x ≈ s·q + min`, twice the resolution of a symmetric code for the
//! one-sided outputs of GELU), so `Σ x·w = s_w · (s·Σ q·q_w + min·Σ q_w)`
//! with `Σ q_w` kept per output column.

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::Aligned;

/// Outputs per panel (two 16-lane vectors).
const NR: usize = 32;
/// Rows per micro-kernel call.
pub const MR: usize = 12;

/// True when this CPU runs the int8 kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// A weight matrix in int8 panels.
pub struct PackedI8 {
    /// Inputs rounded up to a multiple of 4.
    kp: usize,
    n: usize,
    /// Panel p, group g of 4 inputs: 32 lanes × 4 bytes.
    panels: Vec<i8>,
    /// Byte offset of the first panel in `panels` (64-byte aligned).
    off: usize,
    /// Per output: weight scale (0 past n).
    scale: Aligned,
    /// Per output: weight scale · Σ_k q_w (0 past n).
    wsum: Aligned,
}

impl PackedI8 {
    /// Quantize and pack `weight` (`n` rows of `k`).
    pub fn new(weight: &[f32], n: usize, k: usize) -> Self {
        let kp = k.div_ceil(4) * 4;
        let panels_n = n.div_ceil(NR);
        let len = panels_n * kp * NR;
        let mut panels = vec![0i8; len + 64];
        let off = (64 - panels.as_ptr() as usize % 64) % 64;
        let mut scale = Aligned::zeros(panels_n * NR);
        let mut wsum = Aligned::zeros(panels_n * NR);
        for col in 0..n {
            let row = &weight[col * k..(col + 1) * k];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale.as_mut_slice()[col] = if max > 0.0 { s } else { 0.0 };
            let (p, lane) = (col / NR, col % NR);
            let mut sum = 0i32;
            for (kk, v) in row.iter().enumerate() {
                let q = (v / s).round().clamp(-127.0, 127.0) as i8;
                sum += q as i32;
                let (g, b) = (kk / 4, kk % 4);
                panels[off + ((p * (kp / 4) + g) * NR + lane) * 4 + b] = q;
            }
            wsum.as_mut_slice()[col] = scale.as_slice()[col] * sum as f32;
        }
        Self {
            kp,
            n,
            panels,
            off,
            scale,
            wsum,
        }
    }

    /// Bytes per quantized activation row.
    pub fn row_bytes(&self) -> usize {
        self.kp
    }

    /// Outputs per row.
    pub fn n(&self) -> usize {
        self.n
    }

    /// One tile: `rows` (≤ 12) quantized rows `lda` bytes apart against panel
    /// `p`, scaled back to f32 into `tile` (row stride 32).
    ///
    /// # Safety
    /// [`available`] is true; `a` holds `rows` rows of [`Self::row_bytes`];
    /// `a_scale` and `a_min` have `rows` entries; `tile` room for 12 × 32.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        &self,
        rows: usize,
        a: *const u8,
        lda: usize,
        a_scale: &[f32],
        a_min: &[f32],
        p: usize,
        tile: *mut f32,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            let b = self.panels.as_ptr().add(self.off + p * self.kp * NR);
            let sw = self.scale.as_slice().as_ptr().add(p * NR);
            let ws = self.wsum.as_slice().as_ptr().add(p * NR);
            vnni::tile(rows, self.kp / 4, a, lda, b, sw, ws, a_scale, a_min, tile);
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (rows, a, lda, a_scale, a_min, p, tile);
            unreachable!("the int8 path is only chosen where available() is true");
        }
    }
}

/// Activations of one product, quantized per row (buffers reused per thread).
pub struct QuantRows {
    /// `m` rows of `row_bytes` codes.
    pub bytes: Vec<u8>,
    /// Per row: the step between codes.
    pub scale: Vec<f32>,
    /// Per row: the value of code 0 (the row's minimum).
    pub min: Vec<f32>,
}

thread_local! {
    static QUANT: RefCell<QuantRows> = const { RefCell::new(QuantRows { bytes: Vec::new(), scale: Vec::new(), min: Vec::new() }) };
}

/// Quantize `m` rows of `k` floats to `row_bytes` bytes each, then run `f` on them.
pub fn with_quantized<R>(
    a: &[f32],
    m: usize,
    k: usize,
    row_bytes: usize,
    f: impl FnOnce(&QuantRows) -> R,
) -> R {
    QUANT.with(|cell| {
        let mut q = cell.borrow_mut();
        let q = &mut *q;
        if q.bytes.len() < m * row_bytes {
            q.bytes.resize(m * row_bytes, 128);
        }
        if q.scale.len() < m {
            q.scale.resize(m, 0.0);
            q.min.resize(m, 0.0);
        }
        q.bytes[..m * row_bytes]
            .par_chunks_mut(row_bytes)
            .zip(q.scale[..m].par_iter_mut().zip(q.min[..m].par_iter_mut()))
            .enumerate()
            .with_min_len(16)
            .for_each(|(i, (dst, (s, lo)))| {
                (*s, *lo) = quantize_row(&a[i * k..(i + 1) * k], dst);
            });
        f(q)
    })
}

/// One row to codes 0..=255 (padding with 0); returns (step, minimum).
fn quantize_row(row: &[f32], dst: &mut [u8]) -> (f32, f32) {
    // Only reached where available() holds (the int8 path needs AVX-512).
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the int8 path is chosen only where the CPU has AVX-512F.
    unsafe {
        vnni::quantize_row(row, dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (row, dst);
        unreachable!("the int8 path is only chosen where available() is true")
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use std::arch::x86_64::*;

    macro_rules! dispatch {
        ($rows:expr, $($arg:expr),*) => {
            match $rows {
                1 => mr::<1>($($arg),*),
                2 => mr::<2>($($arg),*),
                3 => mr::<3>($($arg),*),
                4 => mr::<4>($($arg),*),
                5 => mr::<5>($($arg),*),
                6 => mr::<6>($($arg),*),
                7 => mr::<7>($($arg),*),
                8 => mr::<8>($($arg),*),
                9 => mr::<9>($($arg),*),
                10 => mr::<10>($($arg),*),
                11 => mr::<11>($($arg),*),
                _ => mr::<12>($($arg),*),
            }
        };
    }

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
            *d = ((v - min) / step).round().clamp(0.0, 255.0) as u8;
        }
        dst[k..].fill(0);
        (step, min)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile(
        rows: usize,
        groups: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        sw: *const f32,
        ws: *const f32,
        a_scale: &[f32],
        a_min: &[f32],
        t: *mut f32,
    ) {
        dispatch!(
            rows,
            groups,
            a,
            lda,
            b,
            sw,
            ws,
            a_scale.as_ptr(),
            a_min.as_ptr(),
            t
        )
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn mr<const MR: usize>(
        groups: usize,
        a: *const u8,
        lda: usize,
        b: *const i8,
        sw: *const f32,
        ws: *const f32,
        a_scale: *const f32,
        a_min: *const f32,
        t: *mut f32,
    ) {
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
        let ws0 = _mm512_loadu_ps(ws);
        let ws1 = _mm512_loadu_ps(ws.add(16));
        let sw0 = _mm512_loadu_ps(sw);
        let sw1 = _mm512_loadu_ps(sw.add(16));
        for i in 0..MR {
            // s_w · (s_a · Σ q·q_w + min · Σ q_w)
            let sa = _mm512_set1_ps(*a_scale.add(i));
            let ma = _mm512_set1_ps(*a_min.add(i));
            let v0 = _mm512_cvtepi32_ps(c0[i]);
            let v1 = _mm512_cvtepi32_ps(c1[i]);
            let o0 = _mm512_fmadd_ps(v0, _mm512_mul_ps(sw0, sa), _mm512_mul_ps(ws0, ma));
            let o1 = _mm512_fmadd_ps(v1, _mm512_mul_ps(sw1, sa), _mm512_mul_ps(ws1, ma));
            _mm512_storeu_ps(t.add(i * 32), o0);
            _mm512_storeu_ps(t.add(i * 32 + 16), o1);
        }
    }
}
