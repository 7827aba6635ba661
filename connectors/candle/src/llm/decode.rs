//! One decoding step (a single new token) on the CPU, fused.
//!
//! The generic forward pass builds each layer from some twenty candle ops;
//! for one token each op is a few hundred values, so its dispatch, its
//! allocation and the pool's wake-up cost more than its arithmetic. Here a
//! layer is five parallel sections on the pool, and the small steps between
//! them (norms, RoPE, the cache write, activations) run inline on scratch
//! buffers that live as long as the model:
//!
//! 1. q, k and v as one product (the input quantized once);
//! 2. attention, one task per query head, reading the cache in place;
//! 3. the output projection;
//! 4. gate and up as one product;
//! 5. down.
//!
//! Every output value is computed by the same code whichever thread runs it,
//! so any thread count gives the same logits, bit for bit.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use candle_core::{Device, Storage, Tensor};

use super::attn;
use super::gguf::{Arch, LlmConfig};
use super::kv::{self, KvCacheType};
use super::quant::{quantize256, quantize32, Act256, Act32, Acts, Kernels, QMatrix};

type CResult<T> = candle_core::Result<T>;

/// A weight matrix magpie's kernels read, with its bias (qwen2).
pub(super) struct Mat {
    pub m: Arc<QMatrix>,
    pub bias: Option<Vec<f32>>,
}

/// One block's weights, as the fused step reads them.
pub(super) struct DecodeLayer {
    pub attn_norm: Vec<f32>,
    pub q: Mat,
    pub k: Mat,
    pub v: Mat,
    pub o: Mat,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Mat,
    pub up: Mat,
    pub down: Mat,
    pub post_ffn_norm: Option<Vec<f32>>,
    pub local: bool,
}

/// The fused decoder of one model.
pub(super) struct Decoder {
    pub layers: Vec<DecodeLayer>,
    pub out_norm: Vec<f32>,
    pub output: Arc<QMatrix>,
    pub embed: Arc<QMatrix>,
    pub embed_scale: Option<f32>,
    pub kernels: Kernels,
    /// Threads: 0 for the decode pool (all of them), 1 for the calling thread alone.
    pub threads: std::sync::atomic::AtomicUsize,
    pub scratch: Mutex<Scratch>,
}

/// Buffers reused from token to token.
#[derive(Default)]
pub(super) struct Scratch {
    h: Vec<f32>,
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    a32: Vec<Act32>,
    a256: Vec<Act256>,
    scores: Vec<f32>,
    rope_global: (Vec<f32>, Vec<f32>),
    rope_local: (Vec<f32>, Vec<f32>),
}

/// Rows of one matrix per task.
const ROWS_PER_TASK: usize = 16;

pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: every task writes a disjoint range through it.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole wrapper).
    pub(super) fn at(&self, i: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(i) }
    }
}

/// `y = x / rms(x) * w`, as candle's `rms_norm` computes it.
pub(super) fn rms_into(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    for ((d, s), a) in y.iter_mut().zip(x).zip(w) {
        *d = *s / m * *a;
    }
}

pub(super) fn rms_in_place(x: &mut [f32], w: &[f32], eps: f32) {
    let sum2: f32 = x.iter().map(|v| v * v).sum();
    let m = (sum2 / x.len() as f32 + eps).sqrt();
    for (d, a) in x.iter_mut().zip(w) {
        *d = *d / m * *a;
    }
}

use super::ops::gelu;

pub(super) fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// The cos/sin of position `pos` for `dim` rotated values (as `rope_tables`).
pub(super) fn rope_row(
    pos: usize,
    dim: usize,
    base: f32,
    scale: f32,
    out: &mut (Vec<f32>, Vec<f32>),
) {
    let half = dim / 2;
    out.0.clear();
    out.1.clear();
    let p = pos as f64 / scale as f64;
    for i in 0..half {
        let inv = 1.0 / (base as f64).powf(2.0 * i as f64 / dim as f64);
        let a = p * inv;
        out.0.push(a.cos() as f32);
        out.1.push(a.sin() as f32);
    }
}

/// Rotate every head of `x` (`heads × hd`) in place.
pub(super) fn rope(x: &mut [f32], hd: usize, neox: bool, cos: &[f32], sin: &[f32]) {
    let half = cos.len();
    for head in x.chunks_exact_mut(hd) {
        if neox {
            for i in 0..half {
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = a * sin[i] + b * cos[i];
            }
        } else {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

/// The activations of `x` in the block sizes `mats` need.
pub(super) fn quantize_for(x: &[f32], mats: &[&Mat], a32: &mut Vec<Act32>, a256: &mut Vec<Act256>) {
    if mats.iter().any(|m| !m.m.qtype().is_k()) {
        quantize32(x, a32);
    }
    if mats.iter().any(|m| m.m.qtype().is_k()) {
        quantize256(x, a256);
    }
}

impl Decoder {
    /// Bytes one step reads from memory with `ctx` positions cached before
    /// it: every weight matrix once, and the keys and values each layer attends to.
    pub fn bytes_per_token(&self, cfg: &LlmConfig, ctx: usize, kv: KvCacheType) -> usize {
        let kv_row = cfg.n_head_kv * kv.row_bytes(cfg.head_dim) * 2;
        let mut total = self.output.bytes();
        for l in &self.layers {
            let mats = [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down];
            total += mats.iter().map(|m| m.m.bytes()).sum::<usize>();
            let seen = match (l.local, cfg.sliding_window) {
                (true, Some(w)) => (ctx + 1).min(w),
                _ => ctx + 1,
            };
            total += seen * kv_row;
        }
        total
    }

    pub(super) fn par(&self, n: usize, f: impl Fn(Range<usize>) + Sync) {
        let threads = self.threads.load(std::sync::atomic::Ordering::Relaxed);
        if threads == 1 || n <= 1 {
            f(0..n)
        } else {
            super::pool::decode_pool().run(n, f)
        }
    }

    /// `outs[i] = mats[i] · x` (plus bias) for the already quantized `x`,
    /// all matrices in one parallel section.
    pub(super) fn gemv(
        &self,
        mats: &[&Mat],
        a32: &[Act32],
        a256: &[Act256],
        outs: &mut [&mut Vec<f32>],
    ) {
        debug_assert_eq!(mats.len(), outs.len());
        let mut starts = [0usize; 4];
        assert!(mats.len() < starts.len(), "at most three matrices at once");
        for (i, m) in mats.iter().enumerate() {
            outs[i].resize(m.m.rows(), 0.0);
            starts[i + 1] = starts[i] + m.m.rows().div_ceil(ROWS_PER_TASK);
        }
        let ptrs: [SendPtr; 3] = std::array::from_fn(|i| {
            SendPtr(
                outs.get_mut(i)
                    .map_or(std::ptr::null_mut(), |o| o.as_mut_ptr()),
            )
        });
        let (n, kernels) = (mats.len(), self.kernels);
        self.par(starts[n], |range| {
            for task in range {
                let i = (0..n).find(|&i| task < starts[i + 1]).unwrap_or(n - 1);
                let m = &mats[i].m;
                let r0 = (task - starts[i]) * ROWS_PER_TASK;
                let r1 = (r0 + ROWS_PER_TASK).min(m.rows());
                let acts = if m.qtype().is_k() {
                    Acts::B256(a256)
                } else {
                    Acts::B32(a32)
                };
                // SAFETY: rows r0..r1 of output i belong to this task alone.
                let out = unsafe { std::slice::from_raw_parts_mut(ptrs[i].at(r0), r1 - r0) };
                m.dot_rows(kernels, acts, r0..r1, out);
            }
        });
        for (m, out) in mats.iter().zip(outs.iter_mut()) {
            if let Some(b) = &m.bias {
                for (o, b) in out.iter_mut().zip(b) {
                    *o += b;
                }
            }
        }
    }

    /// Run token `token` at position `cache.len` and return the logits.
    pub fn step(
        &self,
        cfg: &LlmConfig,
        token: u32,
        k_cache: &[Tensor],
        v_cache: &[Tensor],
        pos: usize,
    ) -> CResult<Vec<f32>> {
        let mut guard = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        let (d, hd) = (cfg.n_embd, cfg.head_dim);
        let (nh, nkv) = (cfg.n_head, cfg.n_head_kv);
        let groups = nh / nkv;
        let eps = cfg.rms_eps as f32;
        let scale = (1.0 / (hd as f64).sqrt()) as f32;

        s.h.resize(d, 0.0);
        s.x.resize(d, 0.0);
        self.embed.dequantize(token as usize, &mut s.h);
        if let Some(k) = self.embed_scale {
            for v in s.h.iter_mut() {
                *v *= k;
            }
        }
        rope_row(
            pos,
            cfg.rope_dim,
            cfg.rope_base,
            cfg.rope_scale,
            &mut s.rope_global,
        );
        if cfg.sliding_window.is_some() {
            rope_row(
                pos,
                cfg.rope_dim,
                cfg.rope_base_local,
                1.0,
                &mut s.rope_local,
            );
        }

        for (li, layer) in self.layers.iter().enumerate() {
            // attention half
            rms_into(&s.h, &layer.attn_norm, eps, &mut s.x);
            let qkv = [&layer.q, &layer.k, &layer.v];
            quantize_for(&s.x, &qkv, &mut s.a32, &mut s.a256);
            self.gemv(&qkv, &s.a32, &s.a256, &mut [&mut s.q, &mut s.k, &mut s.v]);
            if let Some(w) = &layer.q_norm {
                for head in s.q.chunks_exact_mut(hd) {
                    rms_in_place(head, w, eps);
                }
            }
            if let Some(w) = &layer.k_norm {
                for head in s.k.chunks_exact_mut(hd) {
                    rms_in_place(head, w, eps);
                }
            }
            let (cos, sin) = if layer.local && cfg.sliding_window.is_some() {
                (&s.rope_local.0, &s.rope_local.1)
            } else {
                (&s.rope_global.0, &s.rope_global.1)
            };
            rope(&mut s.q, hd, cfg.rope_neox, cos, sin);
            rope(&mut s.k, hd, cfg.rope_neox, cos, sin);
            let kind = KvCacheType::of(k_cache[li].dtype());
            let kt = kv::store(
                &Tensor::from_slice(&s.k, (1, nkv, 1, hd), &Device::Cpu)?,
                kind,
            )?;
            let vt = kv::store(
                &Tensor::from_slice(&s.v, (1, nkv, 1, hd), &Device::Cpu)?,
                kind,
            )?;
            k_cache[li].slice_set(&kt, 2, pos)?;
            v_cache[li].slice_set(&vt, 2, pos)?;
            let first = match (layer.local, cfg.sliding_window) {
                (true, Some(w)) => (pos + 1).saturating_sub(w),
                _ => 0,
            };
            let kl = pos + 1 - first;
            s.att.clear();
            s.att.resize(nh * hd, 0.0);
            s.scores.resize(nh * kl, 0.0);
            {
                let (ks, kl_layout) = k_cache[li].storage_and_layout();
                let (vs, vl_layout) = v_cache[li].storage_and_layout();
                let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
                    candle_core::bail!("the fused decode step runs on the CPU only");
                };
                if !kl_layout.is_contiguous() || !vl_layout.is_contiguous() {
                    candle_core::bail!("the KV cache must be contiguous");
                }
                let cap = k_cache[li].dim(2)?;
                let kd = attn::Kv::of(kc, kl_layout.start_offset())?;
                let vd = attn::Kv::of(vc, vl_layout.start_offset())?;
                let out = SendPtr(s.att.as_mut_ptr());
                let sc = SendPtr(s.scores.as_mut_ptr());
                kd.kind().round_queries(&mut s.q);
                let vkind = vd.kind();
                let q = &s.q;
                self.par(nh, |heads| {
                    let mut rows = attn::HeadRows::default();
                    for h in heads {
                        let kvh = h / groups;
                        let qh = &q[h * hd..(h + 1) * hd];
                        // SAFETY: head h's scores and output rows belong to this task.
                        let scores = unsafe { std::slice::from_raw_parts_mut(sc.at(h * kl), kl) };
                        // SAFETY: as above.
                        let oh = unsafe { std::slice::from_raw_parts_mut(out.at(h * hd), hd) };
                        let kbase = (kvh * cap + first) * hd;
                        let (kr, vr) = rows.get(
                            kd.slice(kbase..kbase + kl * hd),
                            vd.slice(kbase..kbase + kl * hd),
                            kvh,
                        );
                        attn::scores(qh, kr, hd, scale, scores);
                        let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
                        let mut sum = 0f32;
                        for sc in scores.iter_mut() {
                            *sc = (*sc - max).exp();
                            sum += *sc;
                        }
                        let inv = 1.0 / sum;
                        for (j, sc) in scores.iter().enumerate() {
                            let w = vkind.round_weight(sc * inv);
                            attn::axpy(oh, w, vr.slice(j * hd..(j + 1) * hd));
                        }
                    }
                });
            }
            quantize_for(&s.att, &[&layer.o], &mut s.a32, &mut s.a256);
            self.gemv(&[&layer.o], &s.a32, &s.a256, &mut [&mut s.o]);
            add_residual(&mut s.h, &mut s.o, layer.post_attn_norm.as_deref(), eps);

            // feed-forward half
            rms_into(&s.h, &layer.ffn_norm, eps, &mut s.x);
            let gu = [&layer.gate, &layer.up];
            quantize_for(&s.x, &gu, &mut s.a32, &mut s.a256);
            self.gemv(&gu, &s.a32, &s.a256, &mut [&mut s.g, &mut s.u]);
            let act = if cfg.arch == Arch::Gemma3 { gelu } else { silu };
            for (g, u) in s.g.iter_mut().zip(&s.u) {
                *g = act(*g) * u;
            }
            quantize_for(&s.g, &[&layer.down], &mut s.a32, &mut s.a256);
            self.gemv(&[&layer.down], &s.a32, &s.a256, &mut [&mut s.o]);
            add_residual(&mut s.h, &mut s.o, layer.post_ffn_norm.as_deref(), eps);
        }

        Ok(self.logits(&s.h, eps, &mut s.x, &mut s.a32, &mut s.a256))
    }

    /// The logits of hidden state `h` (one token's): the final norm into
    /// `x`, then the output projection over the pool.
    pub(super) fn logits(
        &self,
        h: &[f32],
        eps: f32,
        x: &mut Vec<f32>,
        a32: &mut Vec<Act32>,
        a256: &mut Vec<Act256>,
    ) -> Vec<f32> {
        x.resize(h.len(), 0.0);
        rms_into(h, &self.out_norm, eps, x);
        let out = Mat {
            m: self.output.clone(),
            bias: None,
        };
        quantize_for(x, &[&out], a32, a256);
        let mut logits = Vec::new();
        self.gemv(&[&out], a32, a256, &mut [&mut logits]);
        logits
    }
}

/// `h += o` after `o`'s post-norm, when the layer has one: a block's
/// residual add (`o` holds whole rows of `h`'s width).
pub(super) fn add_residual(h: &mut [f32], o: &mut [f32], norm: Option<&[f32]>, eps: f32) {
    if let Some(w) = norm {
        o.chunks_exact_mut(w.len())
            .for_each(|r| rms_in_place(r, w, eps));
    }
    for (h, o) in h.iter_mut().zip(o.iter()) {
        *h += o;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_halves_and_pairs_rotate_by_the_angle() {
        let mut t = (Vec::new(), Vec::new());
        rope_row(3, 4, 10_000.0, 1.0, &mut t);
        // the first pair turns by 3 radians, the second by 3 / 100
        assert!((t.0[0] - 3f32.cos()).abs() < 1e-6 && (t.1[1] - 0.03f32.sin()).abs() < 1e-6);
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut x, 4, true, &t.0, &t.1);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[2] - 3f32.sin()).abs() < 1e-6);
        let mut y = vec![1.0, 0.0, 0.0, 0.0];
        rope(&mut y, 4, false, &t.0, &t.1);
        assert!((y[0] - 3f32.cos()).abs() < 1e-6 && (y[1] - 3f32.sin()).abs() < 1e-6);
    }
}
