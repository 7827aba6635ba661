//! A prompt on the CPU, fused: the one-token step's arithmetic
//! ([`super::decode`]) for many tokens at once.
//!
//! The generic forward pass runs a prompt through candle ops: its
//! element-wise ops wake candle's pool, whose workers then spin for about
//! half a millisecond (10% of a prompt's time, measured with `perf`), and its
//! attention multiplies every query by every key before masking half of
//! them away. Here a layer is a handful of parallel sections on magpie's
//! pool over plain buffers:
//!
//! 1. the activations quantized once for q, k and v (rows spread over the
//!    threads), then the three products as tiles of rows × tokens;
//! 2. attention, one task per key/value head and block of queries: each key
//!    row is read once for every query of the block and every head sharing
//!    it, and only the keys a query sees (causal, and the window of a local
//!    layer) are touched;
//! 3. the output projection, gate and up, down, as in 1.
//!
//! Every value is computed by the same functions in the same order as in
//! the one-token step (each dot product, the softmax over the keys in order,
//! the weighted sum of values in order, and the kernels' tiles give each
//! token its one-token values), so a prompt leaves the cache and the logits
//! that stepping through it token by token would, bit for bit.

use candle_core::{Device, Storage, Tensor};

use super::attn;
use super::decode::{
    quantize_for, rms_in_place, rms_into, rope, rope_row, silu, Decoder, Mat, SendPtr,
};
use super::gguf::{Arch, LlmConfig};
use super::kv::{self, KvCacheType};
use super::ops::gelu_slice;
use super::quant::{quantize_rows, Act256, Act32};

type CResult<T> = candle_core::Result<T>;

/// Queries per attention task: with the 4 heads sharing a key/value head in
/// Gemma 3, 32 query rows of 1 KB stay in L1 while each key row is used for
/// all of them.
const QUERIES_PER_TASK: usize = 8;

/// Per-layer buffers of a prompt.
#[derive(Default)]
struct Bufs {
    x: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    a32: Vec<Vec<Act32>>,
    a256: Vec<Vec<Act256>>,
}

impl Decoder {
    /// `outs[i] = mats[i] · x` for the `cols`-wide rows of `x` (plus bias),
    /// the rows quantized once for all the matrices.
    fn project(
        &self,
        mats: &[&Mat],
        x: &[f32],
        cols: usize,
        b: &mut Bufs,
        outs: [&mut Vec<f32>; 3],
    ) {
        let t = x.len() / cols;
        let b32 = mats.iter().any(|m| !m.m.qtype().is_k());
        let b256 = mats.iter().any(|m| m.m.qtype().is_k());
        quantize_rows(x, cols, b32, b256, &mut b.a32, &mut b.a256);
        for (m, out) in mats.iter().zip(outs) {
            let rows = m.m.rows();
            out.resize(t * rows, 0.0);
            m.m.matmul_quantized(self.kernels, &b.a32, &b.a256, out);
            if let Some(bias) = &m.bias {
                for row in out.chunks_exact_mut(rows) {
                    for (o, b) in row.iter_mut().zip(bias) {
                        *o += b;
                    }
                }
            }
        }
    }

    /// Run `tokens` at positions `pos..` (the cache holds `pos` before them
    /// and room for them all) and return the last one's logits.
    pub fn prefill(
        &self,
        cfg: &LlmConfig,
        tokens: &[u32],
        k_cache: &[Tensor],
        v_cache: &[Tensor],
        pos: usize,
    ) -> CResult<Vec<f32>> {
        let t = tokens.len();
        if t == 0 {
            candle_core::bail!("no tokens to run");
        }
        let (d, hd) = (cfg.n_embd, cfg.head_dim);
        let (nh, nkv) = (cfg.n_head, cfg.n_head_kv);
        let eps = cfg.rms_eps as f32;
        let mut h = vec![0f32; t * d];
        for (&id, row) in tokens.iter().zip(h.chunks_exact_mut(d)) {
            if id as usize >= self.embed.rows() {
                candle_core::bail!("token id {id} is outside the embedding table");
            }
            self.embed.dequantize(id as usize, row);
        }
        if let Some(k) = self.embed_scale {
            for v in h.iter_mut() {
                *v *= k;
            }
        }
        let tables = |base: f32, scale: f32| {
            (0..t)
                .map(|i| {
                    let mut r = (Vec::new(), Vec::new());
                    rope_row(pos + i, cfg.rope_dim, base, scale, &mut r);
                    r
                })
                .collect::<Vec<_>>()
        };
        let global = tables(cfg.rope_base, cfg.rope_scale);
        let local = match cfg.sliding_window {
            Some(_) => tables(cfg.rope_base_local, 1.0),
            None => Vec::new(),
        };
        let mut b = Bufs::default();
        b.x.resize(t * d, 0.0);
        let (qw, kw) = (nh * hd, nkv * hd);
        for (li, layer) in self.layers.iter().enumerate() {
            // attention half
            for (hr, xr) in h.chunks_exact(d).zip(b.x.chunks_exact_mut(d)) {
                rms_into(hr, &layer.attn_norm, eps, xr);
            }
            let x = std::mem::take(&mut b.x);
            let (mut q, mut k, mut v) = (
                std::mem::take(&mut b.q),
                std::mem::take(&mut b.k),
                std::mem::take(&mut b.v),
            );
            self.project(
                &[&layer.q, &layer.k, &layer.v],
                &x,
                d,
                &mut b,
                [&mut q, &mut k, &mut v],
            );
            b.x = x;
            for i in 0..t {
                let (qr, kr) = (&mut q[i * qw..(i + 1) * qw], &mut k[i * kw..(i + 1) * kw]);
                if let Some(w) = &layer.q_norm {
                    qr.chunks_exact_mut(hd)
                        .for_each(|head| rms_in_place(head, w, eps));
                }
                if let Some(w) = &layer.k_norm {
                    kr.chunks_exact_mut(hd)
                        .for_each(|head| rms_in_place(head, w, eps));
                }
                let (cos, sin) = if layer.local && cfg.sliding_window.is_some() {
                    (&local[i].0, &local[i].1)
                } else {
                    (&global[i].0, &global[i].1)
                };
                rope(qr, hd, cfg.rope_neox, cos, sin);
                rope(kr, hd, cfg.rope_neox, cos, sin);
                KvCacheType::of(k_cache[li].dtype()).round_queries(qr);
            }
            // into the cache, laid out [1, kv head, position, hd]
            for (src, cache) in [(&k, &k_cache[li]), (&v, &v_cache[li])] {
                let mut heads = vec![0f32; t * kw];
                for i in 0..t {
                    for kh in 0..nkv {
                        heads[(kh * t + i) * hd..(kh * t + i + 1) * hd]
                            .copy_from_slice(&src[i * kw + kh * hd..i * kw + (kh + 1) * hd]);
                    }
                }
                let heads = Tensor::from_vec(heads, (1, nkv, t, hd), &Device::Cpu)?;
                cache.slice_set(&kv::store(&heads, KvCacheType::of(cache.dtype()))?, 2, pos)?;
            }
            let window = if layer.local {
                cfg.sliding_window
            } else {
                None
            };
            self.attend(
                cfg,
                window,
                &q,
                &k_cache[li],
                &v_cache[li],
                pos,
                t,
                &mut b.att,
            )?;
            (b.q, b.k, b.v) = (q, k, v);
            let (att, mut o) = (std::mem::take(&mut b.att), std::mem::take(&mut b.o));
            let (mut u1, mut u2) = (Vec::new(), Vec::new());
            self.project(&[&layer.o], &att, qw, &mut b, [&mut o, &mut u1, &mut u2]);
            b.att = att;
            if let Some(w) = &layer.post_attn_norm {
                o.chunks_exact_mut(d).for_each(|r| rms_in_place(r, w, eps));
            }
            for (h, o) in h.iter_mut().zip(&o) {
                *h += o;
            }

            // feed-forward half
            for (hr, xr) in h.chunks_exact(d).zip(b.x.chunks_exact_mut(d)) {
                rms_into(hr, &layer.ffn_norm, eps, xr);
            }
            let x = std::mem::take(&mut b.x);
            let (mut g, mut u) = (std::mem::take(&mut b.g), std::mem::take(&mut b.u));
            self.project(
                &[&layer.gate, &layer.up],
                &x,
                d,
                &mut b,
                [&mut g, &mut u, &mut u1],
            );
            b.x = x;
            // the step's act(g) · u, each in its own loop so both vectorise
            if cfg.arch == Arch::Gemma3 {
                gelu_slice(&mut g);
            } else {
                g.iter_mut().for_each(|v| *v = silu(*v));
            }
            for (g, u) in g.iter_mut().zip(&u) {
                *g *= u;
            }
            let ff = g.len() / t;
            self.project(&[&layer.down], &g, ff, &mut b, [&mut o, &mut u1, &mut u2]);
            (b.g, b.u) = (g, u);
            if let Some(w) = &layer.post_ffn_norm {
                o.chunks_exact_mut(d).for_each(|r| rms_in_place(r, w, eps));
            }
            for (h, o) in h.iter_mut().zip(&o) {
                *h += o;
            }
            b.o = o;
        }

        let mut x = vec![0f32; d];
        rms_into(&h[(t - 1) * d..], &self.out_norm, eps, &mut x);
        let out = Mat {
            m: self.output.clone(),
            bias: None,
        };
        let (mut a32, mut a256) = (Vec::new(), Vec::new());
        quantize_for(&x, &[&out], &mut a32, &mut a256);
        let mut logits = Vec::new();
        self.gemv(&[&out], &a32, &a256, &mut [&mut logits]);
        Ok(logits)
    }

    /// Attention of the `t` queries `q` (`[t, heads × hd]`, at positions
    /// `pos..`) over the cached keys and values each one sees, into `att`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        cfg: &LlmConfig,
        window: Option<usize>,
        q: &[f32],
        k_cache: &Tensor,
        v_cache: &Tensor,
        pos: usize,
        t: usize,
        att: &mut Vec<f32>,
    ) -> CResult<()> {
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_head, cfg.n_head_kv);
        let groups = nh / nkv;
        let scale = (1.0 / (hd as f64).sqrt()) as f32;
        att.clear();
        att.resize(t * nh * hd, 0.0);
        let (ks, kl) = k_cache.storage_and_layout();
        let (vs, vl) = v_cache.storage_and_layout();
        let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
            candle_core::bail!("the fused prompt runs on the CPU only");
        };
        if !kl.is_contiguous() || !vl.is_contiguous() {
            candle_core::bail!("the KV cache must be contiguous");
        }
        let cap = k_cache.dim(2)?;
        let kd = attn::Kv::of(kc, kl.start_offset())?;
        let vd = attn::Kv::of(vc, vl.start_offset())?;
        // the first key query i sees (it sees up to its own position)
        let first = |i: usize| window.map_or(0, |w| (pos + i + 1).saturating_sub(w));
        let blocks = t.div_ceil(QUERIES_PER_TASK);
        let out = SendPtr(att.as_mut_ptr());
        self.par(nkv * blocks, |tasks| {
            for task in tasks {
                let (kvh, blk) = (task / blocks, task % blocks);
                let (i0, i1) = (
                    blk * QUERIES_PER_TASK,
                    ((blk + 1) * QUERIES_PER_TASK).min(t),
                );
                let (lo, hi) = (first(i0), pos + i1);
                let span = hi - lo;
                let heads = kvh * groups..(kvh + 1) * groups;
                // scores[(i − i0, head in group)][key − lo]
                let rows: Vec<&[f32]> = (i0..i1)
                    .flat_map(|i| heads.clone().map(move |hh| (i * nh + hh) * hd))
                    .map(|at| &q[at..at + hd])
                    .collect();
                let base = (kvh * cap + lo) * hd;
                let mut scores = vec![0f32; rows.len() * span];
                attn::score_block(
                    &rows,
                    kd.slice(base..base + span * hd),
                    hd,
                    span,
                    scale,
                    &mut scores,
                );
                for (r, row) in scores.chunks_exact_mut(span).enumerate() {
                    let i = i0 + r / groups;
                    let (a, b) = (first(i) - lo, pos + i + 1 - lo);
                    let seen = &mut row[a..b];
                    let max = seen.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
                    let mut sum = 0f32;
                    for s in seen.iter_mut() {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let inv = 1.0 / sum;
                    seen.iter_mut().for_each(|s| *s *= inv);
                    let vk = vd.kind();
                    seen.iter_mut().for_each(|s| *s = vk.round_weight(*s));
                    // the keys it does not see weigh nothing
                    row[..a].fill(0.0);
                    row[b..].fill(0.0);
                }
                let mut outs: Vec<&mut [f32]> = (i0..i1)
                    .flat_map(|i| heads.clone().map(move |hh| (i * nh + hh) * hd))
                    // SAFETY: query i's head hh belongs to this task alone.
                    .map(|at| unsafe { std::slice::from_raw_parts_mut(out.at(at), hd) })
                    .collect();
                attn::weighted_block(
                    &mut outs,
                    &scores,
                    vd.slice(base..base + span * hd),
                    hd,
                    span,
                );
            }
        });
        Ok(())
    }
}
