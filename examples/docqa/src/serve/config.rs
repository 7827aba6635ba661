//! `docqa serve` settings: a TOML file, then the environment, then flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// `docqa serve` flags (each also read from the environment).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Settings file (TOML); flags and environment variables override it.
    #[arg(long, env = "DOCQA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "DOCQA_BIND")]
    pub bind: Option<SocketAddr>,
    /// Keep this directory indexed while serving (created, changed, renamed and
    /// deleted files are picked up).
    #[arg(long, env = "DOCQA_WATCH")]
    pub watch: Option<PathBuf>,
    /// Questions waiting for the model beyond the one being answered; more get 429.
    #[arg(long, env = "DOCQA_LLM_QUEUE")]
    pub llm_queue: Option<usize>,
    /// Seconds a request may take (a streamed answer: until its first byte).
    #[arg(long, env = "DOCQA_REQUEST_TIMEOUT")]
    pub request_timeout: Option<u64>,
    /// Largest JSON request body, bytes (K/M/G suffixes allowed).
    #[arg(long, env = "DOCQA_MAX_BODY", value_parser = crate::parse_size)]
    pub max_body: Option<u64>,
    /// Largest document upload, bytes (K/M/G suffixes allowed).
    #[arg(long, env = "DOCQA_MAX_UPLOAD", value_parser = crate::parse_size)]
    pub max_upload: Option<u64>,
    /// API keys with the read role (search, query, chat, embeddings), comma-separated.
    #[arg(
        long,
        env = "DOCQA_READ_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub read_keys: Vec<String>,
    /// API keys with the admin role (also documents and jobs), comma-separated.
    #[arg(
        long,
        env = "DOCQA_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,
    /// Serve without API keys on a non-loopback address (only behind a proxy that
    /// authenticates).
    #[arg(long, env = "DOCQA_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,
    /// Seconds a client has to send a request's head, and that an idle
    /// kept-alive connection stays open (default 10).
    #[arg(long, env = "DOCQA_HEADER_TIMEOUT")]
    pub header_timeout: Option<u64>,
    /// Most connections open at once; more get 503 (default 4096, and never
    /// more than the open-files limit allows, which the server raises at start).
    #[arg(long, env = "DOCQA_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Requests per second one client address may make (bursts of twice
    /// that); more get 429. Default: no limit.
    #[arg(long, env = "DOCQA_RATE_LIMIT")]
    pub rate_limit: Option<f64>,
    /// Host names the server answers to besides its own address and
    /// localhost (a reverse proxy's name), comma-separated. Other Host
    /// headers get 421, which stops DNS rebinding.
    #[arg(long, env = "DOCQA_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_host: Vec<String>,
    /// Web origins (`https://app.example.org`) allowed to call the API from a
    /// browser (CORS), comma-separated. Other origins cannot add, delete or
    /// ask anything.
    #[arg(long, env = "DOCQA_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
}

/// The settings file.
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
}

impl Default for AnswerConfig {
    fn default() -> Self {
        Self {
            k: 6,
            max_tokens: 200,
            temperature: 0.2,
            context_tokens: 1200,
        }
    }
}

/// Everything `docqa serve` runs with.
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

impl ServeConfig {
    /// File, then environment and flags (clap has already merged those two).
    pub fn resolve(args: &ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(p) => load_file(p)?,
            None => FileConfig::default(),
        };
        let mut keys = file.keys.clone();
        for (list, role) in [
            (&args.read_keys, Role::Read),
            (&args.admin_keys, Role::Admin),
        ] {
            for k in list.iter().map(|k| k.trim()).filter(|k| !k.is_empty()) {
                keys.push(KeyEntry {
                    key: k.to_string(),
                    role,
                    name: None,
                });
            }
        }
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
        let bind = args
            .bind
            .or(file.bind)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("address"));
        let allow_open = args.allow_unauthenticated || file.allow_unauthenticated.unwrap_or(false);
        if keys.is_empty() && !bind.ip().is_loopback() && !allow_open {
            bail!(
                "refusing to serve {bind} without API keys: anyone who can reach it could read and \
                 change the documents. Set DOCQA_READ_KEYS / DOCQA_ADMIN_KEYS (or [[keys]] in the \
                 config file), bind to 127.0.0.1, or pass --allow-unauthenticated behind an \
                 authenticating proxy"
            );
        }
        let cors = names(&args.cors_origin, &file.cors_origins)
            .into_iter()
            .map(|o| o.trim_end_matches('/').to_string())
            .collect::<Vec<_>>();
        if let Some(bad) = cors
            .iter()
            .find(|o| !(o.starts_with("http://") || o.starts_with("https://")) || o.contains('*'))
        {
            bail!(
                "--cors-origin {bad:?} is not an origin: write it as scheme://host[:port], \
                 such as https://app.example.org (wildcards are not accepted)"
            );
        }
        if args
            .rate_limit
            .or(file.rate_limit)
            .is_some_and(|r| r.is_nan() || r <= 0.0)
        {
            bail!("--rate-limit must be a positive number of requests per second");
        }
        let size = |flag: Option<u64>, file: Option<u64>, default: u64| -> usize {
            flag.or(file).unwrap_or(default) as usize
        };
        Ok(Self {
            bind,
            index_from_file: file.index,
            watch: args.watch.clone().or(file.watch),
            llm_queue: args.llm_queue.or(file.llm_queue).unwrap_or(8),
            request_timeout: std::time::Duration::from_secs(
                args.request_timeout
                    .or(file.request_timeout_secs)
                    .unwrap_or(120)
                    .max(1),
            ),
            max_body: size(args.max_body, file.max_body_bytes, 1 << 20),
            max_upload: size(args.max_upload, file.max_upload_bytes, 32 << 20),
            shutdown_grace: std::time::Duration::from_secs(file.shutdown_grace_secs.unwrap_or(30)),
            keys,
            answer: file.answer,
            header_timeout: std::time::Duration::from_secs(
                args.header_timeout
                    .or(file.header_timeout_secs)
                    .unwrap_or(10)
                    .max(1),
            ),
            max_connections: args.max_connections.or(file.max_connections),
            rate_limit: args.rate_limit.or(file.rate_limit),
            allowed_hosts: names(&args.allowed_host, &file.allowed_hosts),
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
    toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a valid docqa settings file (see `docqa serve --help` for the keys)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_public_addresses_need_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("docqa.toml");
        std::fs::write(
            &p,
            "bind = \"127.0.0.1:9000\"\nllm_queue = 3\n[answer]\nk = 4\n\
             [[keys]]\nkey = \"0123456789abcdef0123\"\nrole = \"admin\"\n",
        )
        .unwrap();
        let mut args = ServeArgs {
            config: Some(p.clone()),
            ..Default::default()
        };
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.llm_queue, 3);
        assert_eq!(c.answer.k, 4);
        assert_eq!(c.keys.len(), 1);
        args.llm_queue = Some(1);
        args.bind = Some("0.0.0.0:0".parse().unwrap());
        let c = ServeConfig::resolve(&args).unwrap();
        assert_eq!(c.llm_queue, 1);
        assert_eq!(c.bind.port(), 0);
        // No keys on a public address: refused, with what to do.
        args.config = None;
        let e = ServeConfig::resolve(&args).unwrap_err().to_string();
        assert!(e.contains("DOCQA_READ_KEYS"), "{e}");
        args.read_keys = vec!["short".into()];
        assert!(ServeConfig::resolve(&args).is_err());
        // Typos in the file are errors, not ignored.
        std::fs::write(&p, "bnid = \"127.0.0.1:1\"\n").unwrap();
        args.config = Some(p);
        let e = format!("{:#}", ServeConfig::resolve(&args).unwrap_err());
        assert!(e.contains("bnid"), "{e}");
    }
}
