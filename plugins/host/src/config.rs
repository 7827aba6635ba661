//! Plugin manifests (what a plugin asks for) and the operator's configuration
//! (what it gets). Nothing is granted unless the operator says so.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::PluginError;

/// A capability a plugin can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Search the magpie index.
    Search,
    /// HTTP to allowed hosts.
    Http,
}

impl std::fmt::Display for Capability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Search => "search",
            Self::Http => "http",
        })
    }
}

/// `plugin.toml`, beside the plugin's `.wasm`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name; must match what the component describes.
    pub name: String,
    /// The component file, relative to the manifest.
    pub wasm: PathBuf,
    /// Capabilities the plugin asks for.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Hosts the plugin says it needs (informational; the operator decides).
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// Limits the plugin asks for; the operator's maximums cap them.
    #[serde(default)]
    pub limits: LimitsRequest,
}

/// Limits a manifest may ask for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    pub memory_mib: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub output_kib: Option<u64>,
}

impl Manifest {
    /// Read and check a manifest.
    pub fn read(path: &Path) -> Result<Self, PluginError> {
        let text = std::fs::read_to_string(path).map_err(|e| PluginError::Load {
            plugin: path.display().to_string(),
            message: format!("cannot read the manifest: {e}"),
        })?;
        let m: Manifest = toml::from_str(&text).map_err(|e| PluginError::Load {
            plugin: path.display().to_string(),
            message: format!("the manifest is not valid: {e}"),
        })?;
        if !valid_name(&m.name) {
            return Err(PluginError::Load {
                plugin: path.display().to_string(),
                message: format!(
                    "plugin name {:?} must be 1-64 lowercase letters, digits, `_` or `-`",
                    m.name
                ),
            });
        }
        Ok(m)
    }
}

/// Names of plugins and tools: 1-64 of `a-z 0-9 _ -`, starting with a letter.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// The resource limits one call runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Linear memory cap in bytes.
    pub memory: usize,
    /// Wall-clock budget for the guest's own work.
    pub timeout: Duration,
    /// Largest result accepted, in bytes.
    pub output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory: 64 << 20,
            timeout: Duration::from_secs(5),
            output: 1 << 20,
        }
    }
}

impl Limits {
    /// The manifest's request, capped by these maximums.
    pub fn capped(&self, req: &LimitsRequest) -> Limits {
        Limits {
            memory: req
                .memory_mib
                .map(|m| ((m as usize) << 20).min(self.memory))
                .unwrap_or(self.memory),
            timeout: req
                .timeout_ms
                .map(|t| Duration::from_millis(t).min(self.timeout))
                .unwrap_or(self.timeout),
            output: req
                .output_kib
                .map(|k| ((k as usize) << 10).min(self.output))
                .unwrap_or(self.output),
        }
    }
}

/// The operator's configuration: which plugins run and what each may do.
///
/// ```toml
/// [limits]              # maximums for every plugin
/// memory_mib = 64
/// timeout_ms = 5000
/// output_kib = 1024
///
/// [plugins.fetch]
/// grant = ["http"]
/// http_hosts = ["en.wikipedia.org", "*.example.org"]
///
/// [plugins.search]
/// grant = ["search"]
///
/// [plugins.template]
/// enabled = false
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    #[serde(default)]
    pub limits: LimitsRequest,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginGrant>,
}

/// What the operator grants one plugin.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginGrant {
    /// Whether the plugin is loaded at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Capabilities granted (only those the manifest also asks for take effect).
    #[serde(default)]
    pub grant: Vec<Capability>,
    /// Hosts HTTP may reach: exact names, or `*.domain` for its subdomains.
    #[serde(default)]
    pub http_hosts: Vec<String>,
    /// Let HTTP reach loopback and private addresses (off: a DNS answer or a
    /// redirect to 127.0.0.1, 10.x, 192.168.x, ... is refused).
    #[serde(default)]
    pub allow_private_addresses: bool,
}

fn yes() -> bool {
    true
}

impl Default for PluginGrant {
    fn default() -> Self {
        Self {
            enabled: true,
            grant: Vec::new(),
            http_hosts: Vec::new(),
            allow_private_addresses: false,
        }
    }
}

impl OperatorConfig {
    /// Read the operator's TOML file.
    pub fn read(path: &Path) -> Result<Self, PluginError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PluginError::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| PluginError::Config(format!("{} is not valid: {e}", path.display())))
    }

    /// The grant for a plugin (the empty grant when the operator did not name it).
    pub fn grant_for(&self, plugin: &str) -> PluginGrant {
        self.plugins.get(plugin).cloned().unwrap_or_default()
    }
}

/// What a loaded plugin may actually do: the manifest's request ∩ the grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Grants {
    pub search: bool,
    pub http: bool,
    pub http_hosts: Vec<String>,
    pub allow_private_addresses: bool,
}

impl Grants {
    /// Intersect a manifest's request with the operator's grant.
    pub fn effective(manifest: &Manifest, grant: &PluginGrant) -> Grants {
        let both = |c| manifest.capabilities.contains(&c) && grant.grant.contains(&c);
        let http = both(Capability::Http);
        Grants {
            search: both(Capability::Search),
            http,
            http_hosts: if http {
                grant.http_hosts.clone()
            } else {
                Vec::new()
            },
            allow_private_addresses: http && grant.allow_private_addresses,
        }
    }

    /// Everything granted, for `plugins info`.
    pub fn list(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.search {
            v.push("search".to_string());
        }
        if self.http {
            v.push(format!("http ({})", self.http_hosts.join(", ")));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(caps: &[Capability]) -> Manifest {
        Manifest {
            name: "p".into(),
            wasm: "p.wasm".into(),
            capabilities: caps.to_vec(),
            http_hosts: vec![],
            limits: LimitsRequest::default(),
        }
    }

    #[test]
    fn nothing_is_granted_by_default() {
        let m = manifest(&[Capability::Search, Capability::Http]);
        let g = Grants::effective(&m, &OperatorConfig::default().grant_for("p"));
        assert_eq!(g, Grants::default());
    }

    #[test]
    fn grants_are_the_intersection() {
        let m = manifest(&[Capability::Search]);
        let grant = PluginGrant {
            grant: vec![Capability::Search, Capability::Http],
            http_hosts: vec!["example.org".into()],
            ..Default::default()
        };
        let g = Grants::effective(&m, &grant);
        assert!(g.search);
        assert!(!g.http, "http was granted but not asked for");
        assert!(g.http_hosts.is_empty());
    }

    #[test]
    fn limits_are_capped() {
        let max = Limits::default();
        let l = max.capped(&LimitsRequest {
            memory_mib: Some(1024),
            timeout_ms: Some(100),
            output_kib: None,
        });
        assert_eq!(l.memory, max.memory);
        assert_eq!(l.timeout, Duration::from_millis(100));
        assert_eq!(l.output, max.output);
    }

    #[test]
    fn operator_config_parses_and_rejects_typos() {
        let c: OperatorConfig =
            toml::from_str("[plugins.fetch]\ngrant = [\"http\"]\nhttp_hosts = [\"example.org\"]\n")
                .unwrap();
        assert_eq!(c.grant_for("fetch").grant, vec![Capability::Http]);
        assert!(toml::from_str::<OperatorConfig>("[plugins.fetch]\ngrnat = [\"http\"]\n").is_err());
        assert!(
            toml::from_str::<OperatorConfig>("[plugins.fetch]\ngrant = [\"files\"]\n").is_err()
        );
        assert!(valid_name("calc-2"));
        assert!(!valid_name("Calc"));
        assert!(!valid_name("../x"));
    }
}
