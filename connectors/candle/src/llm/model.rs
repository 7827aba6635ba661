//! magpie's own transformer forward pass on candle ops, for the llama, qwen2,
//! qwen3 and gemma3 block layouts, with a KV cache magpie controls (append,
//! truncate, and shift with RoPE re-rotation).
//!
//! The weights and their loader are in `weights`, the small steps of the
//! generic pass in `ops`; one-token steps on the CPU run fused in `decode`.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Device, Tensor};

use super::decode::Decoder;
use super::flash::{AttentionKernel, FlashAttention};
use super::gguf::{Arch, LlmConfig, ModelFile};
use super::kv;
pub use super::kv::KvCacheType;
use super::lora::{ActiveLoras, LoraAdapter, TargetShapes};
use super::ops::{attend_matmul, attend_one, owned, rms, rope_tables};
use super::weights::{
    build_decoder, cerr, own_kernels, Embedding, Layer, Linear, Weight, WeightLoader,
};
use super::LlmError;

type CResult<T> = candle_core::Result<T>;

/// Keys and values of every layer for the tokens seen so far.
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    len: usize,
    cap: usize,
    max: usize,
    kind: KvCacheType,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Most positions it may hold.
    pub fn max_len(&self) -> usize {
        self.max
    }
    /// Positions allocated.
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Forget everything after the first `n` positions.
    pub fn truncate(&mut self, n: usize) {
        self.len = self.len.min(n);
    }
    /// What it holds keys and values in.
    pub fn kind(&self) -> KvCacheType {
        self.kind
    }
    /// Layer `layer`'s keys for the positions held, in the cache's type:
    /// `[1, kv heads, len, row]` (a row: the head's values, or its Q8_0 bytes).
    pub fn keys(&self, layer: usize) -> Option<Tensor> {
        self.k.get(layer)?.narrow(2, 0, self.len).ok()
    }
}

/// A loaded model.
pub struct Transformer {
    /// Hyper-parameters.
    pub cfg: LlmConfig,
    embed: Embedding,
    embed_scale: Option<f64>,
    layers: Vec<Layer>,
    out_norm: Tensor,
    output: Linear,
    device: Device,
    /// magpie's kernels run it (the CPU), else candle's (a GPU).
    own: bool,
    /// The matrices a LoRA adapter may adapt: name → (out, in).
    lora_targets: TargetShapes,
    /// (name, original type, type used) of tensors converted at load.
    pub requantized: Vec<(String, GgmlDType, GgmlDType)>,
    /// The fused one-token step (CPU, every matrix of a type magpie reads).
    decoder: Option<Decoder>,
    fused: std::sync::atomic::AtomicBool,
    /// New caches' type: 0 f16, 1 f32, 2 q8_0.
    kv: std::sync::atomic::AtomicU8,
    /// candle's path attends with one fused kernel (flash/) instead of
    /// matrix products.
    fused_attention: std::sync::atomic::AtomicBool,
}

impl Transformer {
    /// Load the weights of `file` onto `device`.
    pub fn load(file: &ModelFile, device: &Device) -> Result<Self, LlmError> {
        Self::load_with(file, device, own_kernels(device))
    }

    /// [`Transformer::load`], on magpie's CPU kernels where `own` (the
    /// device must then be the CPU) or on candle's (a GPU's path; on the CPU,
    /// for checking that path without a GPU).
    pub fn load_with(file: &ModelFile, device: &Device, own: bool) -> Result<Self, LlmError> {
        let cfg = file.config()?;
        let own = own && device.is_cpu();
        let mut ld = WeightLoader {
            file,
            map: WeightLoader::map_file(file, own),
            arch: cfg.arch.name(),
            reader: std::io::BufReader::new(
                std::fs::File::open(&file.path).map_err(|e| LlmError::BadFile(e.to_string()))?,
            ),
            device,
            own,
            requantized: Vec::new(),
            targets: Default::default(),
        };
        let has = |name: &str| file.content.tensor_infos.contains_key(name);
        let (nq, nkv) = (cfg.n_head * cfg.head_dim, cfg.n_head_kv * cfg.head_dim);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}");
            let q_norm = ld.optional(&p("attn_q_norm.weight"))?;
            let k_norm = ld.optional(&p("attn_k_norm.weight"))?;
            let post_attn_norm = ld.optional(&p("post_attention_norm.weight"))?;
            let post_ffn_norm = ld.optional(&p("post_ffw_norm.weight"))?;
            // q, k and v fused in one matrix (the GLM family) are cut apart
            let (q, k, v) = if has(&p("attn_qkv.weight")) {
                let [q, k, v]: [Linear; 3] = ld
                    .split_linear(&p("attn_qkv"), &[nq, nkv, nkv])?
                    .try_into()
                    .map_err(|_| LlmError::BadFile("attn_qkv did not split in three".into()))?;
                (q, k, v)
            } else {
                (
                    ld.linear(&p("attn_q"))?,
                    ld.linear(&p("attn_k"))?,
                    ld.linear(&p("attn_v"))?,
                )
            };
            // gate and up fused in a doubled ffn_up: gate first (llama.cpp's SWIGLU)
            let (gate, up) = if has(&p("ffn_gate.weight")) {
                (ld.linear(&p("ffn_gate"))?, ld.linear(&p("ffn_up"))?)
            } else {
                let [g, u]: [Linear; 2] = ld
                    .split_linear(&p("ffn_up"), &[cfg.n_ff, cfg.n_ff])?
                    .try_into()
                    .map_err(|_| LlmError::BadFile("ffn_up did not split in two".into()))?;
                (g, u)
            };
            layers.push(Layer {
                attn_norm: ld.vector(&p("attn_norm.weight"))?,
                q,
                k,
                v,
                o: ld.linear(&p("attn_output"))?,
                q_norm,
                k_norm,
                post_attn_norm,
                ffn_norm: ld.vector(&p("ffn_norm.weight"))?,
                gate,
                up,
                down: ld.linear(&p("ffn_down"))?,
                post_ffn_norm,
                local: cfg.is_local(i),
            });
        }
        let out_norm = ld.vector("output_norm.weight")?;
        let embed = ld.embedding("token_embd.weight")?;
        let vocab = match &embed {
            Embedding::Own(m) => m.rows(),
            Embedding::Q(t) => t.shape().dims()[0],
        };
        let output = if has("output.weight") {
            ld.linear("output")?
        } else {
            // tied embeddings: one copy serves both
            Linear {
                w: match &embed {
                    Embedding::Own(m) => Weight::Own(m.clone(), None),
                    Embedding::Q(t) => Weight::Q(QMatMul::from_arc(t.clone()).map_err(cerr)?),
                },
                b: None,
                name: "token_embd.weight".into(),
                rows: None,
            }
        };
        let requantized = ld.requantized;
        let lora_targets = ld.targets;
        let mut cfg = cfg;
        if cfg.vocab_size == 0 {
            cfg.vocab_size = vocab;
        }
        let embed_scale = (cfg.arch == Arch::Gemma3).then(|| (cfg.n_embd as f64).sqrt());
        let decoder =
            build_decoder(&layers, &out_norm, &output.w, &embed, embed_scale, own).map_err(cerr)?;
        let model = Self {
            embed_scale,
            decoder,
            fused: std::sync::atomic::AtomicBool::new(
                std::env::var("MAGPIE_LLM_FUSED").as_deref() != Ok("0"),
            ),
            kv: std::sync::atomic::AtomicU8::new(0),
            fused_attention: std::sync::atomic::AtomicBool::new(false),
            cfg,
            embed,
            layers,
            out_norm,
            output,
            device: device.clone(),
            own,
            requantized,
            lora_targets,
        };
        if let Ok(v) = std::env::var("MAGPIE_KV_CACHE") {
            if let Err(e) = KvCacheType::parse(&v).and_then(|k| model.set_kv_cache(k)) {
                tracing::warn!("MAGPIE_KV_CACHE: {e}; keeping f16");
            }
        }
        match AttentionKernel::from_env() {
            Ok(Some(k)) => model.set_attention(k),
            Ok(None) => {}
            Err(e) => tracing::warn!("MAGPIE_ATTENTION: {e}; keeping matmul"),
        }
        Ok(model)
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// magpie's own kernels run it (the CPU), not candle's (a GPU).
    pub fn own_kernels(&self) -> bool {
        self.own
    }

    /// Whether one-token steps run fused (the default on the CPU, where every
    /// matrix is of a type magpie's kernels read; `MAGPIE_LLM_FUSED=0` turns
    /// it off): the generic path and the fused one compute the same values
    /// in different orders.
    pub fn fused_decode(&self) -> bool {
        self.decoder.is_some() && self.fused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes a fused decoding step reads with `ctx` positions already cached
    /// (every weight once, plus the keys and values attended to); `None`
    /// where the step does not run fused.
    pub fn decode_bytes(&self, ctx: usize) -> Option<usize> {
        self.decoder
            .as_ref()
            .map(|d| d.bytes_per_token(&self.cfg, ctx, self.kv_cache()))
    }

    /// Turn the fused one-token step on or off (to compare the two paths).
    pub fn set_fused_decode(&self, on: bool) {
        self.fused.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Threads of the fused step: `Some(1)` runs it on the calling thread
    /// alone, `None` on candle's pool. Every count gives the same logits.
    pub fn set_decode_threads(&self, threads: Option<usize>) {
        if let Some(d) = &self.decoder {
            d.threads
                .store(threads.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Read the LoRA adapter at `path`, checked against this model (its
    /// architecture and the shape of every matrix it adapts).
    pub fn load_adapter(
        &self,
        name: &str,
        path: &std::path::Path,
    ) -> Result<LoraAdapter, LlmError> {
        LoraAdapter::load(
            name,
            path,
            self.cfg.arch.name(),
            &self.lora_targets,
            &self.device,
        )
    }

    /// An empty cache holding up to `max` positions.
    pub fn new_cache(&self, max: usize) -> KvCache {
        KvCache {
            k: Vec::new(),
            v: Vec::new(),
            len: 0,
            cap: 0,
            max,
            kind: self.kv_cache(),
        }
    }

    /// What new caches hold keys and values in.
    pub fn kv_cache(&self) -> KvCacheType {
        match self.kv.load(std::sync::atomic::Ordering::Relaxed) {
            1 => KvCacheType::F32,
            2 => KvCacheType::Q8_0,
            _ => KvCacheType::F16,
        }
    }

    /// Set what new caches hold keys and values in (f16 by default;
    /// `MAGPIE_KV_CACHE` from outside); refused where this model and device
    /// cannot keep it (q8_0: the CPU, heads of a multiple of 32 values).
    pub fn set_kv_cache(&self, kind: KvCacheType) -> Result<(), LlmError> {
        kind.check(self.cfg.head_dim, self.device.is_cpu())?;
        let v = match kind {
            KvCacheType::F16 => 0,
            KvCacheType::F32 => 1,
            KvCacheType::Q8_0 => 2,
        };
        self.kv.store(v, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// How candle's path (a GPU's) attends: matrix products (the default) or
    /// one fused kernel (`MAGPIE_ATTENTION=fused` from outside). magpie's own
    /// CPU path has its own and ignores this.
    pub fn set_attention(&self, kind: AttentionKernel) {
        let fused = kind == AttentionKernel::Fused;
        self.fused_attention
            .store(fused, std::sync::atomic::Ordering::Relaxed);
    }

    /// The attention [`Transformer::set_attention`] chose.
    pub fn attention(&self) -> AttentionKernel {
        if self
            .fused_attention
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            AttentionKernel::Fused
        } else {
            AttentionKernel::Matmul
        }
    }

    fn ensure_capacity(&self, cache: &mut KvCache, need: usize) -> CResult<()> {
        if need <= cache.cap {
            return Ok(());
        }
        let new_cap = need.max(cache.cap * 2).max(256).min(cache.max.max(need));
        let row = cache.kind.row_len(self.cfg.head_dim);
        let shape = (1, self.cfg.n_head_kv, new_cap, row);
        let mut ks = Vec::with_capacity(self.layers.len());
        let mut vs = Vec::with_capacity(self.layers.len());
        for i in 0..self.layers.len() {
            let k = Tensor::zeros(shape, cache.kind.dtype(), &self.device)?;
            let v = Tensor::zeros(shape, cache.kind.dtype(), &self.device)?;
            if cache.len > 0 {
                k.slice_set(&cache.k[i].narrow(2, 0, cache.len)?.contiguous()?, 2, 0)?;
                v.slice_set(&cache.v[i].narrow(2, 0, cache.len)?.contiguous()?, 2, 0)?;
            }
            ks.push(k);
            vs.push(v);
        }
        cache.k = ks;
        cache.v = vs;
        cache.cap = new_cap;
        Ok(())
    }

    fn rope_for(&self, local: bool, start: i64, len: usize) -> CResult<(Tensor, Tensor)> {
        let c = &self.cfg;
        if local {
            rope_tables(start, len, c.rope_dim, c.rope_base_local, 1.0, &self.device)
        } else {
            rope_tables(
                start,
                len,
                c.rope_dim,
                c.rope_base,
                c.rope_scale,
                &self.device,
            )
        }
    }

    fn apply_rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
        let x = x.contiguous()?;
        let (hd, rd) = (self.cfg.head_dim, self.cfg.rope_dim);
        // the GLM family rotates the first half of each head only
        let (rot, pass) = if rd < hd {
            let last = x.rank() - 1;
            (
                x.narrow(last, 0, rd)?.contiguous()?,
                Some(x.narrow(last, rd, hd - rd)?),
            )
        } else {
            (x, None)
        };
        let rot = if self.cfg.rope_neox {
            candle_nn::rotary_emb::rope(&rot, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope_i(&rot, cos, sin)?
        };
        match pass {
            Some(p) => Tensor::cat(&[&rot, &p], rot.rank() - 1)?.contiguous(),
            None => Ok(rot),
        }
    }

    /// Run `tokens` (appended after the cached positions) and return the
    /// logits of the last one (`[vocab]`), or of every one when `all` (`[n, vocab]`).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all: bool,
    ) -> Result<Tensor, LlmError> {
        self.forward_with(tokens, cache, all, &[])
    }

    /// [`Transformer::forward`] with LoRA adapters applied to this call.
    pub fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all: bool,
        loras: &ActiveLoras,
    ) -> Result<Tensor, LlmError> {
        if tokens.is_empty() {
            return Err(LlmError::Runtime("no tokens to run".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            return Err(LlmError::Runtime(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        if cache.len + tokens.len() > cache.max {
            return Err(LlmError::ContextFull {
                needed: cache.len + tokens.len(),
                window: cache.max,
            });
        }
        self.forward_inner(tokens, cache, all, loras).map_err(cerr)
    }

    fn forward_inner(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        all: bool,
        loras: &ActiveLoras,
    ) -> CResult<Tensor> {
        let c = &self.cfg;
        let t = tokens.len();
        let start = cache.len;
        self.ensure_capacity(cache, start + t)?;
        // the fused step has no adapters: a call with some runs the generic path
        if let (1, Some(d), true, true) = (t, &self.decoder, self.fused_decode(), loras.is_empty())
        {
            let logits = d.step(c, tokens[0], &cache.k, &cache.v, start)?;
            cache.len = start + 1;
            let n = logits.len();
            let shape: &[usize] = if all { &[1, n] } else { &[n] };
            return Tensor::from_vec(logits, shape, &self.device);
        }
        // a prompt, when only its last logits are wanted: the fused prompt
        // (the one-token step's arithmetic, so the same cache and logits)
        if let (false, Some(d), true, true) =
            (all, &self.decoder, self.fused_decode(), loras.is_empty())
        {
            let logits = d.prefill(c, tokens, &cache.k, &cache.v, start)?;
            cache.len = start + t;
            let n = logits.len();
            return Tensor::from_vec(logits, n, &self.device);
        }
        let mut h = self.embed.lookup(tokens, &self.device)?.unsqueeze(0)?; // [1, t, d]
        if let Some(s) = self.embed_scale {
            h = (h * s)?;
        }
        let global = self.rope_for(false, start as i64, t)?;
        let local = if c.sliding_window.is_some() {
            Some(self.rope_for(true, start as i64, t)?)
        } else {
            None
        };
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let residual = h.clone();
            let x = rms(&h, &layer.attn_norm, c.rms_eps)?;
            let q = layer.q.forward_lora(&x, loras)?;
            let k = layer.k.forward_lora(&x, loras)?;
            let v = layer.v.forward_lora(&x, loras)?;
            let q = q.reshape((1, t, c.n_head, c.head_dim))?.transpose(1, 2)?;
            let k = k
                .reshape((1, t, c.n_head_kv, c.head_dim))?
                .transpose(1, 2)?;
            let v = v
                .reshape((1, t, c.n_head_kv, c.head_dim))?
                .transpose(1, 2)?
                .contiguous()?;
            let q = match &layer.q_norm {
                Some(w) => rms(&q, w, c.rms_eps)?,
                None => q,
            };
            let k = match &layer.k_norm {
                Some(w) => rms(&k, w, c.rms_eps)?,
                None => k,
            };
            let (cos, sin) = if layer.local {
                local.as_ref().unwrap_or(&global)
            } else {
                &global
            };
            let q = self.apply_rope(&q, cos, sin)?;
            let k = self.apply_rope(&k, cos, sin)?;
            cache.k[li].slice_set(&kv::store(&k, cache.kind)?, 2, start)?;
            cache.v[li].slice_set(&kv::store(&v, cache.kind)?, 2, start)?;
            let end = start + t;
            // keys visible to this chunk: a local layer sees the last `window` positions
            let first = match (layer.local, c.sliding_window) {
                (true, Some(w)) => (start + 1).saturating_sub(w),
                _ => 0,
            };
            let kl = end - first;
            if t == 1 && self.own {
                // one query row: attention straight over the cache, no copies
                let out = attend_one(&q, &cache.k[li], &cache.v[li], first, kl, c, scale)?;
                let mut o = layer.o.forward_lora(&out, loras)?;
                if let Some(w) = &layer.post_attn_norm {
                    o = rms(&o, w, c.rms_eps)?;
                }
                h = (residual + o)?;
                h = self.mlp(layer, h, loras)?;
                continue;
            }
            let out = self.attend(&q, cache, li, start, layer.local)?;
            let out = out
                .transpose(1, 2)?
                .reshape((1, t, c.n_head * c.head_dim))?;
            let mut o = layer.o.forward_lora(&out, loras)?;
            if let Some(w) = &layer.post_attn_norm {
                o = rms(&o, w, c.rms_eps)?;
            }
            h = (residual + o)?;
            h = self.mlp(layer, h, loras)?;
        }
        cache.len = start + t;
        let h = if all { h } else { h.narrow(1, t - 1, 1)? };
        let h = rms(&h, &self.out_norm, c.rms_eps)?;
        let logits = self.output.forward_lora(&h, loras)?.squeeze(0)?;
        if all {
            Ok(logits)
        } else {
            logits.squeeze(0)
        }
    }

    /// Attention of the rows of `q` (`[1, heads, t, hd]`, from cache
    /// position `start`) over layer `li`'s cache, as candle's path (a GPU's)
    /// runs it: the fused kernel where chosen (and the cache is f16 or
    /// f32), else matrix products. `[1, heads, t, hd]`.
    fn attend(
        &self,
        q: &Tensor,
        cache: &KvCache,
        li: usize,
        start: usize,
        local: bool,
    ) -> CResult<Tensor> {
        let c = &self.cfg;
        let window = if local { c.sliding_window } else { None };
        if self.attention() == AttentionKernel::Fused && cache.kind != KvCacheType::Q8_0 {
            let op = FlashAttention {
                start,
                window: window.unwrap_or(0),
                groups: c.n_head / c.n_head_kv,
                scale: (1.0 / (c.head_dim as f64).sqrt()) as f32,
                half: cache.kind == KvCacheType::F16,
            };
            return op.attend(q, &cache.k[li], &cache.v[li]);
        }
        attend_matmul(
            q,
            (&cache.k[li], &cache.v[li]),
            cache.kind,
            start,
            window,
            c,
        )
    }

    /// The feed-forward half of a block, residual included.
    fn mlp(&self, layer: &Layer, h: Tensor, loras: &ActiveLoras) -> CResult<Tensor> {
        let c = &self.cfg;
        let x = rms(&h, &layer.ffn_norm, c.rms_eps)?;
        let g = layer.gate.forward_lora(&x, loras)?;
        let g = if c.arch == Arch::Gemma3 {
            super::ops::gelu_tensor(&g)?
        } else {
            candle_nn::ops::silu(&g)?
        };
        let m = (g * layer.up.forward_lora(&x, loras)?)?;
        let mut m = layer.down.forward_lora(&m, loras)?;
        if let Some(w) = &layer.post_ffn_norm {
            m = rms(&m, w, c.rms_eps)?;
        }
        h + m
    }

    /// Run `tokens` after the cached positions in batches of `batch` and return
    /// the logits of the last one.
    pub fn prefill(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        batch: usize,
    ) -> Result<Tensor, LlmError> {
        self.prefill_with(tokens, cache, batch, &[])
    }

    /// [`Transformer::prefill`] with LoRA adapters applied.
    pub fn prefill_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        batch: usize,
        loras: &ActiveLoras,
    ) -> Result<Tensor, LlmError> {
        let mut last = None;
        for chunk in tokens.chunks(batch.max(1)) {
            last = Some(self.forward_with(chunk, cache, false, loras)?);
        }
        last.ok_or_else(|| LlmError::InvalidInput("no tokens to run".into()))
    }

    /// Drop cached positions `n_keep..n_keep+n_discard` and move the rest down,
    /// re-rotating their keys so they sit at their new positions (llama.cpp's
    /// context shift).
    pub fn shift(
        &self,
        cache: &mut KvCache,
        n_keep: usize,
        n_discard: usize,
    ) -> Result<(), LlmError> {
        self.shift_inner(cache, n_keep, n_discard).map_err(cerr)
    }

    fn shift_inner(&self, cache: &mut KvCache, n_keep: usize, n_discard: usize) -> CResult<()> {
        if n_discard == 0 || n_keep >= cache.len {
            return Ok(());
        }
        let n_discard = n_discard.min(cache.len - n_keep);
        let tail = cache.len - n_keep - n_discard;
        if tail > 0 {
            let global = self.rope_for(false, -(n_discard as i64), 1)?;
            let local = self.rope_for(true, -(n_discard as i64), 1)?;
            for (li, layer) in self.layers.iter().enumerate() {
                let (cos, sin) = if layer.local && self.cfg.sliding_window.is_some() {
                    &local
                } else {
                    &global
                };
                let cos = cos.broadcast_as((tail, cos.dim(1)?))?.contiguous()?;
                let sin = sin.broadcast_as((tail, sin.dim(1)?))?.contiguous()?;
                // re-rotated in f32, stored back in the cache's type
                let k = owned(&cache.k[li].narrow(2, n_keep + n_discard, tail)?)?;
                let k = kv::load(&k, cache.kind, self.cfg.head_dim)?;
                let k = kv::store(&self.apply_rope(&k, &cos, &sin)?, cache.kind)?;
                // a copy: with one key/value head the narrowed view is contiguous and
                // would share storage with the destination
                let v = owned(&cache.v[li].narrow(2, n_keep + n_discard, tail)?)?;
                cache.k[li].slice_set(&k, 2, n_keep)?;
                cache.v[li].slice_set(&v, 2, n_keep)?;
            }
        }
        cache.len = n_keep + tail;
        Ok(())
    }

    /// Logits `[vocab]` as a Vec.
    pub fn to_vec(logits: &Tensor) -> Result<Vec<f32>, LlmError> {
        logits
            .to_dtype(DType::F32)
            .and_then(|l| l.to_vec1::<f32>())
            .map_err(cerr)
    }
}
