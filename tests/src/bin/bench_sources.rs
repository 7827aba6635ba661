//! Sources benchmark: pages/s extracting a 300-page text PDF, pages/s crawling
//! a site on loopback, and the peak RSS of each.
//!
//!   cargo run -p magpie-tests --bin bench_sources [-- PDF_PAGES SITE_PAGES]

use std::time::{Duration, Instant};

use magpie_core::Loader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pdf_pages = args.first().copied().unwrap_or(300);
    let site_pages = args.get(1).copied().unwrap_or(300);

    // A text PDF: 40 lines of prose per page.
    let lines: Vec<Vec<String>> = (0..pdf_pages)
        .map(|p| {
            (0..40)
                .map(|l| {
                    format!(
                        "Page {p} line {l}: the magpie stores bright objects near its domed nest."
                    )
                })
                .collect()
        })
        .collect();
    let refs: Vec<Vec<&str>> = lines
        .iter()
        .map(|p| p.iter().map(|s| s.as_str()).collect())
        .collect();
    let slices: Vec<&[&str]> = refs.iter().map(|p| p.as_slice()).collect();
    let pdf = magpie_tests::docs::make_pdf(&slices, Some("Benchmark"));
    let rss0 = magpie_core::guard::peak_rss_mib().unwrap_or(f64::NAN);
    let t0 = Instant::now();
    let text = magpie_files::pdf::pdf(&pdf).expect("the benchmark PDF extracts");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(text.pages.len(), pdf_pages);
    println!(
        "pdf: {pdf_pages} pages ({} KiB) in {secs:.2} s = {:.0} pages/s; {} chars; peak RSS {:.0} MiB (before: {rss0:.0})",
        pdf.len() / 1024,
        pdf_pages as f64 / secs,
        text.text.len(),
        magpie_core::guard::peak_rss_mib().unwrap_or(f64::NAN)
    );

    // A site: page i links to the next 5 pages.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let i: usize = path.trim_start_matches('/').parse().unwrap_or(0);
                let body = if path == "/robots.txt" {
                    "User-agent: *\nAllow: /\n".to_string()
                } else {
                    let links: String = (i + 1..i + 6)
                        .map(|j| format!("<a href=\"/{j}\">page {j}</a> "))
                        .collect();
                    format!(
                        "<html><head><title>Page {i}</title></head><body><h1>Page {i}</h1>\
                         <p>{}</p>{links}</body></html>",
                        "Magpies are corvids that live in open country. ".repeat(40)
                    )
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    let loader = magpie_web::WebLoader::new(&format!("{base}/0"))
        .unwrap()
        .crawl(true)
        .limits(magpie_web::CrawlLimits {
            max_depth: usize::MAX,
            max_pages: site_pages,
            delay: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    let t0 = Instant::now();
    let listing = loader.list().await.unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "crawl: {} pages in {secs:.2} s = {:.0} pages/s (fetch + extract + links, one connection at a time, no delay); peak RSS {:.0} MiB",
        listing.sources.len(),
        listing.sources.len() as f64 / secs,
        magpie_core::guard::peak_rss_mib().unwrap_or(f64::NAN)
    );
}
