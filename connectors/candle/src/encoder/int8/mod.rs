//! The int8 path of a linear layer: weights quantized once at load with one
//! scale per output channel, activations quantized per row as each product
//! starts, products summed exactly in i32, then scaled back to f32 for the
//! same epilogue as the f32 path.
//!
//! Activations are quantized asymmetrically: a row maps its range [min, max]
//! onto 0..=255 (`x ≈ s·q + min`, twice the resolution of a symmetric code for
//! the one-sided outputs of GELU), so `Σ x·w = s_w · (s·Σ q·q_w + min·Σ q_w)`
//! with `Σ q_w` kept per output column.
//!
//! Three kernels sum the same integers, so they give the same outputs bit for
//! bit: AMX tiles (`tdpbusd`), AVX-512 VNNI (`vpdpbusd`, 64 multiply-adds an
//! instruction, unsigned by signed bytes) and AVX2 (`vpmaddwd` on 16-bit codes:
//! 16 multiply-adds an instruction against 8 for an f32 FMA; `vpmaddubsw` on
//! bytes would saturate its 16-bit pair sums at 255 × 127 × 2).

use std::cell::RefCell;

use rayon::prelude::*;

use super::gemm::Aligned;

/// Outputs per panel on AMX and VNNI (two 16-lane vectors).
const NR: usize = 32;
/// Outputs per panel on AVX2 (two 8-lane vectors).
const NR_AVX2: usize = 16;
/// Rows per AMX micro-kernel call (two tiles of 16).
pub const AMX_ROWS: usize = 32;
/// Rows per micro-kernel call.
pub const MR: usize = 12;
/// Rows per AVX2 micro-kernel call (12 accumulators of its 16 registers).
pub const MR_AVX2: usize = 6;

/// The instructions an int8 matrix runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Isa {
    /// AMX-INT8 tiles.
    Amx,
    /// AVX-512 VNNI.
    Vnni,
    /// AVX2 on 16-bit codes.
    Avx2,
}

impl Int8Isa {
    /// The int8 kernel for a layer whose f32 kernels are `isa` (`None`: the
    /// portable family, which stays in f32).
    pub fn pick(isa: super::gemm::Isa) -> Option<Int8Isa> {
        use super::gemm::Isa;
        match isa {
            Isa::Avx512 if amx_ready() => Some(Int8Isa::Amx),
            Isa::Avx512 if available() => Some(Int8Isa::Vnni),
            // AVX-512 without VNNI: its f32 FMAs (32 multiply-adds a cycle)
            // outrun the AVX2 int8 kernel (at most 24)
            Isa::Avx512 => None,
            Isa::Avx2 => Some(Int8Isa::Avx2),
            Isa::Portable => None,
        }
    }

    /// Outputs per panel.
    fn nr(self) -> usize {
        match self {
            Int8Isa::Avx2 => NR_AVX2,
            Int8Isa::Amx | Int8Isa::Vnni => NR,
        }
    }

    /// Bytes per code, of weights and activations alike.
    fn code_bytes(self) -> usize {
        match self {
            Int8Isa::Avx2 => 2,
            Int8Isa::Amx | Int8Isa::Vnni => 1,
        }
    }
}

/// True when this CPU has AMX-INT8 and the kernel lets this process use it
/// (asked once). `MAGPIE_ENCODER_AMX=0` keeps the int8 path on VNNI.
pub fn amx_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        if std::env::var("MAGPIE_ENCODER_AMX").as_deref() == Ok("0") || !available() {
            return false;
        }
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            // CPUID.(7,0):EDX bit 24 AMX-TILE, bit 25 AMX-INT8
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            if edx & (3 << 24) != 3 << 24 {
                return false;
            }
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with these arguments only asks for permission.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            };
            if r != 0 {
                tracing::info!("AMX present but not granted by the kernel; int8 runs on VNNI");
            }
            r == 0
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        false
    })
}

/// True when this CPU has AVX-512 VNNI (the int8 kernel for AVX-512 CPUs).
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
    /// Inputs rounded up to a whole step of the kernel.
    kp: usize,
    /// AMX and VNNI: panel p, group g of 4 inputs, 32 lanes × 4 bytes.
    /// AVX2: panel p, pair g of inputs, 16 lanes × 2 little-endian i16.
    panels: Vec<i8>,
    /// Byte offset of the first panel in `panels` (64-byte aligned).
    off: usize,
    /// Per output: weight scale (0 past n).
    scale: Aligned,
    /// Per output: weight scale · Σ_k q_w (0 past n).
    wsum: Aligned,
    /// Which kernel runs it.
    isa: Int8Isa,
}

impl PackedI8 {
    /// Quantize and pack `weight` (`n` rows of `k`) for `isa`.
    pub fn new(weight: &[f32], n: usize, k: usize, isa: Int8Isa) -> Self {
        let kp = match isa {
            // whole 64-byte steps, as AMX tiles take them (zeros past k)
            Int8Isa::Amx | Int8Isa::Vnni => k.div_ceil(64) * 64,
            Int8Isa::Avx2 => k.div_ceil(2) * 2,
        };
        let nr = isa.nr();
        let panels_n = n.div_ceil(nr);
        let len = panels_n * kp * nr * isa.code_bytes();
        let mut panels = vec![0i8; len + 64];
        let off = (64 - panels.as_ptr() as usize % 64) % 64;
        let mut scale = Aligned::zeros(panels_n * nr);
        let mut wsum = Aligned::zeros(panels_n * nr);
        for col in 0..n {
            let row = &weight[col * k..(col + 1) * k];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale.as_mut_slice()[col] = if max > 0.0 { s } else { 0.0 };
            let (p, lane) = (col / nr, col % nr);
            let mut sum = 0i32;
            for (kk, v) in row.iter().enumerate() {
                let q = (v / s).round().clamp(-127.0, 127.0) as i8;
                sum += q as i32;
                if isa == Int8Isa::Avx2 {
                    let (g, b) = (kk / 2, kk % 2);
                    let at = off + (((p * (kp / 2) + g) * nr + lane) * 2 + b) * 2;
                    let [lo, hi] = (q as i16).to_le_bytes();
                    panels[at] = lo as i8;
                    panels[at + 1] = hi as i8;
                } else {
                    let (g, b) = (kk / 4, kk % 4);
                    panels[off + ((p * (kp / 4) + g) * nr + lane) * 4 + b] = q;
                }
            }
            wsum.as_mut_slice()[col] = scale.as_slice()[col] * sum as f32;
        }
        Self {
            kp,
            panels,
            off,
            scale,
            wsum,
            isa,
        }
    }

    /// Bytes per quantized activation row.
    pub fn row_bytes(&self) -> usize {
        self.kp * self.isa.code_bytes()
    }

    /// Rows per micro-kernel call.
    pub fn rows_per_tile(&self) -> usize {
        match self.isa {
            Int8Isa::Amx => AMX_ROWS,
            Int8Isa::Vnni => MR,
            Int8Isa::Avx2 => MR_AVX2,
        }
    }

    /// Outputs per panel (the tile's row stride).
    pub fn nr(&self) -> usize {
        self.isa.nr()
    }

    /// The kernel this matrix runs on.
    pub fn isa(&self) -> Int8Isa {
        self.isa
    }

    /// One tile: `rows` (≤ [`Self::rows_per_tile`]) quantized rows `lda`
    /// bytes apart against panel `p`, scaled back to f32 into `tile` (row
    /// stride [`Self::nr`]).
    ///
    /// # Safety
    /// The CPU runs this matrix's [`Int8Isa`] (and the thread's AMX tiles are
    /// configured by [`amx_begin`] when it runs on [`Int8Isa::Amx`]); `a` holds `rows`
    /// rows of [`Self::row_bytes`] (readable up to a whole 32-row block);
    /// `a_scale` and `a_min` have `rows` entries; `tile` room for 32 × 32.
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
            let nr = self.nr();
            let b = self
                .panels
                .as_ptr()
                .add(self.off + p * nr * self.row_bytes());
            let sw = self.scale.as_slice().as_ptr().add(p * nr);
            let ws = self.wsum.as_slice().as_ptr().add(p * nr);
            let o = Operands {
                a,
                lda,
                b,
                sw,
                ws,
                a_scale: a_scale.as_ptr(),
                a_min: a_min.as_ptr(),
                t: tile,
            };
            match self.isa {
                Int8Isa::Amx => amx::tile(rows, self.kp / 64, o),
                Int8Isa::Vnni => vnni::tile(rows, self.kp / 4, o),
                Int8Isa::Avx2 => avx2::tile(rows, self.kp / 2, o),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (rows, a, lda, a_scale, a_min, p, tile);
            unreachable!("the int8 path is only chosen on x86-64");
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

/// Quantize `m` rows of `k` floats for `w`'s kernel ([`PackedI8::row_bytes`]
/// each), then run `f` on them.
pub fn with_quantized<R>(
    a: &[f32],
    m: usize,
    k: usize,
    w: &PackedI8,
    f: impl FnOnce(&QuantRows) -> R,
) -> R {
    let (row_bytes, isa) = (w.row_bytes(), w.isa);
    QUANT.with(|cell| {
        let mut q = cell.borrow_mut();
        let q = &mut *q;
        // whole 32-row blocks, as AMX tiles read them
        let rows = m.div_ceil(AMX_ROWS) * AMX_ROWS;
        if q.bytes.len() < rows * row_bytes {
            q.bytes.resize(rows * row_bytes, 0);
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
                (*s, *lo) = quantize_row(&a[i * k..(i + 1) * k], dst, isa);
            });
        f(q)
    })
}

/// One row to codes 0..=255 (padding with 0): bytes for AMX and VNNI, 16-bit
/// little-endian for AVX2 (the same codes); returns (step, minimum).
fn quantize_row(row: &[f32], dst: &mut [u8], isa: Int8Isa) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: an int8 matrix is built only for a kernel this CPU runs
    // (Int8Isa::pick): AVX-512F for AMX and VNNI, AVX2 + FMA for AVX2.
    unsafe {
        match isa {
            Int8Isa::Amx | Int8Isa::Vnni => vnni::quantize_row(row, dst),
            Int8Isa::Avx2 => avx2::quantize_row(row, dst),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (row, dst, isa);
        unreachable!("the int8 path is only chosen on x86-64")
    }
}

/// The code of `v` in a row quantized from `min` by `step`, where the vector
/// loops leave a tail (rounded half away from zero, as `f32::round` does).
fn code(v: f32, min: f32, step: f32) -> u16 {
    ((v - min) / step).round().clamp(0.0, 255.0) as u16
}

/// Configure this thread's AMX tiles (8 tiles of 16 rows × 64 bytes).
///
/// # Safety
/// [`amx_ready`] is true. Pair with [`amx_end`] on the same thread.
pub unsafe fn amx_begin() {
    #[cfg(target_arch = "x86_64")]
    amx::configure();
}

/// Release this thread's AMX state.
///
/// # Safety
/// [`amx_ready`] is true.
pub unsafe fn amx_end() {
    #[cfg(target_arch = "x86_64")]
    std::arch::asm!("tilerelease", options(nostack, nomem));
}

/// One row of 32 sums back to f32: `s_w · (s_a · Σ q·q_w + min · Σ q_w)`.
///
/// # Safety
/// The CPU has AVX-512F; `sw`, `ws` and `out` hold 32 floats.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn scale_back(
    acc0: std::arch::x86_64::__m512i,
    acc1: std::arch::x86_64::__m512i,
    sw: *const f32,
    ws: *const f32,
    a_scale: f32,
    a_min: f32,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    let (sa, ma) = (_mm512_set1_ps(a_scale), _mm512_set1_ps(a_min));
    for (h, acc) in [acc0, acc1].into_iter().enumerate() {
        let (w, m) = (
            _mm512_loadu_ps(sw.add(16 * h)),
            _mm512_loadu_ps(ws.add(16 * h)),
        );
        let v = _mm512_fmadd_ps(
            _mm512_cvtepi32_ps(acc),
            _mm512_mul_ps(w, sa),
            _mm512_mul_ps(m, ma),
        );
        _mm512_storeu_ps(out.add(16 * h), v);
    }
}

/// One tile's operands: rows of activation codes `a` (`lda` bytes apart)
/// with their scales and minimums (one per row), a weight panel `b` with its
/// column scales `sw` and column sums `ws`, and the 32 × 32 output `t`.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Operands {
    a: *const u8,
    lda: usize,
    b: *const i8,
    sw: *const f32,
    ws: *const f32,
    a_scale: *const f32,
    a_min: *const f32,
    t: *mut f32,
}

#[cfg(target_arch = "x86_64")]
mod amx;

#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(target_arch = "x86_64")]
mod avx2;
