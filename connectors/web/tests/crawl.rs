//! Crawling a real HTTP server on loopback: links, robots.txt, redirects, a slow
//! page, a failing page, a page with 100,000 links, a non-text type, and a
//! second crawl answered by conditional requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use magpie_core::Loader;
use magpie_web::{CrawlLimits, WebLoader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Counts {
    requests: AtomicUsize,
    not_modified: AtomicUsize,
    private: AtomicUsize,
}

fn page(title: &str, body: &str, links: &[&str]) -> String {
    let links: String = links
        .iter()
        .map(|l| format!("<li><a href=\"{l}\">{l}</a></li>"))
        .collect();
    format!(
        "<html><head><title>{title}</title></head><body><nav><a href=\"/\">home</a></nav>\
         <h1>{title}</h1><p>{body}</p><ul>{links}</ul></body></html>"
    )
}

async fn site() -> (String, Arc<Counts>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                c.requests.fetch_add(1, Ordering::SeqCst);
                let etag = format!("\"v1{}\"", path.replace('/', "-"));
                let has_etag = req.lines().any(|l| {
                    l.to_ascii_lowercase().starts_with("if-none-match:") && l.contains(&etag)
                });
                let html = |s: String| ("200 OK", "text/html; charset=utf-8", s.into_bytes());
                let (status, ctype, body): (&str, &str, Vec<u8>) = match path.as_str() {
                    "/robots.txt" => (
                        "200 OK",
                        "text/plain",
                        b"User-agent: *\nDisallow: /private\n".to_vec(),
                    ),
                    "/" => html(page(
                        "Home",
                        "Welcome to the magpie field station.",
                        &[
                            "/a",
                            "/b",
                            "/private/secret",
                            "/slow",
                            "/loop",
                            "/broken",
                            "/many",
                            "/image.png",
                            "http://other.test/",
                        ],
                    )),
                    "/a" => html(page(
                        "Nesting",
                        "Magpies build domed nests of twigs and mud.",
                        &["/a/deeper"],
                    )),
                    "/a/deeper" => html(page("Eggs", "A clutch holds five to eight eggs.", &[])),
                    "/b" => html(page("Calls", "The call is a harsh chatter.", &["/a"])),
                    "/private/secret" => {
                        c.private.fetch_add(1, Ordering::SeqCst);
                        html(page("Secret", "Never index this.", &[]))
                    }
                    "/slow" => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 100000\r\n\r\n<html>")
                            .await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    "/loop" => {
                        let _ = sock
                            .write_all(b"HTTP/1.1 302 Found\r\nlocation: /loop\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    "/broken" => ("500 Internal Server Error", "text/plain", b"oops".to_vec()),
                    "/many" => {
                        let links: Vec<String> =
                            (0..100_000).map(|i| format!("/many/{i}")).collect();
                        let refs: Vec<&str> = links.iter().map(|s| s.as_str()).collect();
                        html(page("Many", "A page with a hundred thousand links.", &refs))
                    }
                    "/image.png" => ("200 OK", "image/png", vec![0x89, b'P', b'N', b'G']),
                    p if p.starts_with("/many/") => {
                        html(page("Leaf", &format!("Leaf page {p}."), &[]))
                    }
                    _ => ("404 Not Found", "text/plain", b"no".to_vec()),
                };
                if has_etag && status.starts_with("200") && ctype.starts_with("text/html") {
                    c.not_modified.fetch_add(1, Ordering::SeqCst);
                    let _ = sock
                        .write_all(format!("HTTP/1.1 304 Not Modified\r\netag: {etag}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                        .await;
                    return;
                }
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\netag: {etag}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
            });
        }
    });
    (base, counts)
}

fn limits() -> CrawlLimits {
    CrawlLimits {
        max_depth: 3,
        max_pages: 25,
        delay: Duration::ZERO,
        timeout: Duration::from_secs(2),
        ..CrawlLimits::default()
    }
}

#[tokio::test]
async fn crawl_is_bounded_polite_and_incremental() {
    let (base, counts) = site().await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("web-cache.json");
    let loader = WebLoader::new(&format!("{base}/"))
        .unwrap()
        .crawl(true)
        .limits(limits())
        .unwrap()
        .cache(&cache);
    let listing = loader.list().await.unwrap();
    let uris: Vec<&str> = listing.sources.iter().map(|s| s.uri.as_str()).collect();
    for p in ["/", "/a", "/b", "/a/deeper"] {
        assert!(
            uris.contains(&format!("{base}{p}").as_str()),
            "{p} missing: {uris:?}"
        );
    }
    let reason = |p: &str| {
        listing
            .skipped
            .iter()
            .find(|s| s.uri == format!("{base}{p}"))
            .map(|s| s.reason.clone())
            .unwrap_or_else(|| panic!("{p} not skipped: {:?}", listing.skipped))
    };
    assert!(reason("/private/secret").contains("robots.txt"));
    assert!(reason("/slow").contains("no complete answer"));
    assert!(reason("/loop").to_lowercase().contains("redirect"));
    assert!(reason("/broken").contains("500"));
    assert!(reason("/image.png").contains("image/png"));
    assert_eq!(
        counts.private.load(Ordering::SeqCst),
        0,
        "robots.txt was ignored"
    );
    assert!(
        !uris.iter().any(|u| u.contains("other.test")),
        "left the site"
    );
    // 25 pages at most, whatever /many links to (robots.txt is the one extra request).
    let first_requests = counts.requests.load(Ordering::SeqCst);
    assert!(first_requests <= 25 + 1 + 5, "{first_requests} requests");
    assert!(uris.len() + listing.skipped.len() <= 26);

    let doc = loader
        .load(
            listing
                .sources
                .iter()
                .find(|s| s.uri.ends_with("/a"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(doc.text.contains("domed nests"), "{}", doc.text);
    assert!(!doc.text.contains("home"), "navigation kept: {}", doc.text);
    assert_eq!(doc.metadata["title"], "Nesting");
    let hash_a = doc.content_hash.clone();

    // Second crawl: every HTML page answers 304 to its ETag; same hashes, no bodies.
    let again = WebLoader::new(&format!("{base}/"))
        .unwrap()
        .crawl(true)
        .limits(limits())
        .unwrap()
        .cache(&cache);
    let listing2 = again.list().await.unwrap();
    assert!(
        counts.not_modified.load(Ordering::SeqCst) >= 4,
        "no conditional requests"
    );
    let src = listing2
        .sources
        .iter()
        .find(|s| s.uri.ends_with("/a"))
        .unwrap();
    let doc2 = again.load(src).await.unwrap();
    assert_eq!(doc2.content_hash, hash_a);
    assert!(doc2.text.is_empty(), "an unchanged page is not re-read");
    // The unchanged page's links were remembered: /a/deeper is still reached.
    assert!(listing2
        .sources
        .iter()
        .any(|s| s.uri.ends_with("/a/deeper")));
}

#[tokio::test]
async fn one_page_without_crawl() {
    let (base, counts) = site().await;
    let loader = WebLoader::new(&format!("{base}/b"))
        .unwrap()
        .limits(limits())
        .unwrap();
    let listing = loader.list().await.unwrap();
    assert_eq!(listing.sources.len(), 1);
    assert_eq!(
        counts.requests.load(Ordering::SeqCst),
        1,
        "one request, no robots.txt, no links"
    );
    assert!(WebLoader::new("ftp://x/").is_err());
    assert!(WebLoader::new("not a url").is_err());
}

#[tokio::test]
async fn a_crawl_killed_before_the_index_committed_is_fetched_again_in_full() {
    let (base, counts) = site().await;
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("web-cache.json");
    let loader = |held: Option<HashMap<String, String>>| {
        let l = WebLoader::new(&format!("{base}/"))
            .unwrap()
            .crawl(true)
            .limits(limits())
            .unwrap()
            .cache(&cache);
        if let Some(h) = held {
            l.indexed(&h);
        }
        l
    };
    // The first run fetches and writes the cache, then dies: the index holds nothing.
    let first = loader(Some(HashMap::new()));
    let listing = first.list().await.unwrap();
    assert!(cache.is_file(), "the cache was written");
    let a = listing
        .sources
        .iter()
        .find(|s| s.uri.ends_with("/a"))
        .unwrap()
        .clone();
    let hash_a = first.load(&a).await.unwrap().content_hash;
    drop(first);

    // The re-run is told the index is empty: no conditional requests, whole pages.
    let rerun = loader(Some(HashMap::new()));
    rerun.list().await.unwrap();
    assert_eq!(
        counts.not_modified.load(Ordering::SeqCst),
        0,
        "a page the index lacks was asked for conditionally"
    );
    let doc = rerun.load(&a).await.unwrap();
    assert!(doc.text.contains("domed nests"), "{}", doc.text);

    // Once the index holds /a with that hash, /a is asked for conditionally (304)
    // and the others, which the index still lacks, are fetched whole.
    let held = HashMap::from([(a.uri.clone(), hash_a.clone())]);
    let committed = loader(Some(held));
    committed.list().await.unwrap();
    assert_eq!(counts.not_modified.load(Ordering::SeqCst), 1);
    let doc = committed.load(&a).await.unwrap();
    assert!(doc.text.is_empty() && doc.content_hash == hash_a);
    let b = committed
        .load(&magpie_core::SourceRef {
            uri: format!("{base}/b"),
            locator: format!("{base}/b"),
            size: None,
        })
        .await
        .unwrap();
    assert!(b.text.contains("harsh chatter"), "{}", b.text);
}
