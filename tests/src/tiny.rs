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
}

impl Tiny {
    /// All of them.
    pub const ALL: [Tiny; 3] = [Tiny::Llama, Tiny::Qwen2, Tiny::Qwen3];

    /// The GGUF architecture name.
    pub fn arch(&self) -> &'static str {
        match self {
            Tiny::Llama => "llama",
            Tiny::Qwen2 => "qwen2",
            Tiny::Qwen3 => "qwen3",
        }
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
fn bpe_vocab(corpus: &str, n_merges: usize) -> Vocab {
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
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(s.into());
        types.push(3);
    }
    let eos = (tokens.len() - 3) as u32;
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
        _ => bpe_vocab(&bpe_corpus(), 400),
    };
    let arch = kind.arch();
    let (wq, wk, wf): (GgmlDType, GgmlDType, GgmlDType) = match kind {
        Tiny::Llama => (GgmlDType::Q4_0, GgmlDType::Q8_0, GgmlDType::Q6K),
        Tiny::Qwen2 => (GgmlDType::Q8_0, GgmlDType::Q5K, GgmlDType::Q5K),
        Tiny::Qwen3 => (GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q4K),
    };
    let mut rng = Rng::new(
        match kind {
            Tiny::Llama => 11,
            Tiny::Qwen2 => 22,
            Tiny::Qwen3 => 33,
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
        if kind == Tiny::Qwen2 {
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
        tensors.push((p("ffn_norm.weight"), vector(&mut rng, HIDDEN, 1.0, 0.2)));
        tensors.push((
            p("ffn_gate.weight"),
            quant(&random(&mut rng, (FF, HIDDEN), s_in), wf),
        ));
        tensors.push((
            p("ffn_up.weight"),
            quant(&random(&mut rng, (FF, HIDDEN), s_in), wf),
        ));
        tensors.push((
            p("ffn_down.weight"),
            quant(
                &random(&mut rng, (HIDDEN, FF), 1.0 / (FF as f32).sqrt() * 1.7),
                wf,
            ),
        ));
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
        (format!("{arch}.rope.dimension_count"), u(HEAD_DIM)),
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
        md.push(("tokenizer.ggml.pre".into(), Value::String("qwen2".into())));
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

/// Prompts for the tiny models' parity fixtures.
pub fn tiny_prompts() -> Vec<String> {
    vec![
        "The magpie index keeps chunks in two stores.".into(),
        "Install docqa, then run the demo:\n  scripts/demo.sh --help".into(),
        "Ünïcödé and emoji 🐦 survive byte fallback.".into(),
        "configuration configuration configuration".repeat(8),
    ]
}
