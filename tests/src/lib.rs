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
}

/// A fixture file.
#[derive(Debug, serde::Deserialize)]
pub struct LogitFixture {
    /// sha256 of the GGUF the logits came from.
    pub model_sha256: String,
    /// Cases.
    pub cases: Vec<LogitCase>,
}

/// Read `tests/fixtures/<name>`.
pub fn logit_fixture(name: &str) -> LogitFixture {
    let p = workspace().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
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
