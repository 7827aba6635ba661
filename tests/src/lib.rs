//! Helpers shared by magpie's cross-crate integration tests.

use std::path::PathBuf;

pub mod docs;
pub mod scifact;
pub mod tiny;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The models directory (`MAGPIE_MODELS`, else `models/` in the workspace).
/// Panics with the command to run when the default models are not installed:
/// these tests need the real models, and the README's test command fetches them.
pub fn models_dir() -> PathBuf {
    let dir = models_root();
    let minilm = dir.join("all-MiniLM-L6-v2/model.safetensors");
    assert!(
        minilm.exists(),
        "the default models are not installed in {}: run `scripts/test.sh` (or `cargo run -p docqa -- models fetch`) first",
        dir.display()
    );
    dir
}

fn models_root() -> PathBuf {
    std::env::var_os("MAGPIE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models"))
}

/// The embedding model directory.
pub fn minilm_dir() -> PathBuf {
    models_dir().join("all-MiniLM-L6-v2")
}

/// `../shared/data/<name>` when present; otherwise prints a loud notice and returns None.
pub fn shared_data(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MAGPIE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/data"))
        .join(name);
    if dir.exists() {
        Some(dir)
    } else {
        let msg = format!(
            "\n!!!!!!!!!! SKIPPED: evaluation data {} is absent; this test measured nothing !!!!!!!!!!\n",
            dir.display()
        );
        println!("{msg}");
        eprintln!("{msg}");
        None
    }
}

/// The bundled sample corpus.
pub fn sample_corpus() -> PathBuf {
    workspace().join("examples/docqa/sample")
}

/// The default LLM (Gemma 3 270M Q4_K_M); panics with the command to run when absent.
pub fn gemma_path() -> PathBuf {
    let p = models_root().join("gemma-3-270m-q4_k_m.gguf");
    assert!(
        p.exists(),
        "the default LLM is not installed at {}: run `scripts/test.sh` (or `cargo run -p docqa -- models fetch`) first",
        p.display()
    );
    p
}

/// One parity case of an llama.cpp fixture (scripts/make_llm_fixture.py).
#[derive(Debug, serde::Deserialize)]
pub struct LogitCase {
    /// The prompt text.
    pub prompt: String,
    /// llama.cpp's token ids.
    pub tokens: Vec<u32>,
    /// The 20 highest logits, best first.
    pub top: Vec<(u32, f32)>,
    /// Logits of fixed token ids.
    pub probe: Vec<(u32, f32)>,
    /// The tokens greedy decoding picks after the prompt (when the fixture
    /// was made with `--greedy`).
    #[serde(default)]
    pub greedy: Vec<u32>,
    /// At each greedy step, llama.cpp's margin of the pick over the runner-up.
    #[serde(default)]
    pub greedy_margin: Vec<f32>,
}

/// The LoRA adapter a fixture was made with.
#[derive(Debug, serde::Deserialize)]
pub struct LoraRef {
    /// sha256 of the adapter file.
    pub sha256: String,
    /// The scale llama.cpp applied it at.
    pub scale: f32,
}

/// A fixture file.
#[derive(Debug, serde::Deserialize)]
pub struct LogitFixture {
    /// sha256 of the GGUF the logits came from.
    pub model_sha256: String,
    /// The adapter applied, if any.
    #[serde(default)]
    pub lora: Option<LoraRef>,
    /// Cases.
    pub cases: Vec<LogitCase>,
}

/// Read `tests/fixtures/<name>`.
pub fn logit_fixture(name: &str) -> LogitFixture {
    let p = workspace().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The `n` tokens greedy decoding picks after `prompt` with `adapters`
/// applied, fed back one at a time as a generator does (no end-of-text stop).
pub fn greedy_tokens(
    llm: &magpie_candle::LocalLlm,
    prompt: &[u32],
    n: usize,
    adapters: &[magpie_core::AdapterChoice],
) -> Vec<u32> {
    use magpie_candle::llm::model::Transformer;
    let loras = llm.resolve_adapters(adapters).unwrap();
    let m = llm.model();
    let mut cache = m.new_cache(prompt.len() + n + 1);
    let mut logits =
        Transformer::to_vec(&m.prefill_with(prompt, &mut cache, 512, &loras).unwrap()).unwrap();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let tok = argmax(&logits);
        out.push(tok);
        logits = Transformer::to_vec(&m.forward_with(&[tok], &mut cache, false, &loras).unwrap())
            .unwrap();
    }
    out
}

/// The text of 10 greedy tokens after `prompt` through the generator (end of
/// text ignored), with `adapters` applied.
pub async fn greedy_answer(
    llm: &magpie_candle::LocalLlm,
    prompt: &str,
    adapters: &[magpie_core::AdapterChoice],
) -> String {
    use futures::StreamExt;
    use magpie_core::{GenerationEvent, GenerationOptions, Generator, Prompt};
    let opts = GenerationOptions {
        max_tokens: 10,
        ignore_eos: true,
        adapters: adapters.to_vec(),
        ..GenerationOptions::greedy()
    };
    let mut s = llm
        .generate(Prompt::Text(prompt.into()), opts)
        .await
        .unwrap();
    let mut text = String::new();
    while let Some(ev) = s.next().await {
        match ev.unwrap() {
            GenerationEvent::Delta { text: t } => text.push_str(&t),
            GenerationEvent::Done(d) => assert_eq!(d.usage.completion_tokens, 10),
        }
    }
    text
}

/// Compare greedy tokens with a fixture case's: equal up to the end, or up to
/// a step where llama.cpp's pick led the runner-up by less than `tol` (a near
/// tie, which the logit differences within `tol` may break either way; the
/// two continuations part there). Returns how many tokens agree.
pub fn check_greedy(case: &LogitCase, ours: &[u32], tol: f32) -> usize {
    assert_eq!(ours.len(), case.greedy.len());
    for (i, (a, b)) in ours.iter().zip(&case.greedy).enumerate() {
        if a != b {
            let margin = case.greedy_margin.get(i).copied().unwrap_or(f32::INFINITY);
            assert!(
                margin < tol,
                "greedy token {i} differs after {:?}: ours {a}, llama.cpp {b}, which led its runner-up by {margin} (no near tie)\nours:      {ours:?}\nllama.cpp: {:?}",
                &case.prompt.chars().take(40).collect::<String>(),
                case.greedy
            );
            return i;
        }
    }
    ours.len()
}

/// The largest absolute difference between two vectors of logits.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The index of the largest value (the first of equals, as numpy's argmax).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Compare `logits` with a fixture case: same top-1 token, and the largest
/// absolute difference over the stored ids (returned) below `tol`.
pub fn check_logits(case: &LogitCase, logits: &[f32], tol: f32) -> f32 {
    let ours_top = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32)
        .unwrap();
    let mut max_diff = 0f32;
    for &(id, want) in case.top.iter().chain(&case.probe) {
        max_diff = max_diff.max((logits[id as usize] - want).abs());
    }
    assert_eq!(
        ours_top,
        case.top[0].0,
        "top-1 differs for {:?}: ours {ours_top}, llama.cpp {} (max diff {max_diff})",
        &case.prompt.chars().take(40).collect::<String>(),
        case.top[0].0
    );
    assert!(
        max_diff < tol,
        "logits differ by {max_diff} (tolerance {tol}) for {:?}",
        &case.prompt.chars().take(40).collect::<String>()
    );
    max_diff
}
