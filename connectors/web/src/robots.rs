//! robots.txt: the group for `magpie` (else `*`), Allow/Disallow by the longest
//! matching path prefix (`*` and `$` wildcards), and Crawl-delay.

use std::time::Duration;

use url::Url;

/// One `User-agent` group: its agents, its (allow, pattern) rules, its Crawl-delay.
type Group = (Vec<String>, Vec<(bool, String)>, Option<Duration>);

/// The most of a robots.txt that is read (500 KiB, Google's limit).
pub const MAX_ROBOTS_BYTES: usize = 500 * 1024;

/// A path (with query) in the form rules are compared in: percent-encoded
/// unreserved characters decoded (`/%70rivate` is `/private`), other escapes
/// in upper case, so one resource has one spelling.
pub fn normalise_path(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                let c = (h * 16 + l) as u8;
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    out.push(c as char);
                } else {
                    out.push('%');
                    out.push_str(&format!("{c:02X}"));
                }
                i += 3;
                continue;
            }
        }
        // Copy one whole character.
        let ch = path[i..].chars().next().unwrap_or('\u{FFFD}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The rules that apply to magpie on one site.
#[derive(Debug, Clone, Default)]
pub struct Robots {
    /// (allow, pattern)
    rules: Vec<(bool, String)>,
    delay: Option<Duration>,
}

impl Robots {
    /// No rules: everything allowed.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Fetch and parse `/robots.txt` of `site`; a missing or failing one allows
    /// everything (as crawlers do for 4xx), a 5xx disallows everything.
    pub async fn fetch(client: &reqwest::Client, site: &Url, timeout: Duration) -> Self {
        let Ok(url) = site.join("/robots.txt") else {
            return Self::allow_all();
        };
        // Read at most MAX_ROBOTS_BYTES (what follows is ignored, as Google
        // does), within the request timeout.
        let resp = tokio::time::timeout(timeout, async {
            let mut r = client.get(url).send().await?;
            let status = r.status();
            let mut body = Vec::new();
            while let Some(chunk) = r.chunk().await? {
                let room = MAX_ROBOTS_BYTES - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if body.len() >= MAX_ROBOTS_BYTES {
                    tracing::warn!(
                        "robots.txt is over {MAX_ROBOTS_BYTES} bytes; the rest is ignored"
                    );
                    break;
                }
            }
            // A rule cut in half at the limit is dropped, not misread.
            if body.len() >= MAX_ROBOTS_BYTES {
                if let Some(nl) = body.iter().rposition(|&b| b == b'\n') {
                    body.truncate(nl + 1);
                }
            }
            Ok::<_, reqwest::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await;
        match resp {
            Ok(Ok((status, text))) if status.is_success() => Self::parse(&text, "magpie"),
            Ok(Ok((status, _))) if status.is_server_error() => {
                tracing::warn!(%status, "robots.txt answers with a server error; not crawling");
                Self {
                    rules: vec![(false, "/".into())],
                    delay: None,
                }
            }
            _ => Self::allow_all(),
        }
    }

    /// Parse robots.txt for `agent` (case-insensitive product token).
    pub fn parse(text: &str, agent: &str) -> Self {
        let agent = agent.to_ascii_lowercase();
        // Groups: (agents, rules, delay)
        let mut groups: Vec<Group> = Vec::new();
        let mut in_agents = false;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim().to_string());
            match key.as_str() {
                "user-agent" => {
                    if !in_agents {
                        groups.push((Vec::new(), Vec::new(), None));
                        in_agents = true;
                    }
                    if let Some(g) = groups.last_mut() {
                        g.0.push(value.to_ascii_lowercase());
                    }
                }
                "allow" | "disallow" => {
                    in_agents = false;
                    if let Some(g) = groups.last_mut() {
                        // An empty Disallow allows everything.
                        if !value.is_empty() {
                            g.1.push((key == "allow", normalise_path(&value)));
                        }
                    }
                }
                "crawl-delay" => {
                    in_agents = false;
                    if let (Some(g), Ok(secs)) = (groups.last_mut(), value.parse::<f64>()) {
                        if secs.is_finite() && secs >= 0.0 {
                            g.2 = Some(Duration::from_secs_f64(secs.min(60.0)));
                        }
                    }
                }
                _ => in_agents = false,
            }
        }
        let pick = |want: &dyn Fn(&str) -> bool| {
            groups
                .iter()
                .filter(|g| g.0.iter().any(|a| want(a)))
                .fold(None::<Robots>, |acc, g| {
                    let mut r = acc.unwrap_or_default();
                    r.rules.extend(g.1.iter().cloned());
                    r.delay = r.delay.or(g.2);
                    Some(r)
                })
        };
        pick(&|a: &str| a == agent)
            .or_else(|| pick(&|a: &str| a == "*"))
            .unwrap_or_default()
    }

    /// Whether magpie may fetch `path` (with its query).
    pub fn allowed(&self, path: &str) -> bool {
        let path = &normalise_path(path);
        let mut best: Option<(usize, bool)> = None;
        for (allow, pattern) in &self.rules {
            if matches(pattern, path) {
                let len = pattern.len();
                // Longest match wins; on a tie, Allow wins.
                if best.is_none_or(|(l, a)| len > l || (len == l && *allow && !a)) {
                    best = Some((len, *allow));
                }
            }
        }
        best.map(|(_, a)| a).unwrap_or(true)
    }

    /// The site's Crawl-delay for magpie, if it set one.
    pub fn crawl_delay(&self) -> Option<Duration> {
        self.delay
    }
}

/// robots.txt path matching: a prefix, `*` for any run, `$` for the end.
fn matches(pattern: &str, path: &str) -> bool {
    let (pattern, anchored) = match pattern.strip_suffix('$') {
        Some(p) => (p, true),
        None => (pattern, false),
    };
    let parts: Vec<&str> = pattern.split('*').collect();
    let Some(first) = parts.first() else {
        return true;
    };
    if !path.starts_with(first) {
        return false;
    }
    let mut pos = first.len();
    let last = parts.len() - 1;
    for (i, part) in parts.iter().enumerate().skip(1) {
        if anchored && i == last {
            // The last piece must end the path.
            return path.len() >= pos + part.len() && path.ends_with(part);
        }
        match path[pos..].find(part) {
            Some(f) => pos += f + part.len(),
            None => return false,
        }
    }
    !anchored || pos == path.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_longest_match() {
        let r = Robots::parse(
            "User-agent: *\nDisallow: /\n\nUser-agent: Magpie\nUser-agent: other\nDisallow: /private\nAllow: /private/open\nCrawl-delay: 0.5\n",
            "magpie",
        );
        assert!(r.allowed("/docs/a.html"));
        assert!(!r.allowed("/private/x"));
        assert!(r.allowed("/private/open/y"));
        assert_eq!(r.crawl_delay(), Some(Duration::from_millis(500)));
        let star = Robots::parse(
            "User-agent: *\nDisallow: /tmp/\nDisallow: /*.pdf$\n",
            "magpie",
        );
        assert!(!star.allowed("/tmp/a"));
        assert!(!star.allowed("/files/x.pdf"));
        assert!(star.allowed("/files/x.pdf?download=1"));
        assert!(star.allowed("/"));
        assert!(Robots::parse("User-agent: *\nDisallow:\n", "magpie").allowed("/any"));
    }

    #[test]
    fn escapes_do_not_get_around_the_rules() {
        let r = Robots::parse(
            "User-agent: *\nDisallow: /private\nDisallow: /a%2fb\n",
            "magpie",
        );
        assert!(!r.allowed("/%70rivate/x"));
        assert!(!r.allowed("/%70%72%69vate"));
        assert!(!r.allowed("/a%2Fb"));
        assert!(r.allowed("/public/%70"));
        assert_eq!(normalise_path("/%7e%2f%zz%"), "/~%2F%zz%");
        assert_eq!(normalise_path("/文档%41"), "/文档A");
    }
}
