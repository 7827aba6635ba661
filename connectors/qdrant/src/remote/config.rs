//! A store URL parsed: where the deployment is and how to treat it.

use std::time::Duration;

use magpie_core::{Error, Result};
use qdrant_client::qdrant::WriteOrderingType;

use crate::sparse::Bm25Params;

use super::API_KEY_ENV;

/// Where and how to reach a Qdrant deployment, parsed from a store URL:
/// `qdrant+grpc://host:6334/collection?shards=3&replication=2&write_consistency=2`
/// (`qdrant+grpcs://` for TLS).
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteConfig {
    /// `http://host:port` or `https://host:port`, as qdrant-client takes it.
    pub endpoint: String,
    /// Collection name.
    pub collection: String,
    /// API key (from [`API_KEY_ENV`] by default; never printed).
    pub api_key: Option<String>,
    /// Shards of a new collection (server default when unset).
    pub shards: Option<u32>,
    /// Copies of each shard in a new collection.
    pub replication: Option<u32>,
    /// Replicas that must acknowledge a write, for a new collection.
    pub write_consistency: Option<u32>,
    /// Ordering guarantee of each write (weak, medium, strong).
    pub ordering: WriteOrderingType,
    /// Most bytes of points per upsert request.
    pub batch_bytes: usize,
    /// Attempts after the first for a request that failed transiently.
    pub retries: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Candidates each prefetch contributes to a hybrid query.
    pub candidates: u64,
    /// BM25 parameters of the sparse vectors.
    pub bm25: Bm25Params,
}

impl RemoteConfig {
    /// True when `spec` names a remote store (`qdrant+grpc://` or `qdrant+grpcs://`).
    pub fn is_remote(spec: &str) -> bool {
        spec.starts_with("qdrant+grpc://") || spec.starts_with("qdrant+grpcs://")
    }

    /// Parse a store URL; the API key comes from [`API_KEY_ENV`] when set.
    pub fn parse(spec: &str) -> Result<Self> {
        let bad = |why: String| {
            Error::InvalidInput(format!(
                "store {spec:?}: {why}; write qdrant+grpc://HOST[:PORT][/COLLECTION][?shards=N&replication=N&write_consistency=N&ordering=weak|medium|strong] (qdrant+grpcs:// for TLS)"
            ))
        };
        let (tls, rest) = if let Some(r) = spec.strip_prefix("qdrant+grpcs://") {
            (true, r)
        } else if let Some(r) = spec.strip_prefix("qdrant+grpc://") {
            (false, r)
        } else {
            return Err(bad("not a qdrant+grpc:// URL".into()));
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(bad(format!(
                "put the API key in the {API_KEY_ENV} environment variable, not in the URL"
            )));
        }
        if authority.is_empty() {
            return Err(bad("no host".into()));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| bad("unclosed '[' in the host".into()))?;
                (format!("[{h}]"), after.strip_prefix(':'))
            }
            None => match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            },
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| bad(format!("port {p:?} is not a port number")))?,
            None => 6334,
        };
        let host_port = format!("{host}:{port}");
        let collection = path.trim_matches('/');
        let collection = if collection.is_empty() {
            "magpie".to_string()
        } else {
            collection.to_string()
        };
        if !collection
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || collection.len() > 255
        {
            return Err(bad(format!(
                "collection name {collection:?} may only have letters, digits, '_' and '-'"
            )));
        }
        let mut cfg = RemoteConfig {
            endpoint: format!("{}://{host_port}", if tls { "https" } else { "http" }),
            collection,
            api_key: std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
            shards: None,
            replication: None,
            write_consistency: None,
            ordering: WriteOrderingType::Weak,
            batch_bytes: 4 << 20,
            retries: 8,
            timeout: Duration::from_secs(30),
            candidates: 100,
            bm25: Bm25Params::default(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option {pair:?} has no value")))?;
            let num = |v: &str| {
                v.parse::<u32>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| bad(format!("{k}={v:?}: expected a whole number ≥ 1")))
            };
            match k {
                "shards" => cfg.shards = Some(num(v)?),
                "replication" => cfg.replication = Some(num(v)?),
                "write_consistency" => cfg.write_consistency = Some(num(v)?),
                "retries" => {
                    cfg.retries = v
                        .parse()
                        .map_err(|_| bad(format!("retries={v:?}: expected a number")))?
                }
                "batch_bytes" => cfg.batch_bytes = num(v)? as usize,
                "timeout_s" => cfg.timeout = Duration::from_secs(num(v)? as u64),
                "candidates" => cfg.candidates = num(v)? as u64,
                "ordering" => {
                    cfg.ordering = match v {
                        "weak" => WriteOrderingType::Weak,
                        "medium" => WriteOrderingType::Medium,
                        "strong" => WriteOrderingType::Strong,
                        _ => {
                            return Err(bad(format!("ordering={v:?}: use weak, medium or strong")))
                        }
                    }
                }
                _ => return Err(bad(format!("unknown option {k:?}"))),
            }
        }
        if let (Some(w), Some(r)) = (cfg.write_consistency, cfg.replication) {
            if w > r {
                return Err(bad(format!(
                    "write_consistency {w} is more than the {r} replicas"
                )));
            }
        }
        Ok(cfg)
    }

    /// The URL without secrets, for messages and the index settings.
    pub fn display_url(&self) -> String {
        let (scheme, hp) = self
            .endpoint
            .split_once("://")
            .expect("endpoint has a scheme");
        let s = if scheme == "https" {
            "qdrant+grpcs"
        } else {
            "qdrant+grpc"
        };
        format!("{s}://{hp}/{}", self.collection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> RemoteConfig {
        RemoteConfig::parse(s).unwrap()
    }

    #[test]
    fn store_urls_parse_with_defaults_options_and_tls() {
        let c = cfg("qdrant+grpc://localhost");
        assert_eq!(c.endpoint, "http://localhost:6334");
        assert_eq!(c.collection, "magpie");
        assert_eq!(c.display_url(), "qdrant+grpc://localhost:6334/magpie");
        let c = cfg("qdrant+grpcs://q.example:7000/docs?shards=6&replication=3&write_consistency=2&ordering=strong&batch_bytes=1000");
        assert_eq!(c.endpoint, "https://q.example:7000");
        assert_eq!(c.collection, "docs");
        assert_eq!(
            (c.shards, c.replication, c.write_consistency),
            (Some(6), Some(3), Some(2))
        );
        assert_eq!(c.ordering, WriteOrderingType::Strong);
        assert_eq!(c.batch_bytes, 1000);
        let c = cfg("qdrant+grpc://[::1]:6334/x");
        assert_eq!(c.endpoint, "http://[::1]:6334");
        for (bad, says) in [
            ("http://localhost:6334", "not a qdrant+grpc"),
            ("qdrant+grpc://key@host", "QDRANT_API_KEY"),
            ("qdrant+grpc://host:abc", "not a port"),
            ("qdrant+grpc://host/a b", "collection name"),
            ("qdrant+grpc://host?shards=0", "whole number"),
            ("qdrant+grpc://host?colour=red", "unknown option"),
            (
                "qdrant+grpc://host?replication=1&write_consistency=2",
                "more than",
            ),
            ("qdrant+grpc://host?ordering=fast", "weak, medium or strong"),
        ] {
            let e = RemoteConfig::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
