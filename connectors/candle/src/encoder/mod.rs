//! magpie's own forward pass for BERT-family sentence encoders
//! (all-MiniLM-L6-v2, bge-small, e5-small and the other models with BERT's
//! layout, and the XLM-RoBERTa family: bge-m3, multilingual-e5,
//! paraphrase-multilingual) on the CPU.
//!
//! What it does differently from a general tensor library:
//! - the sequences of a batch are concatenated, never padded: the linear
//!   layers run over exactly the real tokens, attention runs per (sequence,
//!   head) on that sequence alone;
//! - weights are packed once at load for the matrix kernel ([`gemm`]); Q, K
//!   and V are one product (with 1/√d folded into Q's weights);
//! - bias, GELU, the residual and layer norm are applied to each block of
//!   output rows right after it is computed;
//! - buffers live in a workspace reused across layers and calls.

/// `$f::<R>(args…)` for a micro-kernel generic over its row count `R`: the
/// counts listed before `;` each get their own instance, and any other count
/// (the full tile) the one after it.
macro_rules! by_rows {
    ($f:ident, $rows:expr, [$($r:literal),+; $full:literal], $args:tt) => {
        match $rows {
            $($r => $f::<$r> $args,)+
            _ => $f::<$full> $args,
        }
    };
}

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_amx;
pub mod gemm;
pub mod int8;
mod kernels;
pub mod math;

use std::collections::HashMap;
use std::sync::Mutex;

use gemm::{Epilogue, Isa, PackedLinear};

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean over the sentence's tokens (all-MiniLM, e5).
    Mean,
    /// The first token's vector (bge).
    Cls,
}

/// How to build an encoder.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncoderOptions {
    /// Cap on the kernel family (`None`: the best this CPU has).
    pub kernels: Option<Isa>,
    /// Linear layers in int8 (per-channel weight scales, per-row activation
    /// scales) where the CPU has AVX-512 VNNI; f32 elsewhere.
    pub int8: bool,
}

/// The parts of a BERT `config.json` the forward pass needs.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// Width of the token vectors.
    pub hidden: usize,
    /// Attention heads per layer.
    pub heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate: usize,
    /// Layers.
    pub layers: usize,
    /// Layer norm epsilon.
    pub eps: f32,
    /// Positions a sequence may use (for RoBERTa models, the table's rows
    /// after the padding offset).
    pub max_positions: usize,
    /// Rows of the position table before position 0: RoBERTa models number
    /// positions from the padding index + 1 (2 for XLM-R), BERT from 0.
    pub position_offset: usize,
}

impl EncoderConfig {
    /// Read from a parsed `config.json`; `None` (with the reason) for a model
    /// this pass does not cover, which then runs on candle's generic BERT.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let get = |k: &str| {
            v[k].as_u64()
                .map(|x| x as usize)
                .ok_or_else(|| format!("config.json has no {k}"))
        };
        let act = v["hidden_act"].as_str().unwrap_or("gelu");
        if act != "gelu" {
            return Err(format!(
                "activation {act:?} (only the exact \"gelu\" is built in)"
            ));
        }
        let pos = v["position_embedding_type"].as_str().unwrap_or("absolute");
        if pos != "absolute" {
            return Err(format!("position embeddings {pos:?}"));
        }
        let position_offset = if is_roberta(v) {
            v["pad_token_id"].as_u64().unwrap_or(1) as usize + 1
        } else {
            0
        };
        let rows = get("max_position_embeddings")?;
        if rows <= position_offset {
            return Err(format!(
                "{rows} position embeddings leave none after the padding offset {position_offset}"
            ));
        }
        let cfg = Self {
            hidden: get("hidden_size")?,
            heads: get("num_attention_heads")?,
            intermediate: get("intermediate_size")?,
            layers: get("num_hidden_layers")?,
            eps: v["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32,
            max_positions: rows - position_offset,
            position_offset,
        };
        if cfg.heads == 0 || !cfg.hidden.is_multiple_of(cfg.heads) {
            return Err(format!(
                "{} heads do not divide hidden size {}",
                cfg.heads, cfg.hidden
            ));
        }
        Ok(cfg)
    }
}

/// True for the RoBERTa layout (XLM-R, CamemBERT): positions offset by the
/// padding index, weights under `roberta.`.
pub fn is_roberta(config: &serde_json::Value) -> bool {
    let ty = config["model_type"].as_str().unwrap_or_default();
    matches!(ty, "roberta" | "xlm-roberta" | "camembert")
        || config["architectures"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x.as_str().is_some_and(|s| s.contains("Roberta")))
        })
}

struct Norm {
    gain: Vec<f32>,
    shift: Vec<f32>,
}

impl Norm {
    /// The epilogue that adds bias and `residual`, then applies this norm.
    fn after<'a>(&'a self, residual: &'a [f32], eps: f32) -> Epilogue<'a> {
        Epilogue::BiasResidualNorm {
            residual,
            gain: &self.gain,
            shift: &self.shift,
            eps,
        }
    }
}

struct Layer {
    qkv: PackedLinear,
    attn_out: PackedLinear,
    norm1: Norm,
    ffn_in: PackedLinear,
    ffn_out: PackedLinear,
    norm2: Norm,
}

/// Reused buffers (grown, never shrunk below what a call needed).
#[derive(Default)]
struct Workspace {
    x: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    h: Vec<f32>,
    ffn: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

fn take(t: &mut Tensors, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
    let (s, v) = t
        .remove(name)
        .ok_or_else(|| format!("model.safetensors has no {name}"))?;
    if s != shape {
        return Err(format!("{name} has shape {s:?}, expected {shape:?}"));
    }
    Ok(v)
}

/// True when attention with head width `d` can run in bf16 on AMX here.
fn amx_attention(d: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    return attention_amx::usable(d);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = d;
        false
    }
}

/// A loaded encoder.
pub struct BertEncoder {
    cfg: EncoderConfig,
    isa: Isa,
    word: Vec<f32>,
    vocab: usize,
    /// Position embedding plus token type 0, per position.
    position: Vec<f32>,
    emb_norm: Norm,
    layers: Vec<Layer>,
    /// Attention in bf16 on AMX tiles (the int8 mode, where the CPU has it).
    bf16_attention: bool,
    pool: Mutex<Vec<Workspace>>,
}

impl std::fmt::Debug for BertEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEncoder")
            .field("hidden", &self.cfg.hidden)
            .field("layers", &self.cfg.layers)
            .field("isa", &self.isa)
            .finish()
    }
}

/// Named f32 tensors with their shapes.
pub type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

impl BertEncoder {
    /// Build from a model's tensors (names as in a BERT or RoBERTa
    /// `model.safetensors`, with or without the `bert.`/`roberta.` prefix),
    /// with `opts` (kernel family, precision).
    pub fn new(
        cfg: EncoderConfig,
        mut tensors: Tensors,
        opts: EncoderOptions,
    ) -> Result<Self, String> {
        let isa = Isa::detect(opts.kernels);
        let int8 = opts.int8;
        let mut t: Tensors = tensors
            .drain()
            .map(|(k, v)| {
                let bare = k
                    .strip_prefix("bert.")
                    .or_else(|| k.strip_prefix("roberta."))
                    .map(str::to_string);
                (bare.unwrap_or(k), v)
            })
            .collect();
        let (h, i) = (cfg.hidden, cfg.intermediate);
        let word_shape = t
            .get("embeddings.word_embeddings.weight")
            .map(|(s, _)| s.clone())
            .ok_or("model.safetensors has no embeddings.word_embeddings.weight")?;
        if word_shape.len() != 2 || word_shape[1] != h {
            return Err(format!("word embeddings have shape {word_shape:?}"));
        }
        let vocab = word_shape[0];
        let word = take(&mut t, "embeddings.word_embeddings.weight", &[vocab, h])?;
        let mut position = take(
            &mut t,
            "embeddings.position_embeddings.weight",
            &[cfg.max_positions + cfg.position_offset, h],
        )?;
        position.drain(..cfg.position_offset * h);
        let types = t
            .remove("embeddings.token_type_embeddings.weight")
            .map(|(_, v)| v)
            .unwrap_or_else(|| vec![0.0; h]);
        for row in position.chunks_exact_mut(h) {
            for (p, ty) in row.iter_mut().zip(&types[..h]) {
                *p += ty;
            }
        }
        let norm = |t: &mut Tensors, prefix: &str| -> Result<Norm, String> {
            Ok(Norm {
                gain: take(t, &format!("{prefix}.weight"), &[h])?,
                shift: take(t, &format!("{prefix}.bias"), &[h])?,
            })
        };
        let lin =
            |t: &mut Tensors, name: &str, n: usize, k: usize| -> Result<PackedLinear, String> {
                let w = take(t, &format!("{name}.weight"), &[n, k])?;
                let b = take(t, &format!("{name}.bias"), &[n])?;
                Ok(PackedLinear::new(&w, &b, n, k, isa, int8))
            };
        let emb_norm = norm(&mut t, "embeddings.LayerNorm")?;
        let d = h / cfg.heads;
        let scale = 1.0 / (d as f32).sqrt();
        let mut layers = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("encoder.layer.{l}");
            let mut w = Vec::with_capacity(3 * h * h);
            let mut b = Vec::with_capacity(3 * h);
            for (part, s) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                let wp = take(
                    &mut t,
                    &format!("{p}.attention.self.{part}.weight"),
                    &[h, h],
                )?;
                let bp = take(&mut t, &format!("{p}.attention.self.{part}.bias"), &[h])?;
                w.extend(wp.iter().map(|x| x * s));
                b.extend(bp.iter().map(|x| x * s));
            }
            layers.push(Layer {
                qkv: PackedLinear::new(&w, &b, 3 * h, h, isa, int8),
                attn_out: lin(&mut t, &format!("{p}.attention.output.dense"), h, h)?,
                norm1: norm(&mut t, &format!("{p}.attention.output.LayerNorm"))?,
                ffn_in: lin(&mut t, &format!("{p}.intermediate.dense"), i, h)?,
                ffn_out: lin(&mut t, &format!("{p}.output.dense"), h, i)?,
                norm2: norm(&mut t, &format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            cfg,
            isa,
            word,
            vocab,
            position,
            emb_norm,
            bf16_attention: layers.first().is_some_and(|l| l.qkv.is_amx()) && amx_attention(d),
            layers,
            pool: Mutex::new(Vec::new()),
        })
    }

    /// The kernel family in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// True when the linear layers run in int8.
    pub fn is_int8(&self) -> bool {
        self.layers.first().is_some_and(|l| l.qkv.is_int8())
    }

    /// True when the int8 products run on AMX tiles.
    pub fn is_amx(&self) -> bool {
        self.layers.first().is_some_and(|l| l.qkv.is_amx())
    }

    /// The int8 kernel the linear layers run on (`None`: f32).
    pub fn int8_isa(&self) -> Option<int8::Int8Isa> {
        self.layers.first().and_then(|l| l.qkv.int8_isa())
    }

    /// Width of the output vectors.
    pub fn hidden(&self) -> usize {
        self.cfg.hidden
    }

    /// Longest sequence the position table covers.
    pub fn max_positions(&self) -> usize {
        self.cfg.max_positions
    }

    /// Sentence vectors, L2-normalised, for sequences of token ids (special
    /// tokens included, each at most [`Self::max_positions`] long). Ids past
    /// the vocabulary read as id 0 (`[PAD]`) rather than failing.
    pub fn encode(&self, seqs: &[&[u32]], pooling: Pooling) -> Vec<Vec<f32>> {
        if seqs.is_empty() {
            return Vec::new();
        }
        let mut ws = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_default();
        let out = self.run(seqs, pooling, &mut ws);
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(ws);
        out
    }

    fn run(&self, seqs: &[&[u32]], pooling: Pooling, ws: &mut Workspace) -> Vec<Vec<f32>> {
        let h = self.cfg.hidden;
        let mut starts = Vec::with_capacity(seqs.len() + 1);
        let mut total = 0;
        for s in seqs {
            starts.push(total);
            total += s.len().min(self.cfg.max_positions);
        }
        starts.push(total);
        grow(&mut ws.x, total * h);
        grow(&mut ws.qkv, total * 3 * h);
        grow(&mut ws.ctx, total * h);
        grow(&mut ws.h, total * h);
        grow(&mut ws.ffn, total * self.cfg.intermediate);
        let Workspace {
            x,
            qkv,
            ctx,
            h: hid,
            ffn,
        } = ws;
        // Embeddings: word + position + type 0, then layer norm.
        for (s, ids) in seqs.iter().enumerate() {
            for (pos, &id) in ids.iter().take(self.cfg.max_positions).enumerate() {
                let id = if (id as usize) < self.vocab {
                    id as usize
                } else {
                    0
                };
                let row = &mut x[(starts[s] + pos) * h..][..h];
                math::add2(
                    row,
                    &self.word[id * h..][..h],
                    &self.position[pos * h..][..h],
                );
                math::layer_norm(row, &self.emb_norm.gain, &self.emb_norm.shift, self.cfg.eps);
            }
        }
        for layer in &self.layers {
            layer.qkv.forward(x, total, qkv, Epilogue::Bias);
            attention::attend(
                qkv,
                ctx,
                &starts,
                h,
                self.cfg.heads,
                self.isa,
                self.bf16_attention,
            );
            let norm1 = layer.norm1.after(x, self.cfg.eps);
            layer.attn_out.forward(ctx, total, hid, norm1);
            layer.ffn_in.forward(hid, total, ffn, Epilogue::BiasGelu);
            let norm2 = layer.norm2.after(hid, self.cfg.eps);
            layer.ffn_out.forward(ffn, total, x, norm2);
        }
        (0..seqs.len())
            .map(|s| {
                let (t0, t1) = (starts[s], starts[s + 1]);
                let mut v = vec![0f32; h];
                if t1 > t0 {
                    match pooling {
                        Pooling::Cls => v.copy_from_slice(&x[t0 * h..][..h]),
                        Pooling::Mean => {
                            for t in t0..t1 {
                                for (a, b) in v.iter_mut().zip(&x[t * h..][..h]) {
                                    *a += b;
                                }
                            }
                            let inv = 1.0 / (t1 - t0) as f32;
                            v.iter_mut().for_each(|a| *a *= inv);
                        }
                    }
                }
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
                v
            })
            .collect()
    }
}
