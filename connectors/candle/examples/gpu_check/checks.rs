//! The three checks: parity of a device against the CPU on one model, the
//! LLM's speed on one model, and the embedder's speed and agreement.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use magpie_candle::llm::model::Transformer;
use magpie_candle::llm::AttentionKernel;
use magpie_candle::{BertEmbedder, LlmOptions, LocalLlm};
use serde::Serialize;

type Res<T> = Result<T, String>;

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// On the CPU with magpie's kernels (`attention` None), or on the device
/// under test with candle's (a GPU's only path; on the CPU the dry run takes
/// it too), attending as `attention` says.
fn load(path: &Path, dev: &Device, attention: Option<AttentionKernel>) -> Res<LocalLlm> {
    LocalLlm::load(
        path,
        LlmOptions {
            device: Some(dev.clone()),
            candle_kernels: attention.is_some(),
            attention,
            ..Default::default()
        },
    )
    .map_err(e)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Greedy continuation: the prompt in one pass, then `n` one-token steps;
/// each pick with its lead over the runner-up.
fn greedy(llm: &LocalLlm, prompt: &[u32], n: usize) -> Res<Vec<(u32, f32)>> {
    let m = llm.model();
    let mut cache = m.new_cache(prompt.len() + n + 1);
    let mut logits =
        Transformer::to_vec(&m.prefill(prompt, &mut cache, 512).map_err(e)?).map_err(e)?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = magpie_core::argmax(&logits);
        let best = logits[t as usize];
        let second = logits
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != t as usize)
            .fold(f32::MIN, |m, (_, v)| m.max(*v));
        out.push((t, best - second));
        logits = Transformer::to_vec(&m.forward(&[t], &mut cache, false).map_err(e)?).map_err(e)?;
    }
    Ok(out)
}

/// One prompt of a parity check.
#[derive(Debug, Serialize)]
pub struct Case {
    pub tokens: usize,
    pub max_abs_diff: f32,
    /// The largest CPU logit, for scale.
    pub max_logit: f32,
    pub top1_same: bool,
    /// The CPU's margin between its first and second choice.
    pub cpu_margin: f32,
    pub greedy_same: usize,
    pub greedy_total: usize,
    /// Where the continuations part: the CPU pick's lead over its runner-up
    /// at that step.
    pub greedy_break_margin: Option<f32>,
}

/// A model's parity between the CPU and the device.
#[derive(Debug, Serialize)]
pub struct Parity {
    pub model: String,
    /// How the device attended: matrix products or the fused kernel.
    pub attention: &'static str,
    pub cases: Vec<Case>,
    /// The logits after a context shift, the device's against the CPU's.
    pub shift_diff: Option<f32>,
    pub ok: bool,
    pub error: Option<String>,
}

/// Greedy steps compared per prompt.
const GREEDY: usize = 16;
/// llama.cpp's parity tolerance in the tests (tests/tests/llm_parity.rs).
const LOGIT_TOLERANCE: f32 = 0.4;
/// The device against the CPU: each within [`LOGIT_TOLERANCE`] of llama.cpp
/// (the tests hold both paths to it), so within twice that of each other;
/// with f16 caches (queries and weights rounded as llama.cpp does) the two
/// paths' different orders of sums reach 0.4 between them on the tiny models.
const DEVICE_TOLERANCE: f32 = 2.0 * LOGIT_TOLERANCE;

pub fn parity(path: &Path, dev: &Device, prompts: &[String], attention: AttentionKernel) -> Parity {
    let model = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    match parity_inner(path, dev, prompts, attention) {
        Ok((cases, shift)) => {
            // the continuations may part only at a near tie (the CPU's pick
            // leading by less than the tolerance allows the two to differ)
            let ok = cases.iter().all(|c| {
                c.max_abs_diff <= DEVICE_TOLERANCE
                    && (c.top1_same || c.cpu_margin <= 2.0 * c.max_abs_diff)
                    && c.greedy_break_margin.is_none_or(|m| m <= DEVICE_TOLERANCE)
            }) && shift.is_some_and(|d| d <= DEVICE_TOLERANCE);
            Parity {
                model,
                attention: attention.name(),
                cases,
                shift_diff: shift,
                ok,
                error: None,
            }
        }
        Err(err) => Parity {
            model,
            attention: attention.name(),
            cases: vec![],
            shift_diff: None,
            ok: false,
            error: Some(err),
        },
    }
}

fn parity_inner(
    path: &Path,
    dev: &Device,
    prompts: &[String],
    attention: AttentionKernel,
) -> Res<(Vec<Case>, Option<f32>)> {
    let cpu = load(path, &Device::Cpu, None)?;
    let on = load(path, dev, Some(attention))?;
    if on.model().attention() != attention {
        return Err(format!(
            "the model did not take {} attention",
            attention.name()
        ));
    }
    if on.model().own_kernels() || !cpu.model().own_kernels() {
        return Err(
            "the device under test must run candle's kernels, the reference magpie's".into(),
        );
    }
    let mut cases = Vec::new();
    for p in prompts {
        let toks = cpu.encode_prompt(p).map_err(e)?;
        let a = cpu.logits(&toks).map_err(e)?;
        let b = on.logits(&toks).map_err(e)?;
        let mut sorted = a.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        let ga = greedy(&cpu, &toks, GREEDY)?;
        let gb = greedy(&on, &toks, GREEDY)?;
        let same = ga.iter().zip(&gb).take_while(|(x, y)| x.0 == y.0).count();
        cases.push(Case {
            tokens: toks.len(),
            max_abs_diff: max_abs_diff(&a, &b),
            max_logit: sorted[0],
            top1_same: magpie_core::argmax(&a) == magpie_core::argmax(&b),
            cpu_margin: sorted[0] - sorted.get(1).copied().unwrap_or(f32::MIN),
            greedy_same: same,
            greedy_total: GREEDY,
            greedy_break_margin: ga.get(same).filter(|_| same < gb.len()).map(|g| g.1),
        });
    }
    // the context shift (moved and re-rotated keys) on the device against the CPU
    let shifted = |llm: &LocalLlm| -> Res<Vec<f32>> {
        let long = llm
            .encode_prompt(&"Magpies hoard shiny things and remember faces. ".repeat(4))
            .map_err(e)?;
        let m = llm.model();
        let mut cache = m.new_cache(256);
        m.forward(&long, &mut cache, false).map_err(e)?;
        m.shift(&mut cache, 4, 11).map_err(e)?;
        Transformer::to_vec(&m.forward(&[long[5]], &mut cache, false).map_err(e)?).map_err(e)
    };
    let shift = max_abs_diff(&shifted(&cpu)?, &shifted(&on)?);
    Ok((cases, Some(shift)))
}

/// The LLM's speed on one model.
#[derive(Debug, Serialize)]
pub struct Speed {
    pub model: String,
    /// How the device attended: matrix products or the fused kernel.
    pub attention: &'static str,
    pub parameters: u64,
    pub load_s: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prompt_tok_s: Vec<f64>,
    pub generate_tok_s: Vec<f64>,
    /// Weights read per generated token (every matrix once, as stored).
    pub weight_bytes: u64,
    /// The KV cache read per generated token, at the mean position.
    pub kv_bytes: u64,
    /// (weights + KV) × the best generation rate.
    pub read_bytes_per_s: f64,
    /// The device's memory in use after the load and the runs, and the estimate.
    pub device_memory_used: Option<u64>,
    pub estimate_bytes: u64,
    pub error: Option<String>,
}

pub fn speed(
    path: &Path,
    dev: &Device,
    (prompt, generate, rounds): (usize, usize, usize),
    attention: AttentionKernel,
) -> Speed {
    let info = magpie_candle::llm::model_info(path).ok();
    let mut s = Speed {
        model: path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned(),
        attention: attention.name(),
        parameters: info.as_ref().map_or(0, |i| i.parameters),
        load_s: 0.0,
        prompt_tokens: prompt,
        generated_tokens: generate,
        prompt_tok_s: vec![],
        generate_tok_s: vec![],
        weight_bytes: info.as_ref().map_or(0, |i| i.memory[0].weights_bytes),
        kv_bytes: 0,
        read_bytes_per_s: 0.0,
        device_memory_used: None,
        estimate_bytes: 0,
        error: None,
    };
    if let Err(err) = speed_inner(path, dev, rounds, attention, &mut s) {
        s.error = Some(err);
    }
    s
}

fn speed_inner(
    path: &Path,
    dev: &Device,
    rounds: usize,
    attention: AttentionKernel,
    s: &mut Speed,
) -> Res<()> {
    let t = Instant::now();
    let llm = load(path, dev, Some(attention))?;
    dev.synchronize().map_err(e)?;
    s.load_s = t.elapsed().as_secs_f64();
    let m = llm.model();
    let c = &m.cfg;
    let kv_per_pos = (c.n_layer * c.n_head_kv * m.kv_cache().row_bytes(c.head_dim) * 2) as u64;
    let ctx = s.prompt_tokens + s.generated_tokens + 1;
    s.kv_bytes = kv_per_pos * (s.prompt_tokens + s.generated_tokens / 2) as u64;
    s.estimate_bytes = s.weight_bytes + kv_per_pos * ctx as u64;
    // ordinary tokens of the vocabulary, the same every round
    let vocab = c.vocab_size as u64;
    let mut rng = magpie_core::Rng::new(7);
    let toks: Vec<u32> = (0..s.prompt_tokens)
        .map(|_| (300 + rng.next_u64() % (vocab.min(3000) - 300)) as u32)
        .collect();
    for round in 0..rounds + 1 {
        let mut cache = m.new_cache(ctx);
        let t = Instant::now();
        let mut logits =
            Transformer::to_vec(&m.prefill(&toks, &mut cache, 512).map_err(e)?).map_err(e)?;
        let p = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..s.generated_tokens {
            let next = magpie_core::argmax(&logits);
            logits = Transformer::to_vec(&m.forward(&[next], &mut cache, false).map_err(e)?)
                .map_err(e)?;
        }
        let g = t.elapsed().as_secs_f64();
        // the first round warms up (kernels loaded, buffers allocated)
        if round > 0 {
            s.prompt_tok_s.push(s.prompt_tokens as f64 / p);
            s.generate_tok_s.push(s.generated_tokens as f64 / g);
        }
        eprintln!(
            "  round {round}: prompt {:.0} tokens/s, generation {:.1} tokens/s",
            s.prompt_tokens as f64 / p,
            s.generated_tokens as f64 / g
        );
    }
    let best = s.generate_tok_s.iter().cloned().fold(0.0, f64::max);
    s.read_bytes_per_s = (s.weight_bytes + s.kv_bytes) as f64 * best;
    s.device_memory_used = magpie_candle::describe_device(dev).memory_used_bytes;
    Ok(())
}

/// The embedder on the device (f16) against magpie's CPU encoder.
#[derive(Debug, Serialize)]
pub struct Embed {
    pub sentences: usize,
    pub backend: String,
    pub sentences_per_s: Vec<f64>,
    pub cpu_backend: String,
    pub cpu_sentences_per_s: f64,
    /// The least cosine between the device's vectors and the CPU's.
    pub least_cosine: f64,
    pub error: Option<String>,
}

pub fn embed(dir: &Path, dev: &Device, n: usize, rounds: usize) -> Embed {
    let mut r = Embed {
        sentences: n,
        backend: String::new(),
        sentences_per_s: vec![],
        cpu_backend: String::new(),
        cpu_sentences_per_s: 0.0,
        least_cosine: 0.0,
        error: None,
    };
    if let Err(err) = embed_inner(dir, dev, rounds, &mut r) {
        r.error = Some(err);
    }
    r
}

fn embed_inner(dir: &Path, dev: &Device, rounds: usize, r: &mut Embed) -> Res<()> {
    let words = [
        "magpies",
        "hoard",
        "shiny",
        "things",
        "and",
        "remember",
        "faces",
        "the",
        "index",
        "keeps",
        "chunks",
        "in",
        "two",
        "stores",
        "retrieval",
        "answers",
        "questions",
        "about",
        "documents",
    ];
    let mut rng = magpie_core::Rng::new(3);
    let texts: Vec<String> = (0..r.sentences)
        .map(|_| {
            let len = 8 + (rng.next_u64() % 120) as usize;
            (0..len)
                .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let spec = dir.to_string_lossy();
    let on = BertEmbedder::builder(spec.clone())
        .device(dev.clone())
        .f16(true)
        .build()
        .map_err(e)?;
    let cpu = BertEmbedder::builder(spec)
        .device(Device::Cpu)
        .build()
        .map_err(e)?;
    r.backend = on.backend().into();
    r.cpu_backend = cpu.backend().into();
    on.embed_blocking(&texts[..32.min(texts.len())])
        .map_err(e)?; // warm-up
    let mut got = vec![];
    for _ in 0..rounds {
        let t = Instant::now();
        got = on.embed_blocking(&texts).map_err(e)?;
        r.sentences_per_s
            .push(texts.len() as f64 / t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    let want = cpu.embed_blocking(&texts).map_err(e)?;
    r.cpu_sentences_per_s = texts.len() as f64 / t.elapsed().as_secs_f64();
    r.least_cosine = got
        .iter()
        .zip(&want)
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (*x as f64) * (*y as f64))
                .sum::<f64>()
        })
        .fold(1.0, f64::min);
    Ok(())
}

/// A device-to-device copy of `bytes`, as bytes moved (read + written) per second.
pub fn copy_rate(dev: &Device, bytes: usize) -> Res<f64> {
    let t = Tensor::zeros(bytes / 4, candle_core::DType::F32, dev).map_err(e)?;
    let mut best: f64 = 0.0;
    for _ in 0..5 {
        dev.synchronize().map_err(e)?;
        let s = Instant::now();
        let c = t.copy().map_err(e)?;
        dev.synchronize().map_err(e)?;
        best = best.max(2.0 * bytes as f64 / s.elapsed().as_secs_f64());
        drop(c);
    }
    Ok(best)
}
