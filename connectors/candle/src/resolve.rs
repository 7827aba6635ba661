//! Finding a model by directory path or by Hugging Face hub id (in the local hub cache).

use std::path::{Path, PathBuf};

/// Why a model could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// Neither a directory nor a cached hub model.
    #[error("model {spec:?} not found: it is not a directory, and not in the Hugging Face cache ({cache}). Pass a directory holding config.json, tokenizer.json and model.safetensors")]
    NotFound {
        /// What the user asked for.
        spec: String,
        /// Where the hub cache was looked for.
        cache: String,
    },
}

/// The Hugging Face hub cache directory (`$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`).
pub fn hub_cache() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache/huggingface/hub")
}

/// Resolve `spec` to a model directory: an existing path, or a hub id such as
/// `sentence-transformers/all-MiniLM-L6-v2` found in the local hub cache
/// (the snapshot `refs/main` points to, else the newest snapshot).
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf, ResolveError> {
    let p = Path::new(spec);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    let cache = hub_cache();
    if spec.contains('/') && !spec.starts_with('.') && !spec.starts_with('/') {
        let repo = cache.join(format!("models--{}", spec.replace('/', "--")));
        let snapshots = repo.join("snapshots");
        if let Ok(main) = std::fs::read_to_string(repo.join("refs/main")) {
            let dir = snapshots.join(main.trim());
            if dir.is_dir() {
                return Ok(dir);
            }
        }
        if let Ok(rd) = std::fs::read_dir(&snapshots) {
            let newest = rd
                .flatten()
                .filter(|e| e.path().is_dir())
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
            if let Some(e) = newest {
                return Ok(e.path());
            }
        }
    }
    Err(ResolveError::NotFound {
        spec: spec.to_string(),
        cache: cache.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_paths_and_hub_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_model_dir(dir.path().to_str().unwrap()).unwrap(),
            dir.path()
        );
        let snap = dir.path().join("models--org--name/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(dir.path().join("models--org--name/refs"), "").ok();
        std::env::set_var("HF_HUB_CACHE", dir.path());
        assert_eq!(resolve_model_dir("org/name").unwrap(), snap);
        let e = resolve_model_dir("org/missing").unwrap_err();
        assert!(e.to_string().contains("not found"));
        std::env::remove_var("HF_HUB_CACHE");
    }
}
