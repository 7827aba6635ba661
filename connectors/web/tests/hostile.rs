//! A crawl against sites that try to lead it astray: redirects off the site
//! or into disallowed paths, percent-encoded links around robots.txt, an
//! endless robots.txt, compressed pages and a compression bomb.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use magpie_core::Loader;
use magpie_web::{CrawlLimits, WebLoader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a route answers: a full response, or an endless body.
#[derive(Clone)]
enum Reply {
    Whole(Vec<u8>),
    /// A head, then this line repeated until the client goes away.
    Endless(Vec<u8>, Vec<u8>),
}

fn ok(ctype: &str, extra: &str, body: &[u8]) -> Reply {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    Reply::Whole(r)
}

fn redirect(to: &str) -> Reply {
    Reply::Whole(
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .into_bytes(),
    )
}

fn html(title: &str, body: &str, links: &[&str]) -> Reply {
    let links: String = links
        .iter()
        .map(|l| format!("<a href=\"{l}\">{l}</a> "))
        .collect();
    let page = format!(
        "<html><head><title>{title}</title></head><body><h1>{title}</h1><p>{body}</p>{links}</body></html>"
    );
    ok("text/html", "", page.as_bytes())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A loopback site answering `routes` (404 for the rest), counting requests
/// per path as the client spelled it.
async fn serve(routes: HashMap<String, Reply>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let routes = Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (routes, log) = (routes.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                log.lock().unwrap().push(path.clone());
                match routes.get(&path) {
                    Some(Reply::Whole(bytes)) => {
                        let _ = sock.write_all(bytes).await;
                    }
                    Some(Reply::Endless(head, line)) => {
                        if sock.write_all(head).await.is_err() {
                            return;
                        }
                        let block = line.repeat(64 * 1024 / line.len().max(1));
                        while sock.write_all(&block).await.is_ok() {}
                    }
                    None => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .await;
                    }
                }
            });
        }
    });
    (base, seen)
}

fn limits() -> CrawlLimits {
    CrawlLimits {
        max_depth: 2,
        max_pages: 40,
        max_page_bytes: 1 << 20,
        delay: Duration::ZERO,
        timeout: Duration::from_secs(3),
        ..CrawlLimits::default()
    }
}

fn routes(pairs: Vec<(&str, Reply)>) -> HashMap<String, Reply> {
    pairs.into_iter().map(|(p, r)| (p.to_string(), r)).collect()
}

#[tokio::test]
async fn redirects_and_escapes_stay_inside_the_rules() {
    // Another origin, which the crawl must never fetch.
    let (other, other_seen) = serve(routes(vec![(
        "/",
        html("Elsewhere", "Injected text from another origin.", &[]),
    )]))
    .await;
    let page_gz = gzip(
        b"<html><head><title>Packed</title></head><body><p>Magpies cache food in autumn.</p></body></html>",
    );
    let bomb = gzip(&vec![b' '; 64 << 20]);
    let (base, seen) = serve(routes(vec![
        (
            "/robots.txt",
            ok("text/plain", "", b"User-agent: *\nDisallow: /private\n"),
        ),
        (
            "/",
            html(
                "Home",
                "The field station's pages.",
                &["/away", "/inward", "/%70rivate/a", "/gz", "/bomb", "/fine"],
            ),
        ),
        ("/away", redirect(&format!("{other}/"))),
        ("/inward", redirect("/%70rivate/b")),
        ("/fine", redirect("/landing")),
        (
            "/landing",
            html("Landing", "Reached through a redirect on the site.", &[]),
        ),
        (
            "/gz",
            ok("text/html", "content-encoding: gzip\r\n", &page_gz),
        ),
        (
            "/bomb",
            ok("text/html", "content-encoding: gzip\r\n", &bomb),
        ),
        ("/private/a", html("Secret", "Never index this.", &[])),
        ("/private/b", html("Secret", "Never index this.", &[])),
        ("/%70rivate/a", html("Secret", "Never index this.", &[])),
        ("/%70rivate/b", html("Secret", "Never index this.", &[])),
    ]))
    .await;
    let loader = WebLoader::new(&format!("{base}/"))
        .unwrap()
        .crawl(true)
        .limits(limits())
        .unwrap();
    let listing = loader.list().await.unwrap();
    let reason = |p: &str| {
        listing
            .skipped
            .iter()
            .find(|s| s.uri == format!("{base}{p}"))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{p} not skipped: {:?}", listing.skipped))
    };
    assert!(
        reason("/away").contains("off the site"),
        "{}",
        reason("/away")
    );
    assert!(
        other_seen.lock().unwrap().is_empty(),
        "the crawl left the site"
    );
    assert!(
        reason("/inward").contains("robots.txt"),
        "{}",
        reason("/inward")
    );
    assert!(reason("/%70rivate/a").contains("robots.txt"));
    let fetched = seen.lock().unwrap().clone();
    assert!(
        !fetched.iter().any(|p| p.contains("rivate")),
        "a disallowed path was fetched: {fetched:?}"
    );
    assert!(reason("/bomb").contains("limit"), "{}", reason("/bomb"));
    // The on-site redirect is followed, and the gzip page is read as text.
    let load = |p: &str| {
        let src = listing
            .sources
            .iter()
            .find(|s| s.uri == format!("{base}{p}"))
            .unwrap_or_else(|| panic!("{p} not listed: {:?}", listing.sources))
            .clone();
        let loader = &loader;
        async move { loader.load(&src).await.unwrap() }
    };
    assert!(load("/fine").await.text.contains("through a redirect"));
    let gz = load("/gz").await;
    assert!(gz.text.contains("cache food in autumn"), "{}", gz.text);
}

#[tokio::test]
async fn an_endless_robots_txt_is_read_up_to_its_cap() {
    // The rule comes first, then comments without end: the rule must hold, and
    // the crawl must neither wait for the end nor keep it all in memory.
    let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nUser-agent: *\nDisallow: /b\n".to_vec();
    let (base, seen) = serve(routes(vec![
        (
            "/robots.txt",
            Reply::Endless(head, b"# filler line\n".to_vec()),
        ),
        ("/", html("Home", "Start here.", &["/a", "/b"])),
        ("/a", html("A", "Allowed page.", &[])),
        ("/b", html("B", "Disallowed page.", &[])),
    ]))
    .await;
    let loader = WebLoader::new(&format!("{base}/"))
        .unwrap()
        .crawl(true)
        .limits(CrawlLimits {
            timeout: Duration::from_secs(20),
            ..limits()
        })
        .unwrap();
    let t0 = std::time::Instant::now();
    let listing = loader.list().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(listing.sources.iter().any(|s| s.uri.ends_with("/a")));
    assert!(
        !seen.lock().unwrap().iter().any(|p| p == "/b"),
        "robots.txt's rule was lost"
    );
}
