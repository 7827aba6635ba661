//! f32 matrix products `C = A · Wᵀ (+ epilogue)` for the encoder.
//!
//! `W` is a linear layer's weight (out × in, as PyTorch stores it). It is
//! packed once at load into column panels of `NR` outputs: panel `p` holds, for
//! every input index `k`, the `NR` weights `W[p·NR + j][k]` side by side, so
//! the micro-kernel reads the panel front to back. `A` (tokens × in) is read in
//! place, `MR` rows at a time. The micro-kernel keeps an `MR × NR` tile of `C`
//! in registers for the whole reduction; the epilogue (bias, GELU, residual)
//! runs on the tile's rows while they are in L1.
//!
//! Kernels: AVX-512 (12 × 32 tile), AVX2 + FMA (6 × 16), and a portable one,
//! chosen once at load from what the CPU has.

use rayon::prelude::*;

use super::int8::{self, with_quantized, Int8Isa, PackedI8, QuantRows};
use super::kernels::kernel;
use super::math;

/// Which micro-kernel a packed matrix was laid out for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// 512-bit vectors (AVX-512F).
    Avx512,
    /// 256-bit vectors with FMA.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Isa {
    /// The best kernel this CPU runs, at most `cap` when given.
    /// `MAGPIE_ENCODER_ISA=avx2|portable` caps it from outside (for comparing
    /// kernels; the vectors agree to rounding).
    pub fn detect(cap: Option<Isa>) -> Isa {
        let env = match std::env::var("MAGPIE_ENCODER_ISA").as_deref() {
            Ok("portable") => Some(Isa::Portable),
            Ok("avx2") => Some(Isa::Avx2),
            _ => None,
        };
        let best = Self::best();
        [Some(best), cap, env]
            .into_iter()
            .flatten()
            .min_by_key(|i| i.rank())
            .unwrap_or(best)
    }

    fn rank(self) -> u8 {
        match self {
            Isa::Portable => 0,
            Isa::Avx2 => 1,
            Isa::Avx512 => 2,
        }
    }

    /// Every kernel family this CPU runs.
    pub fn available() -> Vec<Isa> {
        let best = Self::best();
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|i| i.rank() <= best.rank())
            .collect()
    }

    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Output columns per panel.
    pub fn nr(self) -> usize {
        match self {
            Isa::Avx512 => 32,
            Isa::Avx2 => 16,
            Isa::Portable => 8,
        }
    }

    /// Rows of `A` per micro-kernel call.
    pub fn mr(self) -> usize {
        match self {
            Isa::Avx512 => 12,
            Isa::Avx2 => 6,
            Isa::Portable => 4,
        }
    }
}

/// A buffer of f32 whose first element sits on a 64-byte boundary.
pub struct Aligned {
    buf: Vec<f32>,
    off: usize,
    len: usize,
}

impl Aligned {
    /// `len` zeros.
    pub fn zeros(len: usize) -> Self {
        let buf = vec![0f32; len + 16];
        let addr = buf.as_ptr() as usize;
        let off = ((64 - addr % 64) % 64) / 4;
        Self { buf, off, len }
    }

    /// The elements.
    pub fn as_slice(&self) -> &[f32] {
        &self.buf[self.off..self.off + self.len]
    }

    /// The elements, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.buf[self.off..self.off + self.len]
    }
}

/// A linear layer packed for the micro-kernel.
pub struct PackedLinear {
    k: usize,
    n: usize,
    isa: Isa,
    panels: Aligned,
    bias: Vec<f32>,
    /// The int8 weights, when this layer runs in int8 (then `panels` is empty).
    int8: Option<PackedI8>,
}

/// The left operand of a product.
#[derive(Clone, Copy)]
enum Src<'a> {
    F32(&'a [f32]),
    I8(&'a QuantRows),
}

/// What happens to each output after the product.
#[derive(Clone, Copy)]
pub enum Epilogue<'a> {
    /// `C = A·Wᵀ + b`.
    Bias,
    /// `C = gelu(A·Wᵀ + b)` (the exact, erf form).
    BiasGelu,
    /// `C = layer_norm(A·Wᵀ + b + R)` with gain, shift and epsilon; `R` has C's shape.
    BiasResidualNorm {
        /// Added before the norm.
        residual: &'a [f32],
        /// The norm's per-column gain.
        gain: &'a [f32],
        /// The norm's per-column shift.
        shift: &'a [f32],
        /// The norm's epsilon.
        eps: f32,
    },
}

impl PackedLinear {
    /// Pack `weight` (`n` rows of `k`, row-major) and its bias for `isa`; in
    /// int8 when `int8` is asked and `isa` has an int8 kernel
    /// ([`Int8Isa::pick`]: AMX, AVX-512 VNNI, or AVX2).
    pub fn new(weight: &[f32], bias: &[f32], n: usize, k: usize, isa: Isa, int8: bool) -> Self {
        assert_eq!(weight.len(), n * k, "weight shape");
        assert_eq!(bias.len(), n, "bias shape");
        if let Some(kernel) = Int8Isa::pick(isa).filter(|_| int8) {
            return Self::int8_layer(weight, bias, n, k, isa, kernel);
        }
        let nr = isa.nr();
        let panels_n = n.div_ceil(nr);
        let mut panels = Aligned::zeros(panels_n * k * nr);
        let dst = panels.as_mut_slice();
        for p in 0..panels_n {
            for kk in 0..k {
                for j in 0..nr {
                    let col = p * nr + j;
                    if col < n {
                        dst[(p * k + kk) * nr + j] = weight[col * k + kk];
                    }
                }
            }
        }
        Self {
            k,
            n,
            isa,
            panels,
            bias: bias.to_vec(),
            int8: None,
        }
    }

    /// An int8 layer on `kernel`, its epilogues on `isa`.
    fn int8_layer(
        weight: &[f32],
        bias: &[f32],
        n: usize,
        k: usize,
        isa: Isa,
        kernel: Int8Isa,
    ) -> Self {
        Self {
            k,
            n,
            isa,
            panels: Aligned::zeros(0),
            bias: bias.to_vec(),
            int8: Some(PackedI8::new(weight, n, k, kernel)),
        }
    }

    /// An int8 layer on `kernel` (for comparing kernels; the CPU must run it).
    #[cfg(test)]
    fn with_int8(weight: &[f32], bias: &[f32], n: usize, k: usize, kernel: Int8Isa) -> Self {
        let isa = match kernel {
            Int8Isa::Avx2 => Isa::Avx2,
            Int8Isa::Vnni | Int8Isa::Amx => Isa::Avx512,
        };
        Self::int8_layer(weight, bias, n, k, isa, kernel)
    }

    /// True when this layer runs in int8.
    pub fn is_int8(&self) -> bool {
        self.int8.is_some()
    }

    /// True when this layer runs in int8 on AMX tiles.
    pub fn is_amx(&self) -> bool {
        self.int8_isa() == Some(Int8Isa::Amx)
    }

    /// The int8 kernel this layer runs on (`None`: f32).
    pub fn int8_isa(&self) -> Option<Int8Isa> {
        self.int8.as_ref().map(|w| w.isa())
    }

    fn rows_per_tile(&self) -> usize {
        match &self.int8 {
            Some(w) => w.rows_per_tile(),
            None => self.isa.mr(),
        }
    }

    /// Outputs per panel.
    fn nr(&self) -> usize {
        match &self.int8 {
            Some(w) => w.nr(),
            None => self.isa.nr(),
        }
    }

    /// Inputs per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Outputs per row.
    pub fn n(&self) -> usize {
        self.n
    }

    /// `c[m × n] = epilogue(a[m × k] · Wᵀ)`, on the rayon pool.
    pub fn forward(&self, a: &[f32], m: usize, c: &mut [f32], epi: Epilogue<'_>) {
        assert!(a.len() >= m * self.k, "matmul shapes");
        match &self.int8 {
            Some(q) => with_quantized(a, m, self.k, q, |rows| self.run(Src::I8(rows), m, c, epi)),
            None => self.run(Src::F32(a), m, c, epi),
        }
    }

    fn run(&self, a: Src<'_>, m: usize, c: &mut [f32], epi: Epilogue<'_>) {
        let n = self.n;
        assert!(c.len() >= m * n, "matmul shapes");
        if let Epilogue::BiasResidualNorm { residual, .. } = epi {
            assert!(residual.len() >= m * n, "residual shape");
        }
        if m == 0 {
            return;
        }
        let mr = self.rows_per_tile();
        let nr = self.nr();
        let panels = n.div_ceil(nr);
        let threads = rayon::current_num_threads().max(1);
        let c_ptr = SendPtr(c.as_mut_ptr());
        // Enough rows: each task takes a block of rows across every column
        // panel (and can normalise its rows at the end). Few rows (a short
        // query): split the columns instead, so both cores share the weights.
        let row_tiles = m.div_ceil(mr);
        if row_tiles >= 2 * threads || threads == 1 {
            // ~4 tasks per thread for balance on a noisy machine, each a whole
            // number of row tiles, at most ~192 rows so its A block stays in L2.
            let tiles_per_task = row_tiles.div_ceil(4 * threads).clamp(1, 192 / mr);
            let tasks = row_tiles.div_ceil(tiles_per_task);
            (0..tasks).into_par_iter().for_each(|t| {
                let r0 = t * tiles_per_task * mr;
                let r1 = ((t + 1) * tiles_per_task * mr).min(m);
                let c = c_ptr;
                // GELU and the norm run over whole rows once the block is done
                let tile_epi = match epi {
                    Epilogue::BiasGelu => Epilogue::Bias,
                    e => e,
                };
                // SAFETY: tasks write disjoint row ranges of c.
                unsafe { self.block(a, r0, r1, 0, panels, c.0, tile_epi) };
                // SAFETY: rows r0..r1 belong to this task alone.
                let rows =
                    unsafe { std::slice::from_raw_parts_mut(c.0.add(r0 * n), (r1 - r0) * n) };
                match epi {
                    Epilogue::BiasResidualNorm {
                        gain, shift, eps, ..
                    } => {
                        for row in rows.chunks_exact_mut(n) {
                            math::layer_norm(row, gain, shift, eps);
                        }
                    }
                    Epilogue::BiasGelu => math::gelu(rows, self.isa),
                    Epilogue::Bias => {}
                }
            });
        } else {
            let per = panels.div_ceil(threads * 2).max(1);
            let tasks = panels.div_ceil(per);
            (0..tasks).into_par_iter().for_each(|t| {
                let p0 = t * per;
                let p1 = ((t + 1) * per).min(panels);
                let c = c_ptr;
                // SAFETY: tasks write disjoint column ranges of c.
                unsafe { self.block(a, 0, m, p0, p1, c.0, epi) };
            });
            if let Epilogue::BiasResidualNorm {
                gain, shift, eps, ..
            } = epi
            {
                for row in c[..m * n].chunks_exact_mut(n) {
                    math::layer_norm(row, gain, shift, eps);
                }
            }
        }
    }

    /// Rows `r0..r1`, column panels `p0..p1`: products, bias, GELU or residual
    /// (not the norm, which needs whole rows).
    ///
    /// # Safety
    /// `c` points at an `m × n` matrix; no other thread touches this block.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        a: Src<'_>,
        r0: usize,
        r1: usize,
        p0: usize,
        p1: usize,
        c: *mut f32,
        epi: Epilogue<'_>,
    ) {
        let (k, n) = (self.k, self.n);
        let mr = self.rows_per_tile();
        let nr = self.nr();
        let mut tile = [0f32; 32 * 32];
        let amx = self.is_amx();
        if amx {
            int8::amx_begin();
        }
        for p in p0..p1 {
            let col0 = p * nr;
            let cols = nr.min(n - col0);
            let mut r = r0;
            while r < r1 {
                let rows = mr.min(r1 - r);
                match (a, &self.int8) {
                    (Src::I8(q), Some(w)) => {
                        let lda = w.row_bytes();
                        let ap = q.bytes.as_ptr().add(r * lda);
                        w.tile(
                            rows,
                            ap,
                            lda,
                            &q.scale[r..r + rows],
                            &q.min[r..r + rows],
                            p,
                            tile.as_mut_ptr(),
                        );
                    }
                    (Src::F32(a), _) => {
                        let b = self.panels.as_slice()[p * k * nr..(p + 1) * k * nr].as_ptr();
                        kernel(
                            self.isa,
                            rows,
                            k,
                            a.as_ptr().add(r * k),
                            k,
                            b,
                            tile.as_mut_ptr(),
                        );
                    }
                    (Src::I8(_), None) => unreachable!("int8 rows for an f32 layer"),
                }
                for i in 0..rows {
                    let out = std::slice::from_raw_parts_mut(c.add((r + i) * n + col0), cols);
                    let t = &tile[i * nr..i * nr + cols];
                    let bias = &self.bias[col0..col0 + cols];
                    match epi {
                        Epilogue::Bias => math::add2(out, t, bias),
                        Epilogue::BiasGelu => {
                            math::add2(out, t, bias);
                            math::gelu(out, self.isa);
                        }
                        Epilogue::BiasResidualNorm { residual, .. } => {
                            let res = &residual[(r + i) * n + col0..(r + i) * n + col0 + cols];
                            math::add3(out, t, bias, res);
                        }
                    }
                }
                r += rows;
            }
        }
        if amx {
            int8::amx_end();
        }
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint blocks of one output to rayon tasks.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: &[f32], w: &[f32], bias: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += a[i * k + kk] as f64 * w[j * k + kk] as f64;
                }
                c[i * n + j] = s as f32 + bias[j];
            }
        }
        c
    }

    fn noise(len: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Inputs, weights and bias from `seed`, and the f64 reference product.
    fn case(m: usize, n: usize, k: usize, seed: u32) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let a = noise(m * k, seed);
        let w = noise(n * k, seed + 1);
        let bias = noise(n, seed + 2);
        let want = reference(&a, &w, &bias, m, n, k);
        (a, w, bias, want)
    }

    #[test]
    fn every_kernel_matches_the_reference_on_ragged_shapes() {
        for isa in Isa::available() {
            for &(m, n, k) in &[
                (1, 8, 3),
                (5, 37, 19),
                (13, 64, 40),
                (40, 100, 33),
                (200, 48, 7),
            ] {
                let (a, w, bias, want) = case(m, n, k, 1);
                let p = PackedLinear::new(&w, &bias, n, k, isa, false);
                let mut got = vec![f32::NAN; m * n];
                p.forward(&a, m, &mut got, Epilogue::Bias);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "{isa:?} {m}x{n}x{k} at {i}: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The int8 kernels this CPU runs.
    fn int8_kernels() -> Vec<Int8Isa> {
        let mut out = Vec::new();
        if Isa::available().contains(&Isa::Avx2) {
            out.push(Int8Isa::Avx2);
        }
        if int8::available() {
            out.push(Int8Isa::Vnni);
        }
        if int8::amx_ready() {
            out.push(Int8Isa::Amx);
        }
        out
    }

    #[test]
    fn int8_products_stay_within_quantization_error() {
        let kernels = int8_kernels();
        if kernels.is_empty() {
            // No int8 kernel: asking for int8 must give the f32 layer, exactly.
            let (a, w, bias, want) = case(40, 100, 33, 4);
            let p = PackedLinear::new(&w, &bias, 100, 33, Isa::detect(None), true);
            assert!(!p.is_int8(), "int8 without an int8 kernel");
            let mut got = vec![f32::NAN; 40 * 100];
            p.forward(&a, 40, &mut got, Epilogue::Bias);
            assert!(got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-4));
            eprintln!("no AVX2 here: checked the f32 fallback only");
            return;
        }
        eprintln!("int8 kernels checked on this CPU: {kernels:?}");
        for &(m, n, k) in &[
            (1, 32, 4),
            (7, 40, 19),
            (17, 64, 130),
            (30, 96, 384),
            (200, 33, 61),
            (13, 16, 1),
        ] {
            let (a, w, bias, want) = case(m, n, k, 4);
            let mut first: Option<Vec<f32>> = None;
            for &kernel in &kernels {
                let p = PackedLinear::with_int8(&w, &bias, n, k, kernel);
                assert_eq!(p.int8_isa(), Some(kernel));
                let mut got = vec![f32::NAN; m * n];
                p.forward(&a, m, &mut got, Epilogue::Bias);
                // every kernel sums the same integers: the same outputs, bit for bit
                match &first {
                    Some(f) => assert_eq!(&got, f, "{m}x{n}x{k}: {kernel:?} differs"),
                    None => first = Some(got.clone()),
                }
                // each product term is off by at most (|a|+|w|)/254 of its scale;
                // with values in [-1, 1] the sum is off by well under k/127
                let tol = 2.0 * (k as f32).sqrt() / 127.0;
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < tol,
                        "{kernel:?} {m}x{n}x{k} at {i}: {g} vs {w} (tol {tol})"
                    );
                }
            }
        }
    }

    #[test]
    fn int8_follows_the_f32_kernel_family() {
        let (w, bias) = (noise(64 * 48, 9), noise(64, 10));
        // the portable family stays in f32 whatever is asked
        let p = PackedLinear::new(&w, &bias, 64, 48, Isa::Portable, true);
        assert_eq!(p.int8_isa(), None);
        if Isa::available().contains(&Isa::Avx2) {
            let p = PackedLinear::new(&w, &bias, 64, 48, Isa::Avx2, true);
            assert_eq!(p.int8_isa(), Some(Int8Isa::Avx2));
            let p = PackedLinear::new(&w, &bias, 64, 48, Isa::Avx2, false);
            assert_eq!(p.int8_isa(), None, "f32 asked");
        }
    }
}
