//! The small steps of the generic forward pass: RMS norm, RoPE tables, the
//! one-row attention over the cache, attention as matrix products, and the
//! causal/window mask.

use candle_core::{DType, Device, Tensor};

use super::attn;
use super::gguf::LlmConfig;
use super::kv::{self, KvCacheType};

type CResult<T> = candle_core::Result<T>;

pub(super) fn rms(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)
}

/// cos/sin tables `[len, dim/2]` for positions `start..start+len` (may be negative for re-rotation).
pub(super) fn rope_tables(
    start: i64,
    len: usize,
    dim: usize,
    base: f32,
    scale: f32,
    dev: &Device,
) -> CResult<(Tensor, Tensor)> {
    let half = dim / 2;
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for p in 0..len as i64 {
        let pos = (start + p) as f64 / scale as f64;
        for i in 0..half {
            let inv = 1.0 / (base as f64).powf(2.0 * i as f64 / dim as f64);
            let a = pos * inv;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok((
        Tensor::from_vec(cos, (len, half), dev)?,
        Tensor::from_vec(sin, (len, half), dev)?,
    ))
}

/// Attention of one query row (`q`: `[1, heads, 1, hd]`) over cached keys and
/// values `first..first+kl` (`[1, kv, cap, hd]`), read in place: `[1, 1, heads*hd]`.
pub(super) fn attend_one(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    first: usize,
    kl: usize,
    c: &LlmConfig,
    scale: f64,
) -> CResult<Tensor> {
    use candle_core::Storage;
    let hd = c.head_dim;
    let groups = c.n_head / c.n_head_kv;
    let mut q = q.flatten_all()?.to_vec1::<f32>()?;
    let (ks, kl_layout) = k.storage_and_layout();
    let (vs, vl_layout) = v.storage_and_layout();
    let (Storage::Cpu(kc), Storage::Cpu(vc)) = (&*ks, &*vs) else {
        candle_core::bail!("attend_one runs on the CPU only");
    };
    let (kd, vd) = (attn::Kv::of(kc, 0)?, attn::Kv::of(vc, 0)?);
    kd.kind().round_queries(&mut q);
    if !kl_layout.is_contiguous() || !vl_layout.is_contiguous() {
        candle_core::bail!("the KV cache must be contiguous");
    }
    let cap = k.dim(2)?;
    let (k0, v0) = (kl_layout.start_offset(), vl_layout.start_offset());
    let mut out = vec![0f32; c.n_head * hd];
    let mut scores = vec![0f32; kl];
    let mut rows = attn::HeadRows::default();
    for h in 0..c.n_head {
        let kvh = h / groups;
        let qh = &q[h * hd..(h + 1) * hd];
        let base_k = k0 + kvh * cap * hd;
        let base_v = v0 + kvh * cap * hd;
        // the fused step's arithmetic, in its order (the two paths agree bit for bit)
        let scale = scale as f32;
        let (k_at, v_at) = (base_k + first * hd, base_v + first * hd);
        let (kr, vr) = rows.get(
            kd.slice(k_at..k_at + kl * hd),
            vd.slice(v_at..v_at + kl * hd),
            kvh,
        );
        attn::scores(qh, kr, hd, scale, &mut scores);
        let max = scores.iter().fold(f32::NEG_INFINITY, |m, s| m.max(*s));
        let mut sum = 0f32;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        let oh = &mut out[h * hd..(h + 1) * hd];
        let inv = 1.0 / sum;
        for (j, sc) in scores.iter().enumerate() {
            let w = vd.kind().round_weight(sc * inv);
            attn::axpy(oh, w, vr.slice(j * hd..(j + 1) * hd));
        }
    }
    drop(ks);
    drop(vs);
    Tensor::from_vec(out, (1, 1, c.n_head * hd), &Device::Cpu)
}

/// A contiguous tensor with storage of its own (a narrowed cache view may be
/// contiguous and share the cache's storage).
pub(super) fn owned(t: &Tensor) -> CResult<Tensor> {
    if t.is_contiguous() {
        t.copy()
    } else {
        t.contiguous()
    }
}

/// Additive mask `[groups*t, kl]`: query `i` (position `start+i`) sees key `j`
/// (position `first+j`) when it is not in the future and, for local layers,
/// within the window.
/// Attention as matrix products (candle's kernels): the rows of `q`
/// (`[1, heads, t, hd]`, from cache position `start`) against the cached
/// keys and values (`kv`, of type `kind`) they see (causal; the last
/// `window` positions on a local layer), masked, softmax, times the values.
/// `[1, heads, t, hd]`.
pub(super) fn attend_matmul(
    q: &Tensor,
    (k, v): (&Tensor, &Tensor),
    kind: KvCacheType,
    start: usize,
    window: Option<usize>,
    c: &LlmConfig,
) -> CResult<Tensor> {
    let (t, hd) = (q.dim(2)?, c.head_dim);
    let groups = c.n_head / c.n_head_kv;
    let first = window.map_or(0, |w| (start + 1).saturating_sub(w));
    let kl = start + t - first;
    let keys = kv::load(&k.narrow(2, first, kl)?, kind, hd)?;
    let vals = kv::load(&v.narrow(2, first, kl)?, kind, hd)?;
    // group the query heads that share a key/value head: [1, kv, groups*t, hd]
    let qg = q.reshape((1, c.n_head_kv, groups * t, hd))?;
    // the queries as llama.cpp multiplies this cache (see kv.rs)
    let qg = match kind {
        KvCacheType::F32 => qg,
        KvCacheType::F16 => qg.to_dtype(DType::F16)?.to_dtype(DType::F32)?,
        KvCacheType::Q8_0 => {
            let mut v = qg.flatten_all()?.to_vec1::<f32>()?;
            kind.round_queries(&mut v);
            Tensor::from_vec(v, qg.shape(), qg.device())?
        }
    };
    let att = (qg.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let att = if t > 1 {
        let mask = build_mask(start, t, first, kl, window, groups, q.device())?;
        att.broadcast_add(&mask)?
    } else {
        att
    };
    let att = candle_nn::ops::softmax_last_dim(&att)?;
    // and the weights as it multiplies them by an f16 cache's values
    let att = if kind == KvCacheType::F16 {
        att.to_dtype(DType::F16)?.to_dtype(DType::F32)?
    } else {
        att
    };
    let out = att.matmul(&vals.contiguous()?)?; // [1, kv, groups*t, hd]
    out.reshape((1, c.n_head, t, hd))
}

pub(super) fn build_mask(
    start: usize,
    t: usize,
    first: usize,
    kl: usize,
    window: Option<usize>,
    groups: usize,
    dev: &Device,
) -> CResult<Tensor> {
    let mut m = vec![0f32; t * kl];
    for i in 0..t {
        let qp = start + i;
        for j in 0..kl {
            let kp = first + j;
            let visible = kp <= qp && window.is_none_or(|w| qp - kp < w);
            if !visible {
                m[i * kl + j] = f32::NEG_INFINITY;
            }
        }
    }
    let mask = Tensor::from_vec(m, (t, kl), dev)?;
    let mask = if groups > 1 {
        mask.unsqueeze(0)?
            .broadcast_as((groups, t, kl))?
            .reshape((groups * t, kl))?
    } else {
        mask
    };
    mask.unsqueeze(0)?.unsqueeze(0)
}

/// The tanh GELU, `0.5·v·(1 + tanh(√(2/π)·v·(1 + 0.044715·v²)))`, with
/// tanh from a polynomial exp (no libm call, so a loop over a slice
/// vectorises): within 3e-7 of libm's over the range activations take. The
/// prompt's feed-forward and the one-token step both use it, so they agree
/// bit for bit.
#[inline(always)]
pub(super) fn gelu(v: f32) -> f32 {
    const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v);
    0.5 * v * (1.0 + tanh(u))
}

/// tanh(u) = sign(u)·(1 − 2/(e^{2|u|} + 1)).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    let y = (2.0 * u.abs()).min(88.0);
    let t = 1.0 - 2.0 / (exp_pos(y) + 1.0);
    t.copysign(u)
}

/// e^y for 0 ≤ y ≤ 88: 2^n · e^r with |r| ≤ ln2/2 and a degree-6 polynomial.
#[inline(always)]
fn exp_pos(y: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let n = (y * LOG2E + 0.5).floor();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, y));
    let mut p: f32 = 1.0 / 720.0;
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// [`gelu`] over a slice.
pub(super) fn gelu_slice(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = gelu(*v);
    }
}

/// GELU of a tensor: [`gelu_slice`] on the CPU, candle's elsewhere.
pub(super) fn gelu_tensor(t: &Tensor) -> CResult<Tensor> {
    if !t.device().is_cpu() {
        return t.gelu();
    }
    use rayon::prelude::*;
    let mut v = t.flatten_all()?.to_vec1::<f32>()?;
    // a prompt's activations on every core (a token's alone is not worth it)
    v.par_chunks_mut(8192).for_each(gelu_slice);
    Tensor::from_vec(v, t.shape(), t.device())
}

#[cfg(test)]
mod gelu_tests {
    use proptest::prelude::*;

    fn libm_gelu(v: f32) -> f32 {
        const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
        0.5 * v * (1.0 + (SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)).tanh())
    }

    proptest! {
        /// Within 3e-7 of libm's tanh GELU (relative to max(|v|, 1)), and the
        /// slice form equals the scalar one bit for bit whatever the length.
        #[test]
        fn gelu_matches_libm(v in -60f32..60f32, len in 1usize..40) {
            let (ours, theirs) = (super::gelu(v), libm_gelu(v));
            prop_assert!((ours - theirs).abs() <= 3e-7 * v.abs().max(1.0), "{v}: {ours} vs {theirs}");
            let mut xs: Vec<f32> = (0..len).map(|i| v + i as f32 * 0.37).collect();
            let want: Vec<u32> = xs.iter().map(|&x| super::gelu(x).to_bits()).collect();
            super::gelu_slice(&mut xs);
            prop_assert_eq!(xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn gelu_at_the_edges() {
        assert_eq!(super::gelu(0.0), 0.0);
        assert!(super::gelu(f32::NAN).is_nan());
        assert_eq!(super::gelu(1e6), 1e6);
        assert_eq!(super::gelu(-1e6), 0.0);
    }
}
