//! Links and where they lead: extracting `<a href>`s, and the rules a crawl
//! applies to a URL (same site, https upgrade, what robots.txt matches).

use std::collections::HashSet;

use url::Url;

/// The URL without its fragment, for de-duplication.
pub(crate) fn normalise(mut u: Url) -> Url {
    u.set_fragment(None);
    u
}

/// `to` is `from`'s host moved from http to https.
pub(crate) fn https_upgrade(from: &Url, to: &Url) -> bool {
    from.scheme() == "http" && to.scheme() == "https" && from.host_str() == to.host_str()
}

/// What robots.txt rules are matched against: the path and query.
pub(crate) fn robots_target(u: &Url) -> String {
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

pub(crate) fn same_site(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// `href`s of `<a>` elements, resolved against `base`, http(s) only, in order,
/// at most `max`.
pub fn extract_links(html: &str, base: &Url, max: usize) -> Vec<Url> {
    let lower = html.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut pos = 0;
    while let Some(i) = lower[pos..].find("<a").map(|i| pos + i) {
        pos = i + 2;
        // `<a ` or `<a\n`, not `<abbr`.
        if !lower[pos..].starts_with(|c: char| c.is_whitespace()) {
            continue;
        }
        let Some(end) = lower[pos..].find('>').map(|e| pos + e) else {
            break;
        };
        let tag = &html[pos..end];
        let tag_l = &lower[pos..end];
        pos = end;
        let Some(h) = tag_l.find("href") else {
            continue;
        };
        let rest = tag[h + 4..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
            _ => rest.split(|c: char| c.is_whitespace()).next().unwrap_or(""),
        };
        let value = value.replace("&amp;", "&");
        let Ok(u) = base.join(value.trim()) else {
            continue;
        };
        if u.scheme() != "http" && u.scheme() != "https" {
            continue;
        }
        let u = normalise(u);
        if seen.insert(u.to_string()) {
            out.push(u);
            if out.len() >= max {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_resolved_and_deduplicated() {
        let base = Url::parse("http://site.test/docs/index.html").unwrap();
        let html = r#"<a href="a.html">A</a> <A HREF='/b#x'>B</A> <a href=c.html>C</a>
            <abbr>no</abbr> <a name="x">no href</a> <a href="mailto:x@y">m</a>
            <a href="a.html#top">dup</a> <a href="https://other.test/">o</a>"#;
        let links: Vec<String> = extract_links(html, &base, 100)
            .into_iter()
            .map(|u| u.to_string())
            .collect();
        assert_eq!(
            links,
            [
                "http://site.test/docs/a.html",
                "http://site.test/b",
                "http://site.test/docs/c.html",
                "https://other.test/"
            ]
        );
        assert_eq!(extract_links(html, &base, 2).len(), 2);
    }
}
