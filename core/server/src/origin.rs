//! What a browser may make the server do: the Host a request names must be
//! this server (no DNS rebinding), state-changing requests from another
//! origin are refused (no cross-site form posts), and CORS is opt-in.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;

use super::ApiError;

/// The names and origins the server answers to, beside its own address.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// The address the server is bound to.
    pub bind: Option<SocketAddr>,
    /// Extra host names (`docs.example.org`), lower case, without port.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://app.example.org`) allowed cross-origin calls (CORS).
    pub cors_origins: Vec<String>,
}

/// The host part of a `Host` header or an origin's authority: `[::1]:8080`
/// gives `::1`, `Example.org:80` gives `example.org`.
fn host_part(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        a.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(a, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl OriginPolicy {
    /// Whether a request naming `host` is meant for this server: the bound
    /// address (any address when bound to all), `localhost` on a loopback or
    /// wildcard bind, or a configured name. A DNS name an attacker controls
    /// (rebinding) is none of these.
    pub fn host_allowed(&self, host: &str) -> bool {
        let h = host_part(host);
        if h.is_empty() {
            return false;
        }
        if self.allowed_hosts.contains(&h) {
            return true;
        }
        let Some(bind) = self.bind else {
            return true;
        };
        let bound = bind.ip();
        match h.parse::<IpAddr>() {
            Ok(ip) => {
                bound.is_unspecified() || ip == bound || (bound.is_loopback() && ip.is_loopback())
            }
            Err(_) => {
                (h == "localhost" || h.ends_with(".localhost"))
                    && (bound.is_loopback() || bound.is_unspecified())
            }
        }
    }

    /// Whether `origin` may call the API from a browser: the page's own
    /// origin (its host is the request's Host), or a configured CORS origin.
    fn origin_allowed(&self, origin: &str, host: &str) -> bool {
        if self.is_cors_origin(origin) {
            return true;
        }
        let o = origin.trim_end_matches('/');
        let authority = o
            .strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"));
        authority.is_some_and(|a| a.eq_ignore_ascii_case(host.trim()))
    }

    fn is_cors_origin(&self, origin: &str) -> bool {
        let o = origin.trim_end_matches('/');
        self.cors_origins.iter().any(|c| c.eq_ignore_ascii_case(o))
    }

    /// Check a request before anything else runs. `Ok(Some(response))` is an
    /// answered CORS preflight.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
    ) -> Result<Option<Response>, ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.host_allowed(host) {
            return Err(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!(
                    "this server does not answer to the host {:?}; its operator can add the name \
                     with --allowed-host",
                    host_part(host)
                ),
            ));
        }
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if method == Method::OPTIONS {
            if let Some(o) = origin {
                if headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
                    return self.preflight(o).map(Some);
                }
            }
        }
        let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        if changes_state {
            let cross_site = headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|s| s.eq_ignore_ascii_case("cross-site"));
            let foreign = match origin {
                // `null`: a sandboxed frame or a file page; never this server.
                Some(o) => !self.origin_allowed(o, host),
                None => cross_site,
            };
            if foreign {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    format!(
                        "requests that change something are not accepted from the web origin {:?}; \
                         the server's operator can allow it with --cors-origin",
                        origin.unwrap_or("(cross-site)")
                    ),
                ));
            }
        }
        Ok(None)
    }

    fn preflight(&self, origin: &str) -> Result<Response, ApiError> {
        if !self.is_cors_origin(origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("cross-origin calls from {origin:?} are not allowed (see --cors-origin)"),
            ));
        }
        let mut r = Response::new(axum::body::Body::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-api-key"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        Ok(r)
    }

    /// Add the CORS headers to a response for an allowed cross origin.
    pub fn decorate(&self, origin: Option<&HeaderValue>, r: &mut Response) {
        let Some(o) = origin else { return };
        if o.to_str().is_ok_and(|s| self.is_cors_origin(s)) {
            r.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            r.headers_mut()
                .append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(bind: &str) -> OriginPolicy {
        OriginPolicy {
            bind: Some(bind.parse().unwrap()),
            allowed_hosts: vec!["docs.example.org".into()],
            cors_origins: vec!["https://app.example.org".into()],
        }
    }

    #[test]
    fn hosts_are_this_server_or_named() {
        let p = policy("127.0.0.1:8080");
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "docs.example.org",
            "Docs.Example.Org.:443",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example.com:8080",
            "",
            "10.0.0.1:8080",
            "localhost.evil.com",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let any = policy("0.0.0.0:8080");
        assert!(any.host_allowed("192.168.1.20:8080"));
        assert!(!any.host_allowed("rebind.attacker.net"));
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cross_site_writes_are_refused_and_preflights_answered() {
        let p = policy("127.0.0.1:8080");
        let same = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
        ]);
        assert!(p.check(&Method::POST, &same).unwrap().is_none());
        let foreign = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
        ]);
        let e = p.check(&Method::POST, &foreign).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
        assert!(
            p.check(&Method::GET, &foreign).unwrap().is_none(),
            "reads are not state changes"
        );
        let null = headers(&[("host", "127.0.0.1:8080"), ("origin", "null")]);
        assert!(p.check(&Method::DELETE, &null).is_err());
        let fetch = headers(&[("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")]);
        assert!(p.check(&Method::POST, &fetch).is_err());
        let cors = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://app.example.org"),
        ]);
        assert!(p.check(&Method::POST, &cors).unwrap().is_none());
        let pre = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://app.example.org"),
            ("access-control-request-method", "POST"),
        ]);
        let r = p.check(&Method::OPTIONS, &pre).unwrap().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let bad_pre = headers(&[
            ("host", "127.0.0.1:8080"),
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ]);
        assert!(p.check(&Method::OPTIONS, &bad_pre).is_err());
        let rebinding = headers(&[("host", "attacker.example:8080")]);
        assert_eq!(
            p.check(&Method::GET, &rebinding).unwrap_err().status,
            StatusCode::MISDIRECTED_REQUEST
        );
    }
}
