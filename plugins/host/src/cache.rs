//! The compile cache: components compiled once and kept on disk, keyed by
//! the component's hash and the engine's compatibility hash, each entry with
//! a BLAKE3 checksum beside it so a damaged entry is compiled again, never run.

use std::hash::{Hash, Hasher};
use std::path::Path;

use wasmtime::component::Component;
use wasmtime::Engine;

/// Compile a component with `engine`, or read it from the disk cache in
/// `cache_dir` (`None`: no disk cache). Returns it and whether it was cached.
pub(crate) fn compile(
    engine: &Engine,
    cache_dir: Option<&Path>,
    bytes: &[u8],
) -> Result<(Component, bool), String> {
    let Some(dir) = cache_dir else {
        return Component::from_binary(engine, bytes)
            .map(|c| (c, false))
            .map_err(|e| format!("not a valid WebAssembly component: {e}"));
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let key = format!("{}-{:016x}.cwasm", blake3::hash(bytes).to_hex(), h.finish());
    let path = dir.join(&key);
    let sum_path = dir.join(format!("{key}.blake3"));
    if let Some(compiled) = read_checked(&path, &sum_path) {
        // SAFETY: the bytes are what `precompile_component` of an engine
        // with the same compatibility hash wrote, unchanged since: their
        // checksum matches the one written beside them.
        match unsafe { Component::deserialize(engine, &compiled) } {
            Ok(c) => return Ok((c, true)),
            Err(e) => tracing::warn!(path = %path.display(), "ignoring a bad cache entry: {e}"),
        }
    }
    let compiled = engine
        .precompile_component(bytes)
        .map_err(|e| format!("not a valid WebAssembly component: {e}"))?;
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|_| {
        let tmp = dir.join(format!(".{}.tmp", std::process::id()));
        std::fs::write(&tmp, &compiled)?;
        std::fs::rename(&tmp, &path)?;
        let tmp = dir.join(format!(".{}.sum.tmp", std::process::id()));
        std::fs::write(&tmp, blake3::hash(&compiled).to_hex().as_bytes())?;
        std::fs::rename(&tmp, &sum_path)
    }) {
        tracing::warn!(dir = %dir.display(), "cannot write the compile cache: {e}");
    }
    // SAFETY: produced just now by this engine.
    let component = unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|e| format!("loading the compiled component: {e}"))?;
    Ok((component, false))
}

/// A compiled-code cache entry, if its checksum file says it is intact
/// (a missing, damaged or truncated entry is compiled again).
fn read_checked(path: &Path, sum_path: &Path) -> Option<Vec<u8>> {
    let compiled = std::fs::read(path).ok()?;
    let sum = std::fs::read_to_string(sum_path).ok()?;
    if blake3::hash(&compiled).to_hex().as_str() == sum.trim() {
        Some(compiled)
    } else {
        tracing::warn!(
            path = %path.display(),
            "a compiled plugin in the cache does not match its checksum; compiling it again"
        );
        None
    }
}
