//! Tiny GGUF models of each supported architecture, written deterministically
//! (seeded random weights, a real tokenizer in the metadata), for parity
//! tests against llama.cpp on the same files and for the context-shift tests.
//!
//! Vocabularies: the llama model carries a SentencePiece-style vocabulary (a
//! slice of Gemma 3's: its control and byte tokens, its single characters
//! below U+3000 and its 3,000 best-scored longer pieces, so the Gemma GGUF must be installed); the qwen models carry a GPT-2
//! byte-level BPE trained here on the sample corpus (400 merges).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use magpie_core::Rng;

/// Which tiny model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiny {
    /// llama layout, SentencePiece vocabulary, Q4_0 / Q6_K / Q8_0 weights.
    Llama,
    /// qwen2 layout (q/k/v biases), byte-level BPE, Q8_0 / Q5_K weights.
    Qwen2,
    /// qwen3 layout (q/k norms), byte-level BPE, Q4_K / Q6_K weights.
    Qwen3,
    /// chatglm layout (ChatGLM3 / GLM-4): q, k and v fused in one matrix with
    /// a bias, gate and up fused in a doubled `ffn_up`, RoPE on half of each
    /// head; a `chatglm-bpe` byte-level BPE with GLM's control tokens.
    ChatGlm,
    /// glm4 layout (GLM-4-0414): separate q/k/v with biases, a doubled
    /// `ffn_up`, sandwich norms, RoPE on half of each head; a `glm4` BPE.
    Glm4,
}

impl Tiny {
    /// All of them.
    pub const ALL: [Tiny; 5] = [
        Tiny::Llama,
        Tiny::Qwen2,
        Tiny::Qwen3,
        Tiny::ChatGlm,
        Tiny::Glm4,
    ];

    /// The GGUF architecture name.
    pub fn arch(&self) -> &'static str {
        match self {
            Tiny::Llama => "llama",
            Tiny::Qwen2 => "qwen2",
            Tiny::Qwen3 => "qwen3",
            Tiny::ChatGlm => "chatglm",
            Tiny::Glm4 => "glm4",
        }
    }

    fn glm(&self) -> bool {
        matches!(self, Tiny::ChatGlm | Tiny::Glm4)
    }

    /// File name for `layers` layers.
    pub fn file_name(&self, layers: usize) -> String {
        format!("tiny-{}-{layers}l.gguf", self.arch())
    }
}

const HIDDEN: usize = 256;
const FF: usize = 512;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;

fn random(rng: &mut Rng, shape: (usize, usize), scale: f32) -> Tensor {
    let n = shape.0 * shape.1;
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vector(rng: &mut Rng, n: usize, center: f32, spread: f32) -> QTensor {
    let v: Vec<f32> = (0..n)
        .map(|_| center + ((rng.next_f64() * 2.0 - 1.0) as f32) * spread)
        .collect();
    QTensor::quantize(
        &Tensor::from_vec(v, n, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap()
}

fn quant(t: &Tensor, d: GgmlDType) -> QTensor {
    QTensor::quantize(t, d).unwrap()
}

struct Vocab {
    tokens: Vec<String>,
    types: Vec<i32>,
    scores: Option<Vec<f32>>,
    merges: Option<Vec<String>>,
    bos: u32,
    eos: u32,
}

/// Gemma's control tokens, byte tokens and best-scored pieces.
fn spm_vocab(gemma: &Path) -> Vocab {
    let mut f = std::fs::File::open(gemma).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    let toks: Vec<String> = c.metadata["tokenizer.ggml.tokens"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_string().unwrap().clone())
        .collect();
    let scores: Vec<f32> = c.metadata["tokenizer.ggml.scores"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_f32().unwrap())
        .collect();
    let types: Vec<i32> = c.metadata["tokenizer.ggml.token_type"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_i32().unwrap())
        .collect();
    let mut out = Vocab {
        tokens: vec![],
        types: vec![],
        scores: Some(vec![]),
        merges: None,
        bos: 2,
        eos: 1,
    };
    let mut push = |t: &str, ty: i32, s: f32| {
        out.tokens.push(t.to_string());
        out.types.push(ty);
        out.scores.as_mut().unwrap().push(s);
    };
    // <pad> <eos> <bos> <unk> keep Gemma's ids 0..4
    for i in 0..4 {
        push(&toks[i], types[i], scores[i]);
    }
    for (i, t) in toks.iter().enumerate() {
        if types[i] == 6 {
            push(t, 6, scores[i]);
        }
    }
    // every single character below U+3000 (SentencePiece merges start from
    // characters, so they must exist as pieces; emoji and CJK go through byte
    // fallback), then the best-scored longer pieces
    let single = |t: &str| {
        let mut c = t.chars();
        matches!((c.next(), c.next()), (Some(ch), None) if (ch as u32) < 0x3000)
    };
    let mut normal: Vec<usize> = (0..toks.len()).filter(|&i| types[i] == 1).collect();
    normal.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    for &i in &normal {
        if single(&toks[i]) {
            push(&toks[i], 1, scores[i]);
        }
    }
    for &i in normal.iter().filter(|&&i| !single(&toks[i])).take(3000) {
        push(&toks[i], 1, scores[i]);
    }
    out
}

/// GPT-2's byte to printable-character map.
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut map = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            map[b as usize] = char::from_u32(256 + extra).unwrap();
            extra += 1;
        } else {
            map[b as usize] = char::from_u32(b).unwrap();
        }
    }
    printable.clear();
    map
}

/// A byte-level BPE trained on the sample corpus (most frequent pair first,
/// ties by the pair's text), deterministic.
fn bpe_vocab(corpus: &str, n_merges: usize, specials: &[&str]) -> Vocab {
    let bc = byte_chars();
    let mut words: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    let mut cur = String::new();
    let flush = |w: &mut String, words: &mut BTreeMap<Vec<String>, usize>| {
        if !w.is_empty() {
            let syms = w
                .bytes()
                .map(|b| bc[b as usize].to_string())
                .collect::<Vec<_>>();
            *words.entry(syms).or_insert(0) += 1;
            w.clear();
        }
    };
    for ch in corpus.chars() {
        if ch.is_whitespace() {
            flush(&mut cur, &mut words);
            cur.push(ch);
        } else {
            cur.push(ch);
        }
    }
    flush(&mut cur, &mut words);
    let mut tokens: Vec<String> = bc.iter().map(|c| c.to_string()).collect();
    let mut merges = Vec::new();
    let mut words: Vec<(Vec<String>, usize)> = words.into_iter().collect();
    for _ in 0..n_merges {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for (w, n) in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_insert(0) += n;
            }
        }
        let Some(best) = counts
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|x| x.0)
        else {
            break;
        };
        let merged = format!("{}{}", best.0, best.1);
        for (w, _) in words.iter_mut() {
            let mut i = 0;
            let mut nw = Vec::with_capacity(w.len());
            while i < w.len() {
                if i + 1 < w.len() && w[i] == best.0 && w[i + 1] == best.1 {
                    nw.push(merged.clone());
                    i += 2;
                } else {
                    nw.push(w[i].clone());
                    i += 1;
                }
            }
            *w = nw;
        }
        merges.push(format!("{} {}", best.0, best.1));
        if !tokens.contains(&merged) {
            tokens.push(merged);
        }
    }
    let mut types = vec![1; tokens.len()];
    let eos = tokens.len() as u32;
    for s in specials {
        tokens.push(s.to_string());
        types.push(3);
    }
    Vocab {
        tokens,
        types,
        scores: None,
        merges: Some(merges),
        bos: eos,
        eos,
    }
}

/// The text the BPE vocabulary is trained on.
pub fn bpe_corpus() -> String {
    let dir = crate::sample_corpus();
    let mut s = String::new();
    for f in ["guide/install.md", "guide/configuration.md", "faq.txt"] {
        s.push_str(&std::fs::read_to_string(dir.join(f)).unwrap());
    }
    s
}

/// Write the tiny `kind` model with `layers` layers to `path`.
pub fn write_tiny(kind: Tiny, layers: usize, gemma: &Path, path: &Path) {
    let vocab = match kind {
        Tiny::Llama => spm_vocab(gemma),
        k if k.glm() => bpe_vocab(&bpe_corpus(), 400, &GLM_SPECIALS),
        _ => bpe_vocab(
            &bpe_corpus(),
            400,
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        ),
    };
    let arch = kind.arch();
    let (wq, wk, wf): (GgmlDType, GgmlDType, GgmlDType) = match kind {
        Tiny::Llama => (GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q6K),
        Tiny::Qwen2 => (GgmlDType::Q8_0, GgmlDType::Q5K, GgmlDType::Q5K),
        Tiny::Qwen3 => (GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q4K),
        // the fused matrices are cut by rows: in place (Q4_0, Q8_0) and read (Q6_K)
        Tiny::ChatGlm => (GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q6K),
        Tiny::Glm4 => (GgmlDType::Q5_0, GgmlDType::Q4K, GgmlDType::Q8_0),
    };
    let mut rng = Rng::new(
        match kind {
            Tiny::Llama => 11,
            Tiny::Qwen2 => 22,
            Tiny::Qwen3 => 33,
            Tiny::ChatGlm => 44,
            Tiny::Glm4 => 55,
        } + layers as u64,
    );
    let n_vocab = vocab.tokens.len();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let s_in = 1.0 / (HIDDEN as f32).sqrt() * 1.7;
    tensors.push((
        "token_embd.weight".into(),
        quant(&random(&mut rng, (n_vocab, HIDDEN), 1.0), GgmlDType::Q8_0),
    ));
    for l in 0..layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        tensors.push((p("attn_norm.weight"), vector(&mut rng, HIDDEN, 1.0, 0.2)));
        if kind == Tiny::ChatGlm {
            let rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM;
            tensors.push((
                p("attn_qkv.weight"),
                quant(&random(&mut rng, (rows, HIDDEN), s_in), wq),
            ));
            tensors.push((p("attn_qkv.bias"), vector(&mut rng, rows, 0.0, 0.3)));
        } else {
            tensors.push((
                p("attn_q.weight"),
                quant(&random(&mut rng, (HEADS * HEAD_DIM, HIDDEN), s_in), wq),
            ));
            tensors.push((
                p("attn_k.weight"),
                quant(&random(&mut rng, (KV_HEADS * HEAD_DIM, HIDDEN), s_in), wk),
            ));
            tensors.push((
                p("attn_v.weight"),
                quant(&random(&mut rng, (KV_HEADS * HEAD_DIM, HIDDEN), s_in), wk),
            ));
        }
        if matches!(kind, Tiny::Qwen2 | Tiny::Glm4) {
            tensors.push((
                p("attn_q.bias"),
                vector(&mut rng, HEADS * HEAD_DIM, 0.0, 0.3),
            ));
            tensors.push((
                p("attn_k.bias"),
                vector(&mut rng, KV_HEADS * HEAD_DIM, 0.0, 0.3),
            ));
            tensors.push((
                p("attn_v.bias"),
                vector(&mut rng, KV_HEADS * HEAD_DIM, 0.0, 0.3),
            ));
        }
        if kind == Tiny::Qwen3 {
            tensors.push((
                p("attn_q_norm.weight"),
                vector(&mut rng, HEAD_DIM, 1.0, 0.2),
            ));
            tensors.push((
                p("attn_k_norm.weight"),
                vector(&mut rng, HEAD_DIM, 1.0, 0.2),
            ));
        }
        tensors.push((
            p("attn_output.weight"),
            quant(&random(&mut rng, (HIDDEN, HEADS * HEAD_DIM), s_in), wq),
        ));
        if kind == Tiny::Glm4 {
            tensors.push((
                p("post_attention_norm.weight"),
                vector(&mut rng, HIDDEN, 1.0, 0.2),
            ));
        }
        tensors.push((p("ffn_norm.weight"), vector(&mut rng, HIDDEN, 1.0, 0.2)));
        if kind.glm() {
            // gate and up in one matrix, gate first
            tensors.push((
                p("ffn_up.weight"),
                quant(&random(&mut rng, (2 * FF, HIDDEN), s_in), wf),
            ));
        } else {
            tensors.push((
                p("ffn_gate.weight"),
                quant(&random(&mut rng, (FF, HIDDEN), s_in), wf),
            ));
            tensors.push((
                p("ffn_up.weight"),
                quant(&random(&mut rng, (FF, HIDDEN), s_in), wf),
            ));
        }
        tensors.push((
            p("ffn_down.weight"),
            quant(
                &random(&mut rng, (HIDDEN, FF), 1.0 / (FF as f32).sqrt() * 1.7),
                wf,
            ),
        ));
        if kind == Tiny::Glm4 {
            tensors.push((
                p("post_ffw_norm.weight"),
                vector(&mut rng, HIDDEN, 1.0, 0.2),
            ));
        }
    }
    tensors.push((
        "output_norm.weight".into(),
        vector(&mut rng, HIDDEN, 1.0, 0.2),
    ));
    if kind != Tiny::Qwen3 {
        // qwen3 ties the output to the embedding
        tensors.push((
            "output.weight".into(),
            quant(
                &random(&mut rng, (n_vocab, HIDDEN), s_in * 4.0),
                GgmlDType::Q8_0,
            ),
        ));
    }
    let u = |v: usize| Value::U32(v as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(format!("tiny-{arch}"))),
        (format!("{arch}.context_length"), u(512)),
        (format!("{arch}.embedding_length"), u(HIDDEN)),
        (format!("{arch}.block_count"), u(layers)),
        (format!("{arch}.feed_forward_length"), u(FF)),
        (format!("{arch}.attention.head_count"), u(HEADS)),
        (format!("{arch}.attention.head_count_kv"), u(KV_HEADS)),
        (format!("{arch}.attention.key_length"), u(HEAD_DIM)),
        (format!("{arch}.attention.value_length"), u(HEAD_DIM)),
        (
            format!("{arch}.rope.dimension_count"),
            // the GLM family rotates half of each head
            u(if kind.glm() { HEAD_DIM / 2 } else { HEAD_DIM }),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-6),
        ),
        (
            format!("{arch}.rope.freq_base"),
            Value::F32(if kind == Tiny::Llama {
                10_000.0
            } else {
                1_000_000.0
            }),
        ),
        (
            "tokenizer.ggml.model".into(),
            Value::String(if kind == Tiny::Llama { "llama" } else { "gpt2" }.into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                vocab
                    .tokens
                    .iter()
                    .map(|t| Value::String(t.clone()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), u(vocab.bos as usize)),
        ("tokenizer.ggml.eos_token_id".into(), u(vocab.eos as usize)),
    ];
    if let Some(s) = &vocab.scores {
        md.push((
            "tokenizer.ggml.scores".into(),
            Value::Array(s.iter().map(|&x| Value::F32(x)).collect()),
        ));
        md.push(("tokenizer.ggml.unknown_token_id".into(), u(3)));
        md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)));
        md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(true)));
    }
    if let Some(m) = &vocab.merges {
        md.push((
            "tokenizer.ggml.merges".into(),
            Value::Array(m.iter().map(|t| Value::String(t.clone())).collect()),
        ));
        let pre = match kind {
            Tiny::ChatGlm => "chatglm-bpe",
            Tiny::Glm4 => "glm4",
            _ => "qwen2",
        };
        md.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
        md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(path).unwrap();
    let d = sha2::Sha256::digest(&bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// GLM's control tokens, `<|endoftext|>` (the end of text) first.
const GLM_SPECIALS: [&str; 7] = [
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// Prompts for the tiny models' parity fixtures (the GLM models' add one in
/// their chat format).
pub fn tiny_prompts(kind: Tiny) -> Vec<String> {
    let mut v = vec![
        "The magpie index keeps chunks in two stores.".into(),
        "Install docqa, then run the demo:\n  scripts/demo.sh --help".into(),
        "Ünïcödé and emoji 🐦 survive byte fallback.".into(),
        "configuration configuration configuration".repeat(8),
    ];
    if kind.glm() {
        v.push("[gMASK]<sop><|user|>\nHow do I install docqa? 喜鹊<|assistant|>\n".into());
    }
    v
}

/// A LoRA adapter for a tiny model, in llama.cpp's GGUF adapter format.
#[derive(Debug, Clone, Copy)]
pub struct TinyLora {
    /// Seed of its random factors.
    pub seed: u64,
    /// Rank of every pair.
    pub rank: usize,
    /// `adapter.lora.alpha` (`None`: left out, so the scale applies as is).
    pub alpha: Option<f32>,
    /// Type of the `lora_a` / `lora_b` tensors.
    pub dtype: GgmlDType,
    /// Adapt the output projection too.
    pub output: bool,
}

/// The matrices of the tiny `kind` model a LoRA adapter may adapt: (name,
/// rows, cols) of every layer's attention and MLP projections.
fn lora_targets(kind: Tiny, layers: usize) -> Vec<(String, usize, usize)> {
    let mut v = Vec::new();
    for l in 0..layers {
        let p = |s: &str| format!("blk.{l}.{s}.weight");
        if kind == Tiny::ChatGlm {
            v.push((p("attn_qkv"), (HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN));
        } else {
            v.push((p("attn_q"), HEADS * HEAD_DIM, HIDDEN));
            v.push((p("attn_k"), KV_HEADS * HEAD_DIM, HIDDEN));
            v.push((p("attn_v"), KV_HEADS * HEAD_DIM, HIDDEN));
        }
        v.push((p("attn_output"), HIDDEN, HEADS * HEAD_DIM));
        if kind.glm() {
            v.push((p("ffn_up"), 2 * FF, HIDDEN));
        } else {
            v.push((p("ffn_gate"), FF, HIDDEN));
            v.push((p("ffn_up"), FF, HIDDEN));
        }
        v.push((p("ffn_down"), HIDDEN, FF));
    }
    v
}

/// Write a LoRA adapter for the tiny `kind` model of `layers` layers (its
/// vocabulary size `n_vocab` when it adapts the output) to `path`.
pub fn write_lora(kind: Tiny, layers: usize, n_vocab: usize, spec: TinyLora, path: &Path) {
    let mut targets = lora_targets(kind, layers);
    if spec.output {
        targets.push(("output.weight".into(), n_vocab, HIDDEN));
    }
    write_lora_pairs(
        kind.arch(),
        &format!("tiny-{}-lora", kind.arch()),
        targets,
        spec,
        path,
    );
}

/// Write a LoRA adapter with random factors for any GGUF model at `base`
/// (every attention and MLP projection it has, and its output if `spec`
/// says so and it has one): for measuring what an adapter costs on a real
/// model, whose trained weights do not change the arithmetic.
pub fn write_lora_for(base: &Path, spec: TinyLora, path: &Path) {
    let mut f = std::fs::File::open(base).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(a)) => a.clone(),
        _ => panic!("{} names no architecture", base.display()),
    };
    let kinds = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_qkv",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    let mut targets: Vec<(String, usize, usize)> = content
        .tensor_infos
        .iter()
        .filter(|(name, _)| {
            let kind = name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(_, k)| k.strip_suffix(".weight"));
            kind.is_some_and(|k| kinds.contains(&k)) || (spec.output && *name == "output.weight")
        })
        .map(|(name, info)| {
            let d = info.shape.dims();
            (name.clone(), d[0], d[1])
        })
        .collect();
    targets.sort();
    write_lora_pairs(&arch, "random-lora", targets, spec, path);
}

/// Write the adapter of `arch` with a random pair for each (name, rows, cols).
fn write_lora_pairs(
    arch: &str,
    title: &str,
    targets: Vec<(String, usize, usize)>,
    spec: TinyLora,
    path: &Path,
) {
    let mut rng = Rng::new(spec.seed);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, rows, cols) in targets {
        // A·x is of the size of a projection; B brings it back at about a
        // third of the base weights' size, so the adapted model differs
        let a = random(
            &mut rng,
            (spec.rank, cols),
            1.0 / (cols as f32).sqrt() * 1.7,
        );
        let b = random(&mut rng, (rows, spec.rank), 0.6 / (spec.rank as f32).sqrt());
        tensors.push((format!("{name}.lora_a"), quant(&a, spec.dtype)));
        tensors.push((format!("{name}.lora_b"), quant(&b, spec.dtype)));
    }
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("adapter".into())),
        ("adapter.type".into(), Value::String("lora".into())),
        ("general.name".into(), Value::String(title.into())),
    ];
    if let Some(a) = spec.alpha {
        md.push(("adapter.lora.alpha".into(), Value::F32(a)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

/// The two adapters the LoRA tests use: `A` (rank 8, f16, alpha 16, on the
/// attention and MLP projections) and `B` (rank 32, Q8_0, no alpha, on those
/// and the output projection).
pub const LORA_A: TinyLora = TinyLora {
    seed: 101,
    rank: 8,
    alpha: Some(16.0),
    dtype: GgmlDType::F16,
    output: false,
};
/// See [`LORA_A`].
pub const LORA_B: TinyLora = TinyLora {
    seed: 202,
    rank: 32,
    alpha: None,
    dtype: GgmlDType::Q8_0,
    output: true,
};

/// Write the tiny `kind` model of `layers` layers into `dir` (named as
/// [`Tiny::file_name`] names it; the Gemma GGUF must be installed) and
/// return its path.
pub fn tiny_in(kind: Tiny, layers: usize, dir: &Path) -> std::path::PathBuf {
    let p = dir.join(kind.file_name(layers));
    write_tiny(kind, layers, &crate::gemma_path(), &p);
    p
}

/// The vocabulary size of the tiny `kind` model.
pub fn tiny_vocab_size(kind: Tiny, gemma: &Path) -> usize {
    match kind {
        Tiny::Llama => spm_vocab(gemma).tokens.len(),
        k if k.glm() => bpe_vocab(&bpe_corpus(), 400, &GLM_SPECIALS).tokens.len(),
        _ => bpe_vocab(
            &bpe_corpus(),
            400,
            &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        )
        .tokens
        .len(),
    }
}
