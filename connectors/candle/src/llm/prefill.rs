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
    add_residual, rms_in_place, rms_into, rope, rope_row, silu, Decoder, Mat, SendPtr,
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

impl Decoder {
    /// `outs[i] = mats[i] · x` for the `cols`-wide rows of `x` (plus bias),
    /// the rows quantized once (into `a32`, `a256`) for all the matrices.
    fn project(
        &self,
        mats: &[&Mat],
        x: &[f32],
        cols: usize,
        (a32, a256): &mut (Vec<Vec<Act32>>, Vec<Vec<Act256>>),
        outs: &mut [&mut Vec<f32>],
    ) {
        let t = x.len() / cols;
        let b32 = mats.iter().any(|m| !m.m.qtype().is_k());
        let b256 = mats.iter().any(|m| m.m.qtype().is_k());
        quantize_rows(x, cols, b32, b256, a32, a256);
        for (m, out) in mats.iter().zip(outs.iter_mut()) {
            let rows = m.m.rows();
            out.resize(t * rows, 0.0);
            m.m.matmul_quantized(self.kernels, a32, a256, out);
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
        // buffers reused from layer to layer
        let mut acts = (Vec::new(), Vec::new());
        let mut x = vec![0f32; t * d];
        let (mut q, mut k, mut v, mut att) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut o, mut g, mut u) = (Vec::new(), Vec::new(), Vec::new());
        let (qw, kw) = (nh * hd, nkv * hd);
        for (li, layer) in self.layers.iter().enumerate() {
            // attention half
            for (hr, xr) in h.chunks_exact(d).zip(x.chunks_exact_mut(d)) {
                rms_into(hr, &layer.attn_norm, eps, xr);
            }
            let qkv = [&layer.q, &layer.k, &layer.v];
            self.project(&qkv, &x, d, &mut acts, &mut [&mut q, &mut k, &mut v]);
            let kind = KvCacheType::of(k_cache[li].dtype());
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
                kind.round_queries(qr);
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
                cache.slice_set(&kv::store(&heads, kind)?, 2, pos)?;
            }
            let window = if layer.local {
                cfg.sliding_window
            } else {
                None
            };
            let (kc, vc) = (&k_cache[li], &v_cache[li]);
            self.attend(cfg, window, &q, kc, vc, pos, t, &mut att)?;
            self.project(&[&layer.o], &att, qw, &mut acts, &mut [&mut o]);
            add_residual(&mut h, &mut o, layer.post_attn_norm.as_deref(), eps);

            // feed-forward half
            for (hr, xr) in h.chunks_exact(d).zip(x.chunks_exact_mut(d)) {
                rms_into(hr, &layer.ffn_norm, eps, xr);
            }
            let gu = [&layer.gate, &layer.up];
            self.project(&gu, &x, d, &mut acts, &mut [&mut g, &mut u]);
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
            self.project(&[&layer.down], &g, ff, &mut acts, &mut [&mut o]);
            add_residual(&mut h, &mut o, layer.post_ffn_norm.as_deref(), eps);
        }
        let (mut a32, mut a256) = (Vec::new(), Vec::new());
        Ok(self.logits(&h[(t - 1) * d..], eps, &mut x, &mut a32, &mut a256))
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
