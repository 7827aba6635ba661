//! Helpers shared by magpie's cross-crate integration tests.

use std::path::PathBuf;

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The models directory (`MAGPIE_MODELS`, else `models/` in the workspace).
/// Panics with the command to run when the default models are not installed:
/// these tests need the real models, and the README's test command fetches them.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("MAGPIE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("models"));
    let minilm = dir.join("all-MiniLM-L6-v2/model.safetensors");
    assert!(
        minilm.exists(),
        "the default models are not installed in {}: run `scripts/test.sh` (or `cargo run -p docqa -- models fetch`) first",
        dir.display()
    );
    dir
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
