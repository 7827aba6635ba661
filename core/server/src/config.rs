//! Server settings: a TOML file, overridden by the application's own layer
//! (its flags and environment).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The settings file, or a layer of overrides over it (its fields as flags
/// give them: `None` and empty lists leave the file's value).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub bind: Option<SocketAddr>,
    pub index: Option<PathBuf>,
    pub watch: Option<PathBuf>,
    pub llm_queue: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_upload_bytes: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub allow_unauthenticated: Option<bool>,
    pub header_timeout_secs: Option<u64>,
    pub max_connections: Option<usize>,
    pub rate_limit: Option<f64>,
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    #[serde(default)]
    pub cors_origins: Vec<String>,
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    #[serde(default)]
    pub answer: AnswerConfig,
}

/// One API key in the settings file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub key: String,
    pub role: Role,
    /// Who holds it (for the logs).
    #[serde(default)]
    pub name: Option<String>,
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Search, query, chat completions, embeddings, models, metrics.
    Read,
    /// Everything, including adding and deleting documents.
    Admin,
}

/// Answer defaults (a request may override them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnswerConfig {
    pub k: usize,
    pub max_tokens: usize,
    pub temperature: f32,
    pub context_tokens: usize,
    /// When an answer says the documents do not cover the question.
    pub abstain: magpie::AbstainSetting,
    /// How a follow-up's search reads the conversation (chat completions,
    /// conversations): `fused` (the default), `last-turn`, `joined`,
    /// `condensed` or `condensed-fused` (the model rewrites the follow-up
    /// first; as `docqa ask --history`).
    pub history: magpie_core::HistoryMode,
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            k: 6,
            max_tokens: 200,
            temperature: 0.2,
            context_tokens: 1200,
            abstain: magpie::AbstainSetting::Measured,
            history: magpie_core::HistoryMode::Fused,
        }
    }
}

/// Everything the server runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub bind: SocketAddr,
    pub index_from_file: Option<PathBuf>,
    pub watch: Option<PathBuf>,
    pub llm_queue: usize,
    pub request_timeout: std::time::Duration,
    pub max_body: usize,
    pub max_upload: usize,
    pub shutdown_grace: std::time::Duration,
    pub keys: Vec<KeyEntry>,
    pub answer: AnswerConfig,
    pub header_timeout: std::time::Duration,
    pub max_connections: Option<usize>,
    pub rate_limit: Option<f64>,
    pub allowed_hosts: Vec<String>,
    pub cors_origins: Vec<String>,
}

/// Refused: a non-loopback address without API keys. The application says
/// how its users add keys.
#[derive(Debug)]
pub struct Unauthenticated(pub SocketAddr);

impl std::fmt::Display for Unauthenticated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refusing to serve {} without API keys: anyone who can reach it could read and \
             change the documents",
            self.0
        )
    }
}

impl std::error::Error for Unauthenticated {}

impl ServeConfig {
    /// The settings file at `file` (if any) with `layer` over it: a value in
    /// the layer wins, and its keys are added to the file's.
    pub fn resolve(file: Option<&Path>, layer: FileConfig) -> Result<Self> {
        let file = match file {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let mut keys = file.keys.clone();
        keys.extend(layer.keys.iter().cloned());
        for k in &keys {
            if k.key.len() < 16 {
                bail!(
                    "an API key{} is shorter than 16 characters; use a long random one \
                     (for example `openssl rand -hex 24`)",
                    k.name
                        .as_deref()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default()
                );
            }
        }
        let bind = layer
            .bind
            .or(file.bind)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("address"));
        let allow_open = layer
            .allow_unauthenticated
            .or(file.allow_unauthenticated)
            .unwrap_or(false);
        if keys.is_empty() && !bind.ip().is_loopback() && !allow_open {
            return Err(Unauthenticated(bind).into());
        }
        let cors = names(&layer.cors_origins, &file.cors_origins)
            .into_iter()
            .map(|o| o.trim_end_matches('/').to_string())
            .collect::<Vec<_>>();
        if let Some(bad) = cors
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.contains('*'))
        {
            bail!(
                "the CORS origin {bad:?} is not an origin: write it as scheme://host[:port], \
                 such as https://app.example.org (wildcards are not accepted)"
            );
        }
        let rate_limit = layer.rate_limit.or(file.rate_limit);
        if rate_limit.is_some_and(|r| r.is_nan() || r <= 0.0) {
            bail!("the rate limit must be a positive number of requests per second");
        }
        let secs = |layer: Option<u64>, file: Option<u64>, default: u64| {
            std::time::Duration::from_secs(layer.or(file).unwrap_or(default).max(1))
        };
        let size = |layer: Option<u64>, file: Option<u64>, default: u64| -> usize {
            layer.or(file).unwrap_or(default) as usize
        };
        Ok(Self {
            bind,
            index_from_file: layer.index.or(file.index),
            watch: layer.watch.or(file.watch),
            llm_queue: layer.llm_queue.or(file.llm_queue).unwrap_or(8),
            request_timeout: secs(layer.request_timeout_secs, file.request_timeout_secs, 120),
            max_body: size(layer.max_body_bytes, file.max_body_bytes, 1 << 20),
            max_upload: size(layer.max_upload_bytes, file.max_upload_bytes, 32 << 20),
            shutdown_grace: std::time::Duration::from_secs(
                layer
                    .shutdown_grace_secs
                    .or(file.shutdown_grace_secs)
                    .unwrap_or(30),
            ),
            keys,
            answer: file.answer,
            header_timeout: secs(layer.header_timeout_secs, file.header_timeout_secs, 10),
            max_connections: layer.max_connections.or(file.max_connections),
            rate_limit,
            allowed_hosts: names(&layer.allowed_hosts, &file.allowed_hosts),
            cors_origins: cors,
        })
    }
}

/// Flag values if any, else the file's; trimmed, lower-cased, no empties.
fn names(flag: &[String], file: &[String]) -> Vec<String> {
    let from = if flag.is_empty() { file } else { flag };
    from.iter()
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

fn load_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the settings file {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("{} is not a valid server settings file", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_overrides_the_file_and_adds_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.toml");
        std::fs::write(
            &p,
            "bind = \"127.0.0.1:9000\"\nllm_queue = 3\nrate_limit = 2.0\n[answer]\nk = 4\n\
             history = \"condensed-fused\"\n[[keys]]\nkey = \"0123456789abcdef0123\"\nrole = \"admin\"\n",
        )
        .unwrap();
        let c = ServeConfig::resolve(Some(&p), FileConfig::default()).unwrap();
        assert_eq!((c.bind.port(), c.llm_queue, c.answer.k), (9000, 3, 4));
        assert_eq!(c.answer.history, magpie_core::HistoryMode::CondensedFused);
        assert_eq!(c.rate_limit, Some(2.0));
        let layer = FileConfig {
            llm_queue: Some(1),
            bind: Some("0.0.0.0:0".parse().unwrap()),
            keys: vec![KeyEntry {
                key: "abcdef0123456789abcd".into(),
                role: Role::Read,
                name: None,
            }],
            ..FileConfig::default()
        };
        let c = ServeConfig::resolve(Some(&p), layer).unwrap();
        assert_eq!((c.bind.port(), c.llm_queue, c.keys.len()), (0, 1, 2));
        // A public address without keys is refused with a typed error the
        // application can explain in its own terms.
        let open = FileConfig {
            bind: Some("0.0.0.0:0".parse().unwrap()),
            ..FileConfig::default()
        };
        let e = ServeConfig::resolve(None, open.clone()).unwrap_err();
        assert!(e.downcast_ref::<Unauthenticated>().is_some(), "{e}");
        let allowed = FileConfig {
            allow_unauthenticated: Some(true),
            ..open
        };
        assert!(ServeConfig::resolve(None, allowed).is_ok());
        let bad = FileConfig {
            cors_origins: vec!["*".into()],
            ..FileConfig::default()
        };
        assert!(ServeConfig::resolve(None, bad).is_err());
    }
}
