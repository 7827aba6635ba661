//! Attention in one pass, flash style, for candle's path (a GPU's): the
//! scores of a query against its keys are never written out. Each query row
//! of each head is one CUDA block (flash.cu); its warps split the visible keys
//! between them, each keeping a running maximum, sum and weighted sum of
//! values (online softmax), and merge at the end. The KV cache is read where
//! it lies (f16 or f32, no widened copy), with the causal and sliding-window
//! limits applied per query. An f16 cache is multiplied as llama.cpp does
//! (queries and normalised weights rounded to f16), which takes a first
//! pass over the keys for each row's maximum and sum.
//!
//! [`FlashAttention`]'s CPU implementation is the same algorithm step for
//! step (the same split of keys between warps, the same merge), so the CPU
//! tests check the arithmetic the kernel does; only the CUDA translation
//! needs a GPU to check (examples/gpu_check).
//!
//! Chosen by [`AttentionKernel`]: matrix products (candle's matmul and
//! softmax, the default until the fused kernel has been run on a GPU) or
//! this op. The CPU's own path (magpie's kernels) has its own fused attention
//! (`attn`) and does not use either.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::LlmError;

#[cfg(test)]
mod tests;

/// How candle's path (a GPU's) computes attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// Scores as a matrix product, a softmax, then a product with the values
    /// (candle's kernels).
    #[default]
    Matmul,
    /// One fused kernel per layer ([`FlashAttention`]); not for a q8_0 cache.
    Fused,
}

impl AttentionKernel {
    /// `matmul` or `fused`.
    pub fn parse(s: &str) -> Result<Self, LlmError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "matmul" => Ok(Self::Matmul),
            "fused" | "flash" => Ok(Self::Fused),
            other => Err(LlmError::InvalidInput(format!(
                "attention kernel {other:?}: use matmul (the default) or fused"
            ))),
        }
    }

    /// The name `parse` reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Matmul => "matmul",
            Self::Fused => "fused",
        }
    }

    /// `MAGPIE_ATTENTION`, when set (an unknown value is an error).
    pub fn from_env() -> Result<Option<Self>, LlmError> {
        match std::env::var("MAGPIE_ATTENTION") {
            Ok(s) if !s.trim().is_empty() => Self::parse(&s).map(Some),
            _ => Ok(None),
        }
    }
}

/// The most values a head may have (the kernel keeps a query row and each
/// warp's partial output in shared memory).
pub const MAX_HEAD_DIM: usize = 256;

/// Warps per block: a one-token step has few blocks (one per head), so each
/// gets more warps; a prompt has a block per token and head.
fn warps(t: usize) -> usize {
    if t == 1 {
        8
    } else {
        4
    }
}

/// Attention of `t` query rows over a KV cache, in one pass.
///
/// Inputs: the queries `[1, heads, t, hd]` f32 (rotated; row i is cache
/// position `start + i`), the key and value caches `[1, kv_heads, cap, hd]`
/// (f16 or f32, positions up to `start + t` filled). Output `[1, heads, t,
/// hd]` f32.
#[derive(Debug, Clone, Copy)]
pub struct FlashAttention {
    /// Cache position of the first query row.
    pub start: usize,
    /// A query sees only the last `window` positions (0: no limit).
    pub window: usize,
    /// Query heads per key/value head.
    pub groups: usize,
    /// What scores are multiplied by (1/√hd).
    pub scale: f32,
    /// The cache is f16: round the queries and each normalised attention
    /// weight to f16, as llama.cpp multiplies an f16 cache (and as the
    /// matrix-product path does). The weights need the row's maximum and sum
    /// first, so the keys are read twice.
    pub half: bool,
}

/// The sizes of one call: query heads, rows, head size, cache capacity.
struct Dims {
    heads: usize,
    t: usize,
    hd: usize,
    cap: usize,
}

impl FlashAttention {
    /// Attend: `q` `[1, heads, t, hd]`, `k`/`v` the layer's caches.
    pub fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        q.contiguous()?.apply_op3_no_bwd(k, v, self)
    }

    fn dims(&self, lq: &Layout, lk: &Layout, lv: &Layout) -> candle_core::Result<Dims> {
        let (b, heads, t, hd) = lq.shape().dims4()?;
        let (kb, kvh, cap, khd) = lk.shape().dims4()?;
        if lk.shape() != lv.shape() {
            candle_core::bail!("keys {:?} and values {:?} differ", lk.shape(), lv.shape());
        }
        if b != 1 || kb != 1 || khd != hd || self.groups == 0 || heads != kvh * self.groups {
            candle_core::bail!(
                "fused attention: queries {:?} against caches {:?} with {} groups",
                lq.shape(),
                lk.shape(),
                self.groups
            );
        }
        if hd > MAX_HEAD_DIM || t == 0 || self.start + t > cap {
            candle_core::bail!(
                "fused attention: head size {hd} (at most {MAX_HEAD_DIM}), {t} rows from position {} in a cache of {cap}",
                self.start
            );
        }
        for l in [lq, lk, lv] {
            if !l.is_contiguous() {
                candle_core::bail!("fused attention reads contiguous tensors");
            }
        }
        Ok(Dims { heads, t, hd, cap })
    }

    /// The CPU's run of the kernel's algorithm: each row of each head split
    /// between `warps(t)` walkers as the warps split it, merged the same way.
    fn run<T: Copy + Sync>(
        &self,
        d: &Dims,
        q: &[f32],
        k: &[T],
        v: &[T],
        widen: impl Fn(T) -> f32 + Sync,
    ) -> Vec<f32> {
        let Dims { heads, t, hd, cap } = *d;
        let nw = warps(t);
        let round = |x: f32| half::f16::from_f32(x).to_f32();
        let mut out = vec![0f32; heads * t * hd];
        out.par_chunks_mut(hd).enumerate().for_each(|(row, o)| {
            let (h, i) = (row / t, row % t);
            let base = (h / self.groups) * cap;
            let qp = self.start + i;
            let lo = if self.window > 0 {
                (qp + 1).saturating_sub(self.window)
            } else {
                0
            };
            let qs: Vec<f32> = q[row * hd..(row + 1) * hd]
                .iter()
                .map(|&x| if self.half { round(x) } else { x })
                .collect();
            let score = |j: usize| {
                let kr = &k[(base + j) * hd..(base + j + 1) * hd];
                qs.iter().zip(kr).map(|(&a, &b)| a * widen(b)).sum::<f32>() * self.scale
            };
            let value = |j: usize| &v[(base + j) * hd..(base + j + 1) * hd];
            let mut ms = vec![f32::NEG_INFINITY; nw];
            let mut ls = vec![0f32; nw];
            let mut accs = vec![0f32; nw * hd];
            // first pass: each walker's running maximum and sum (and, for an
            // f32 cache, its weighted sum of values)
            for w in 0..nw {
                let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
                let acc = &mut accs[w * hd..(w + 1) * hd];
                for j in (lo + w..=qp).step_by(nw) {
                    let s = score(j);
                    let mn = m.max(s);
                    let corr = (m - mn).exp();
                    let p = (s - mn).exp();
                    l = l * corr + p;
                    if !self.half {
                        for (a, &x) in acc.iter_mut().zip(value(j)) {
                            *a = *a * corr + p * widen(x);
                        }
                    }
                    m = mn;
                }
                ms[w] = m;
                ls[w] = l;
            }
            // the row's maximum and sum; a walker that saw no key adds nothing
            let top = ms.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let seen = |x: &usize| ms[*x] != f32::NEG_INFINITY;
            let sum: f32 = (0..nw)
                .filter(seen)
                .map(|x| ls[x] * (ms[x] - top).exp())
                .sum();
            if self.half {
                // second pass: weights normalised and rounded to f16
                for w in 0..nw {
                    let acc = &mut accs[w * hd..(w + 1) * hd];
                    for j in (lo + w..=qp).step_by(nw) {
                        let p = round((score(j) - top).exp() / sum);
                        for (a, &x) in acc.iter_mut().zip(value(j)) {
                            *a += p * widen(x);
                        }
                    }
                }
            }
            for (dd, od) in o.iter_mut().enumerate() {
                *od = if self.half {
                    (0..nw).map(|x| accs[x * hd + dd]).sum()
                } else {
                    let s: f32 = (0..nw)
                        .filter(seen)
                        .map(|x| accs[x * hd + dd] * (ms[x] - top).exp())
                        .sum();
                    s / sum
                };
            }
        });
        out
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "magpie-flash-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = self.dims(l1, l2, l3)?;
        let span = |l: &Layout| {
            let (a, b) = l.contiguous_offsets().unwrap_or((0, 0));
            a..b
        };
        let CpuStorage::F32(q) = s1 else {
            candle_core::bail!("fused attention: f32 queries")
        };
        let q = &q[span(l1)];
        let out = match (s2, s3) {
            (CpuStorage::F32(k), CpuStorage::F32(v)) => {
                self.run(&d, q, &k[span(l2)], &v[span(l3)], |x| x)
            }
            (CpuStorage::F16(k), CpuStorage::F16(v)) => {
                self.run(&d, q, &k[span(l2)], &v[span(l3)], |x| x.to_f32())
            }
            _ => candle_core::bail!("fused attention reads an f16 or f32 cache"),
        };
        Ok((CpuStorage::F32(out), Shape::from((1, d.heads, d.t, d.hd))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda::forward(self, s1, l1, s2, l2, s3, l3)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
    use candle_core::{CudaStorage, Layout, Shape};

    use super::{warps, FlashAttention};

    const WARP: usize = 32;

    /// flash.cu, compiled to PTX by build.rs.
    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/flash.ptx"));

    pub(super) fn forward(
        op: &FlashAttention,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
        s3: &CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let d = op.dims(l1, l2, l3)?;
        let dev = s1.device().clone();
        let span = |l: &Layout| l.contiguous_offsets().unwrap_or((0, 0));
        let CudaStorageSlice::F32(q) = &s1.slice else {
            candle_core::bail!("fused attention: f32 queries")
        };
        let (a, b) = span(l1);
        let q = q.slice(a..b);
        // SAFETY: every element is written by the kernel (one block per row,
        // its threads cover the row).
        let out = unsafe { dev.alloc::<f32>(d.heads * d.t * d.hd)? };
        let cfg = LaunchConfig {
            grid_dim: (d.t as u32, d.heads as u32, 1),
            block_dim: ((warps(d.t) * WARP) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let args = [
            d.t as i32,
            d.hd as i32,
            d.cap as i32,
            op.groups as i32,
            op.start as i32,
            op.window as i32,
        ];
        let (scale, round) = (op.scale, i32::from(op.half));
        let (ka, kb) = span(l2);
        let (va, vb) = span(l3);
        macro_rules! launch {
            ($name:literal, $k:expr, $v:expr) => {{
                let func = dev.get_or_load_custom_func($name, "magpie_flash", PTX)?;
                let (k, v) = ($k.slice(ka..kb), $v.slice(va..vb));
                let mut builder = func.builder();
                builder.arg(&q);
                builder.arg(&k);
                builder.arg(&v);
                builder.arg(&out);
                for x in &args {
                    builder.arg(x);
                }
                builder.arg(&scale);
                builder.arg(&round);
                // SAFETY: the arguments match flash.cu's signature; the sizes
                // were checked against the cache (`dims`).
                unsafe { builder.launch(cfg) }.w()?;
            }};
        }
        match (&s2.slice, &s3.slice) {
            (CudaStorageSlice::F32(k), CudaStorageSlice::F32(v)) => {
                launch!("flash_attend_f32", k, v)
            }
            (CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => {
                launch!("flash_attend_f16", k, v)
            }
            _ => candle_core::bail!("fused attention reads an f16 or f32 cache"),
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from((1, d.heads, d.t, d.hd)),
        ))
    }
}
