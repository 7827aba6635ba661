//! Models with random weights, written where the check runs (a realistic-size
//! one would not travel): a GGUF transformer of any size in the llama or
//! gemma3 layout, and a BERT of MiniLM's shape. Speed does not depend on
//! trained weights; parity compares two devices on the same file.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{ggml_file::qtensor_from_ggml, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use magpie_core::Rng;

/// The shape of a random transformer.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// `llama` or `gemma3`.
    pub arch: &'static str,
    pub hidden: usize,
    pub ff: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    /// Type of the layers' matrices.
    pub weights: GgmlDType,
    /// Type of the (tied) embedding and output matrix.
    pub embedding: GgmlDType,
}

impl Shape {
    /// Llama 3.2 1B's shape (1.24 B parameters), Q4_K with a Q6_K embedding,
    /// as a Q4_K_M file has them.
    pub fn llama_1b() -> Self {
        Shape {
            arch: "llama",
            hidden: 2048,
            ff: 8192,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
            vocab: 128_256,
            weights: GgmlDType::Q4K,
            embedding: GgmlDType::Q6K,
        }
    }

    /// A small llama for the CPU's dry run of the check.
    pub fn llama_small() -> Self {
        Shape {
            hidden: 512,
            ff: 1536,
            layers: 4,
            heads: 8,
            kv_heads: 2,
            vocab: 32_000,
            ..Self::llama_1b()
        }
    }

    /// A tiny gemma3 (sliding window of 16 on every other layer), for parity.
    pub fn gemma3_tiny() -> Self {
        Shape {
            arch: "gemma3",
            hidden: 256,
            ff: 512,
            layers: 2,
            heads: 4,
            kv_heads: 1,
            head_dim: 64,
            vocab: 0, // the donor's
            weights: GgmlDType::Q8_0,
            embedding: GgmlDType::Q8_0,
        }
    }

    /// Parameters of the matrices a token passes through (the embedding
    /// counted once, as the output projection).
    pub fn parameters(&self) -> usize {
        let (h, q, kv) = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
        );
        self.layers * (2 * h * q + 2 * h * kv + 3 * h * self.ff) + self.vocab * h
    }
}

/// `rows × cols` of `ty` with random quants and small scales (so activations
/// stay finite through many layers).
fn random_matrix(rng: &mut Rng, ty: GgmlDType, rows: usize, cols: usize) -> QTensor {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let mut bytes = vec![0u8; rows * cols / bs * ts];
    for c in bytes.chunks_mut(8) {
        let r = rng.next_u64().to_le_bytes();
        c.copy_from_slice(&r[..c.len()]);
    }
    let scale = |x: f32| half::f16::from_f32(x).to_le_bytes();
    for b in bytes.chunks_exact_mut(ts) {
        match ty {
            GgmlDType::Q4K | GgmlDType::Q5K => {
                b[0..2].copy_from_slice(&scale(2e-4));
                b[2..4].copy_from_slice(&scale(1e-4));
            }
            GgmlDType::Q6K => b[ts - 2..].copy_from_slice(&scale(1e-3)),
            GgmlDType::Q8_0 | GgmlDType::Q4_0 | GgmlDType::Q5_0 => {
                b[0..2].copy_from_slice(&scale(2e-3))
            }
            other => panic!("no random writer for {other:?}"),
        }
    }
    qtensor_from_ggml(ty, &bytes, vec![rows, cols], &Device::Cpu).expect("random blocks")
}

fn norm(rng: &mut Rng, n: usize) -> QTensor {
    let v: Vec<f32> = (0..n)
        .map(|_| 1.0 + (rng.next_f64() as f32 - 0.5) * 0.2)
        .collect();
    QTensor::quantize(
        &Tensor::from_vec(v, n, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap()
}

/// Write a random model of `shape` to `path`, with the vocabulary of
/// `donor` (a GGUF file with a SentencePiece vocabulary) padded with unused
/// control tokens up to `shape.vocab`.
pub fn write_transformer(shape: &Shape, donor: &Path, path: &Path, seed: u64) {
    let mut f = std::fs::File::open(donor).expect("donor model");
    let donor_md = gguf_file::Content::read(&mut f)
        .expect("donor GGUF")
        .metadata;
    let list = |k: &str| match donor_md.get(k) {
        Some(Value::Array(v)) => v.clone(),
        _ => panic!("the donor has no {k}"),
    };
    let (mut tokens, mut types, mut scores) = (
        list("tokenizer.ggml.tokens"),
        list("tokenizer.ggml.token_type"),
        list("tokenizer.ggml.scores"),
    );
    let vocab = shape.vocab.max(tokens.len());
    for i in tokens.len()..vocab {
        tokens.push(Value::String(format!("<unused{i}>")));
        types.push(Value::I32(3));
        scores.push(Value::F32(-1e9));
    }
    let mut rng = Rng::new(seed);
    let (h, q, kv) = (
        shape.hidden,
        shape.heads * shape.head_dim,
        shape.kv_heads * shape.head_dim,
    );
    let gemma = shape.arch == "gemma3";
    let mut tensors: Vec<(String, QTensor)> = vec![(
        "token_embd.weight".into(),
        random_matrix(&mut rng, shape.embedding, vocab, h),
    )];
    for l in 0..shape.layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        let w = shape.weights;
        tensors.push((p("attn_norm.weight"), norm(&mut rng, h)));
        tensors.push((p("attn_q.weight"), random_matrix(&mut rng, w, q, h)));
        tensors.push((p("attn_k.weight"), random_matrix(&mut rng, w, kv, h)));
        tensors.push((p("attn_v.weight"), random_matrix(&mut rng, w, kv, h)));
        tensors.push((p("attn_output.weight"), random_matrix(&mut rng, w, h, q)));
        tensors.push((p("ffn_norm.weight"), norm(&mut rng, h)));
        tensors.push((
            p("ffn_gate.weight"),
            random_matrix(&mut rng, w, shape.ff, h),
        ));
        tensors.push((p("ffn_up.weight"), random_matrix(&mut rng, w, shape.ff, h)));
        tensors.push((
            p("ffn_down.weight"),
            random_matrix(&mut rng, w, h, shape.ff),
        ));
        if gemma {
            tensors.push((p("attn_q_norm.weight"), norm(&mut rng, shape.head_dim)));
            tensors.push((p("attn_k_norm.weight"), norm(&mut rng, shape.head_dim)));
            tensors.push((p("post_attention_norm.weight"), norm(&mut rng, h)));
            tensors.push((p("post_ffw_norm.weight"), norm(&mut rng, h)));
        }
    }
    tensors.push(("output_norm.weight".into(), norm(&mut rng, h)));
    let a = shape.arch;
    let u = |v: usize| Value::U32(v as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(a.into())),
        ("general.name".into(), Value::String(format!("random-{a}"))),
        (format!("{a}.context_length"), u(4096)),
        (format!("{a}.embedding_length"), u(h)),
        (format!("{a}.block_count"), u(shape.layers)),
        (format!("{a}.feed_forward_length"), u(shape.ff)),
        (format!("{a}.attention.head_count"), u(shape.heads)),
        (format!("{a}.attention.head_count_kv"), u(shape.kv_heads)),
        (format!("{a}.attention.key_length"), u(shape.head_dim)),
        (format!("{a}.attention.value_length"), u(shape.head_dim)),
        (format!("{a}.rope.dimension_count"), u(shape.head_dim)),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(500_000.0)),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.scores".into(), Value::Array(scores)),
    ];
    if gemma {
        md.push((format!("{a}.attention.sliding_window"), u(16)));
        md.push((format!("{a}.attention.sliding_window_pattern"), u(2)));
    }
    for k in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.add_space_prefix",
    ] {
        if let Some(v) = donor_md.get(k) {
            md.push((k.into(), v.clone()));
        }
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("model file"));
    gguf_file::write(&mut out, &md_refs, &t_refs).expect("write GGUF");
}

/// A BERT with random weights in `dir`, shaped by `dir/config.json` (MiniLM's
/// files travel without their weights).
pub fn write_bert(dir: &Path, seed: u64) {
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).expect("config.json"))
            .expect("config.json");
    let n = |k: &str| cfg[k].as_u64().expect(k) as usize;
    let (h, ff, layers) = (
        n("hidden_size"),
        n("intermediate_size"),
        n("num_hidden_layers"),
    );
    let mut rng = Rng::new(seed);
    let mut t = std::collections::HashMap::new();
    let mut put = |name: String, shape: &[usize], spread: f32, center: f32| {
        let len: usize = shape.iter().product();
        let v: Vec<f32> = (0..len)
            .map(|_| center + (rng.next_f64() as f32 * 2.0 - 1.0) * spread)
            .collect();
        let x = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
        t.insert(name, x.to_dtype(DType::F32).unwrap());
    };
    let e = "embeddings";
    put(
        format!("{e}.word_embeddings.weight"),
        &[n("vocab_size"), h],
        0.05,
        0.0,
    );
    put(
        format!("{e}.position_embeddings.weight"),
        &[n("max_position_embeddings"), h],
        0.05,
        0.0,
    );
    put(
        format!("{e}.token_type_embeddings.weight"),
        &[n("type_vocab_size"), h],
        0.05,
        0.0,
    );
    put(format!("{e}.LayerNorm.weight"), &[h], 0.1, 1.0);
    put(format!("{e}.LayerNorm.bias"), &[h], 0.05, 0.0);
    let s_h = 1.7 / (h as f32).sqrt();
    let s_ff = 1.7 / (ff as f32).sqrt();
    for l in 0..layers {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        for m in ["query", "key", "value"] {
            put(p(&format!("attention.self.{m}.weight")), &[h, h], s_h, 0.0);
            put(p(&format!("attention.self.{m}.bias")), &[h], 0.02, 0.0);
        }
        put(p("attention.output.dense.weight"), &[h, h], s_h, 0.0);
        put(p("attention.output.dense.bias"), &[h], 0.02, 0.0);
        put(p("attention.output.LayerNorm.weight"), &[h], 0.1, 1.0);
        put(p("attention.output.LayerNorm.bias"), &[h], 0.05, 0.0);
        put(p("intermediate.dense.weight"), &[ff, h], s_h, 0.0);
        put(p("intermediate.dense.bias"), &[ff], 0.02, 0.0);
        put(p("output.dense.weight"), &[h, ff], s_ff, 0.0);
        put(p("output.dense.bias"), &[h], 0.02, 0.0);
        put(p("output.LayerNorm.weight"), &[h], 0.1, 1.0);
        put(p("output.LayerNorm.bias"), &[h], 0.05, 0.0);
    }
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).expect("model.safetensors");
}
