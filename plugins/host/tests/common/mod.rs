//! Shared helpers: the real wasm components built by scripts/build_plugins.sh,
//! installed into temporary plugin directories with manifests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use magpie_plugin_host::{HostConfig, Limits, OperatorConfig, PluginHost};

/// Where scripts/build_plugins.sh leaves the components.
pub fn wasm_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release")
}

/// The component of `crate_name` (e.g. `calculator`, `hostile`); panics with
/// what to run when it has not been built.
pub fn wasm(crate_name: &str) -> PathBuf {
    let p = wasm_dir().join(format!("magpie_plugin_{crate_name}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the plugins first with scripts/build_plugins.sh \
         (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Install a plugin into `dir/<name>/` with a manifest.
pub fn install(dir: &Path, crate_name: &str, manifest_extra: &str) {
    let d = dir.join(crate_name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(wasm(crate_name), d.join(format!("{crate_name}.wasm"))).unwrap();
    std::fs::write(
        d.join("plugin.toml"),
        format!("name = \"{crate_name}\"\nwasm = \"{crate_name}.wasm\"\n{manifest_extra}"),
    )
    .unwrap();
}

/// A host with short limits and its own compile cache.
pub fn host(cache: &Path) -> PluginHost {
    PluginHost::new(HostConfig {
        limits: Limits {
            memory: 32 << 20,
            timeout: Duration::from_millis(500),
            output: 1 << 20,
        },
        cache_dir: Some(cache.to_path_buf()),
        ..HostConfig::default()
    })
    .expect("host")
}

/// The operator configuration from TOML.
pub fn operator(toml_text: &str) -> OperatorConfig {
    toml::from_str(toml_text).expect("operator config")
}
