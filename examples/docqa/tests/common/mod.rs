//! What the docqa test files share: the repository's paths and the binary,
//! with the environment that would steer it cleared.

#![allow(dead_code)] // each test file uses its own part

pub mod server;
pub mod soak;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The models scripts/test.sh fetches (or MAGPIE_MODELS).
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("MAGPIE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    assert!(
        dir.join("all-MiniLM-L6-v2/model.safetensors").exists(),
        "models missing in {}: run scripts/test.sh, which fetches them",
        dir.display()
    );
    dir
}

/// The bundled sample corpus.
pub fn sample() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sample")
}

/// `docqa --index <index> --models-dir <models>`, with no DOCQA_*/MAGPIE_* settings inherited.
pub fn docqa(index: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_docqa"));
    c.arg("--index")
        .arg(index)
        .arg("--models-dir")
        .arg(models_dir());
    for v in [
        "DOCQA_INDEX",
        "DOCQA_CONFIG",
        "DOCQA_BIND",
        "DOCQA_READ_KEYS",
        "DOCQA_ADMIN_KEYS",
        "DOCQA_WATCH",
        "DOCQA_LLM_QUEUE",
        "MAGPIE_EMBED_MODEL",
        "MAGPIE_LLM",
        "MAGPIE_LLM_MODEL",
        "MAGPIE_CTX",
        "MAGPIE_PLUGINS",
        "MAGPIE_PLUGIN_CONFIG",
        "MAGPIE_STORE",
        "QDRANT_API_KEY",
    ] {
        c.env_remove(v);
    }
    c
}

/// Run, and fail the test with both outputs unless it succeeded.
pub fn run_ok(c: &mut Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{:?} failed:\nstdout: {}\nstderr: {}",
        c,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Its standard output as JSON.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// Index the bundled sample corpus into `index`.
pub fn index_sample(index: &Path) {
    run_ok(docqa(index).arg("index").arg(sample()));
}
