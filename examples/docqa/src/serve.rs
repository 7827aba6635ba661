//! `docqa serve`: the flags and environment become a settings layer over the
//! TOML file, then [`magpie_server`] serves the index (the HTTP API and the
//! web page live there).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use magpie_server::{FileConfig, KeyEntry, PluginSetup, Role, ServeConfig, Unauthenticated};

use crate::flags::{ModelArgs, OpenOptions};
use crate::plugins::PluginArgs;

/// `docqa serve` flags (each also read from the environment); they override
/// the settings file's values.
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
    /// When answers say "the documents do not cover this question" instead of
    /// letting the model guess: `measured` (the measured threshold), `off`,
    /// or an answerability between 0 and 1 (as `docqa ask --abstain`;
    /// `abstain` under [answer] in the settings file). Default: measured.
    #[arg(long, env = "DOCQA_ABSTAIN")]
    pub abstain: Option<magpie::AbstainSetting>,
}

impl ServeArgs {
    /// The settings: the file, then these flags; errors say which flag or
    /// variable fixes them.
    pub fn resolve(&self) -> Result<ServeConfig> {
        let mut keys = Vec::new();
        for (list, role) in [
            (&self.read_keys, Role::Read),
            (&self.admin_keys, Role::Admin),
        ] {
            let given = list.iter().map(|k| k.trim()).filter(|k| !k.is_empty());
            keys.extend(given.map(|k| KeyEntry {
                key: k.to_string(),
                role,
                name: None,
            }));
        }
        let layer = FileConfig {
            bind: self.bind,
            watch: self.watch.clone(),
            llm_queue: self.llm_queue,
            request_timeout_secs: self.request_timeout,
            max_body_bytes: self.max_body,
            max_upload_bytes: self.max_upload,
            allow_unauthenticated: self.allow_unauthenticated.then_some(true),
            header_timeout_secs: self.header_timeout,
            max_connections: self.max_connections,
            rate_limit: self.rate_limit,
            allowed_hosts: self.allowed_host.clone(),
            cors_origins: self.cors_origin.clone(),
            keys,
            ..FileConfig::default()
        };
        let mut cfg =
            ServeConfig::resolve(self.config.as_deref(), layer).map_err(|e| match e
                .downcast_ref::<Unauthenticated>()
            {
                Some(refused) => anyhow!(
                    "{refused}. Set DOCQA_READ_KEYS / DOCQA_ADMIN_KEYS (or [[keys]] in the config \
                     file), bind to 127.0.0.1, or pass --allow-unauthenticated behind an \
                     authenticating proxy"
                ),
                None => e.context("see `docqa serve --help` for the settings"),
            })?;
        if let Some(a) = self.abstain {
            cfg.answer.abstain = a;
        }
        Ok(cfg)
    }
}

/// Run `docqa serve` until Ctrl-C or SIGTERM.
/// `index` is the --index given on the command line or in the environment
/// (`None`: the config file's, else the default).
pub async fn run(
    index: Option<&Path>,
    models: &ModelArgs,
    plugin_args: &PluginArgs,
    args: &ServeArgs,
) -> Result<()> {
    let cfg = args.resolve()?;
    let index = match (index, &cfg.index_from_file) {
        (Some(i), _) => i.to_path_buf(),
        (None, Some(f)) => f.clone(),
        (None, None) => PathBuf::from(".magpie"),
    };
    let engine = crate::flags::open(&index, models, OpenOptions::index())?;
    let llm = models.load_generator()?;
    let plugins = match plugin_args.dir.is_dir() {
        true => Some(PluginSetup {
            dir: plugin_args.dir.clone(),
            operator: plugin_args.operator()?,
        }),
        false => None,
    };
    magpie_server::serve(&index, engine, llm, plugins, cfg).await
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
        let c = args.resolve().unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.llm_queue, 3);
        assert_eq!(c.answer.k, 4);
        assert_eq!(c.keys.len(), 1);
        args.llm_queue = Some(1);
        args.bind = Some("0.0.0.0:0".parse().unwrap());
        let c = args.resolve().unwrap();
        assert_eq!(c.llm_queue, 1);
        assert_eq!(c.bind.port(), 0);
        // No keys on a public address: refused, with what to do.
        args.config = None;
        let e = args.resolve().unwrap_err().to_string();
        assert!(e.contains("DOCQA_READ_KEYS"), "{e}");
        args.read_keys = vec!["short".into()];
        assert!(args.resolve().is_err());
        // Typos in the file are errors, not ignored.
        std::fs::write(&p, "bnid = \"127.0.0.1:1\"\n").unwrap();
        args.config = Some(p);
        let e = format!("{:#}", args.resolve().unwrap_err());
        assert!(e.contains("bnid"), "{e}");
    }
}
