//! HTTP for plugins: deny by default, an allowlist of hosts checked on the URL,
//! on every redirect and on the resolved addresses, with size and time caps.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Name, Resolve, Resolving};
use reqwest::Url;

use crate::Grants;

/// Caps on one HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest response body, in bytes.
    pub max_body: usize,
    /// Largest request body, in bytes.
    pub max_request: usize,
    /// Whole request, redirects and body included.
    pub timeout: Duration,
    /// Redirects followed.
    pub max_redirects: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body: 2 << 20,
            max_request: 256 << 10,
            timeout: Duration::from_secs(10),
            max_redirects: 5,
        }
    }
}

/// Whether an address is loopback, private, link-local or otherwise not on the
/// public internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])) // CGNAT
                || (o[0] == 198 && (o[1] == 18 || o[1] == 19)) // benchmarking
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 may reach v4 private
        }
    }
}

/// Whether `host` is on the allowlist (`name` exactly, or `*.domain`).
pub fn host_allowed(host: &str, allow: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allow.iter().any(|a| {
        let a = a.trim_end_matches('.').to_ascii_lowercase();
        match a.strip_prefix("*.") {
            Some(domain) => host.ends_with(&format!(".{domain}")),
            None => host == a,
        }
    })
}

/// Check a URL against the grants: scheme, host on the list, literal address.
pub fn check_url(url: &Url, grants: &Grants) -> Result<(), String> {
    if !grants.http {
        return Err("capability `http` is not granted to this plugin".into());
    }
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "only http and https URLs are allowed, not {}",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URLs with credentials are not allowed".into());
    }
    let host = url.host_str().ok_or("the URL has no host")?;
    if !host_allowed(host, &grants.http_hosts) {
        return Err(format!(
            "host `{host}` is not on this plugin's allowlist ({})",
            if grants.http_hosts.is_empty() {
                "empty".to_string()
            } else {
                grants.http_hosts.join(", ")
            }
        ));
    }
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    };
    if let Some(ip) = literal {
        if is_private(ip) && !grants.allow_private_addresses {
            return Err(format!("address {ip} is private or loopback; not allowed"));
        }
    }
    Ok(())
}

/// A resolver that drops private answers unless they are allowed.
struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept: Vec<SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| allow_private || !is_private(a.ip()))
                .collect();
            if kept.is_empty() {
                let err: Box<dyn std::error::Error + Send + Sync> = if addrs.is_empty() {
                    format!("{host} does not resolve").into()
                } else {
                    format!("{host} resolves only to private or loopback addresses; not allowed")
                        .into()
                };
                return Err(err);
            }
            Ok(Box::new(kept.into_iter()) as Box<dyn Iterator<Item = SocketAddr> + Send>)
        })
    }
}

/// An HTTP client bound to one plugin's grants.
pub struct GuardedClient {
    client: reqwest::Client,
    grants: Grants,
    limits: HttpLimits,
}

/// A response for the guest.
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl GuardedClient {
    /// A client for these grants (redirects re-checked against them).
    pub fn new(grants: Grants, limits: HttpLimits) -> Result<Self, String> {
        let g = grants.clone();
        let max_redirects = limits.max_redirects;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(format!("more than {max_redirects} redirects"));
            }
            match check_url(attempt.url(), &g) {
                Ok(()) => attempt.follow(),
                Err(e) => {
                    let e = format!("redirect to {} refused: {e}", attempt.url());
                    attempt.error(e)
                }
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: grants.allow_private_addresses,
            }))
            .no_proxy()
            .user_agent(concat!("magpie-plugin-host/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(limits.timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            grants,
            limits,
        })
    }

    /// Send one request within the limits.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(String, String)],
        body: Option<Vec<u8>>,
    ) -> Result<Fetched, String> {
        let url = Url::parse(url).map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
        check_url(&url, &self.grants)?;
        if body
            .as_ref()
            .is_some_and(|b| b.len() > self.limits.max_request)
        {
            return Err(format!(
                "the request body is over {} bytes",
                self.limits.max_request
            ));
        }
        let mut req = self.client.request(method, url.clone());
        for (name, value) in headers {
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "host" | "connection" | "proxy-authorization"
            ) {
                return Err(format!("header `{name}` may not be set by a plugin"));
            }
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let limits = self.limits;
        let work = async move {
            let mut resp = req.send().await.map_err(|e| magpie_core::error_chain(&e))?;
            if let Some(len) = resp.content_length() {
                if len as usize > limits.max_body {
                    return Err(format!(
                        "the response is {len} bytes; the limit is {}",
                        limits.max_body
                    ));
                }
            }
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| magpie_core::error_chain(&e))?
            {
                if body.len() + chunk.len() > limits.max_body {
                    return Err(format!(
                        "the response is over the limit of {} bytes",
                        limits.max_body
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Fetched {
                status,
                headers,
                body,
            })
        };
        match tokio::time::timeout(self.limits.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "{url} did not answer within {:?}",
                self.limits.timeout
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allowlist() {
        let allow = vec!["example.org".to_string(), "*.wiki.test".to_string()];
        assert!(host_allowed("example.org", &allow));
        assert!(host_allowed("EXAMPLE.org.", &allow));
        assert!(!host_allowed("evil-example.org", &allow));
        assert!(!host_allowed("example.org.evil.test", &allow));
        assert!(host_allowed("en.wiki.test", &allow));
        assert!(!host_allowed("wiki.test", &allow));
    }

    #[test]
    fn urls_are_checked() {
        let g = Grants {
            http: true,
            http_hosts: vec!["127.0.0.1".into(), "example.org".into()],
            ..Default::default()
        };
        let ok = |u: &str| check_url(&Url::parse(u).unwrap(), &g);
        assert!(ok("https://example.org/x").is_ok());
        assert!(ok("ftp://example.org/x").is_err());
        assert!(ok("https://user:pw@example.org/").is_err());
        assert!(ok("https://other.org/").unwrap_err().contains("allowlist"));
        assert!(ok("http://127.0.0.1/").unwrap_err().contains("private"));
        let none = Grants::default();
        assert!(
            check_url(&Url::parse("https://example.org").unwrap(), &none)
                .unwrap_err()
                .contains("not granted")
        );
    }
}
