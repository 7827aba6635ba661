//! magpie-web: web pages and sites as documents.
//!
//! [`WebLoader`] fetches one page, or crawls a site (`crawl`): links on the same
//! host, breadth first, within limits on depth, pages, bytes and rate; it
//! honours robots.txt (and its Crawl-delay), sends an honest user agent,
//! follows a bounded number of redirects, indexes HTML (main text, headings),
//! plain text, Markdown and PDF, and skips other content types with a reason.
//! Re-crawling sends `If-None-Match` / `If-Modified-Since` from a cache kept
//! beside the index: an unchanged page costs one conditional request and no
//! embedding (the pipeline sees the same content hash).
//!
//! Servers with the OpenAI API as remote models are `magpie-openai`'s.

mod links;
mod robots;

pub use links::extract_links;
use links::{https_upgrade, normalise, robots_target, same_site};
pub use robots::Robots;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use magpie_core::{
    content_hash, doc_id_for, Document, Listing, Loader, Metadata, Result, Skipped, SourceRef,
};
use serde::{Deserialize, Serialize};
use url::Url;

/// The user agent magpie sends: who is asking, and the robots.txt token it obeys.
pub const USER_AGENT: &str = concat!(
    "magpie/",
    env!("CARGO_PKG_VERSION"),
    " (document indexer; robots.txt token: magpie)"
);

/// Bounds on a fetch or a crawl.
#[derive(Debug, Clone)]
pub struct CrawlLimits {
    /// Link depth from the start page (0: the start page only).
    pub max_depth: usize,
    /// Pages fetched at most.
    pub max_pages: usize,
    /// Largest page body, bytes.
    pub max_page_bytes: usize,
    /// All bodies together, bytes.
    pub max_total_bytes: usize,
    /// Pause between requests to the site (raised by robots.txt's Crawl-delay).
    pub delay: Duration,
    /// One request, body included.
    pub timeout: Duration,
    /// Redirects followed per request.
    pub max_redirects: usize,
    /// Links taken from one page at most.
    pub max_links_per_page: usize,
}

impl Default for CrawlLimits {
    fn default() -> Self {
        Self {
            max_depth: 3,
            max_pages: 200,
            max_page_bytes: 10 << 20,
            max_total_bytes: 200 << 20,
            delay: Duration::from_millis(250),
            timeout: Duration::from_secs(20),
            max_redirects: 5,
            max_links_per_page: 2000,
        }
    }
}

/// What the cache remembers of a page between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CacheEntry {
    etag: Option<String>,
    last_modified: Option<String>,
    hash: String,
    links: Vec<String>,
}

/// A page fetched in this run.
#[derive(Debug, Clone)]
enum Fetched {
    /// A new or changed page.
    Page(Document),
    /// Unchanged since the last run (304): only its hash is known.
    Unchanged { hash: String },
    /// Not indexed, and why.
    Skipped(String),
}

/// Web pages as documents.
pub struct WebLoader {
    start: Url,
    crawl: bool,
    limits: CrawlLimits,
    cache_path: Option<PathBuf>,
    client: reqwest::Client,
    fetched: Mutex<HashMap<String, Fetched>>,
    /// What the index holds (uri → hash), when the pipeline said.
    held: Mutex<Option<HashMap<String, String>>>,
}

impl WebLoader {
    /// A loader for `url` (one page unless [`WebLoader::crawl`]).
    pub fn new(url: &str) -> std::result::Result<Self, String> {
        let start = Url::parse(url).map_err(|e| format!("`{url}` is not a valid URL: {e}"))?;
        if start.scheme() != "http" && start.scheme() != "https" {
            return Err(format!("`{url}` is not an http(s) URL"));
        }
        let limits = CrawlLimits::default();
        Ok(Self {
            client: client(&limits)?,
            start,
            crawl: false,
            limits,
            cache_path: None,
            fetched: Mutex::new(HashMap::new()),
            held: Mutex::new(None),
        })
    }

    /// Follow links on the same site.
    pub fn crawl(mut self, yes: bool) -> Self {
        self.crawl = yes;
        self
    }

    /// Set the limits.
    pub fn limits(mut self, limits: CrawlLimits) -> std::result::Result<Self, String> {
        self.client = client(&limits)?;
        self.limits = limits;
        Ok(self)
    }

    /// Keep ETags, Last-Modified dates and content hashes in this file between runs.
    pub fn cache(mut self, path: impl Into<PathBuf>) -> Self {
        self.cache_path = Some(path.into());
        self
    }

    fn read_cache(&self) -> HashMap<String, CacheEntry> {
        self.cache_path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn write_cache(&self, cache: &HashMap<String, CacheEntry>) {
        let Some(path) = &self.cache_path else { return };
        match serde_json::to_vec(cache) {
            Ok(bytes) => {
                if let Err(e) = magpie_core::atomic_write(path, &bytes) {
                    tracing::warn!(path = %path.display(), "cannot write the web cache: {e}");
                }
            }
            Err(e) => tracing::warn!("cannot encode the web cache: {e}"),
        }
    }

    /// Where a redirect leads, checked like a link: on a crawl it must stay on
    /// the start's site (an `http` to `https` upgrade of the same host is
    /// fine) and robots.txt must allow it.
    fn redirect_target(
        &self,
        resp: &reqwest::Response,
        robots: &Robots,
    ) -> std::result::Result<Url, String> {
        let location = resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("HTTP {} redirect without a Location", resp.status()))?;
        let next = resp
            .url()
            .join(location.trim())
            .map_err(|e| format!("redirect to an invalid URL {location:?}: {e}"))?;
        if next.scheme() != "http" && next.scheme() != "https" {
            return Err(format!("redirect to {next}, which is not http(s)"));
        }
        if self.crawl {
            if !same_site(&next, &self.start) && !https_upgrade(&self.start, &next) {
                return Err(format!("redirect off the site, to {next}"));
            }
            if !robots.allowed(&robots_target(&next)) {
                return Err(format!("redirect to {next}, which robots.txt disallows"));
            }
        }
        Ok(next)
    }

    /// Fetch one page (conditionally when the cache knows it).
    async fn fetch(
        &self,
        url: &Url,
        cached: Option<&CacheEntry>,
        budget: &mut usize,
        robots: &Robots,
    ) -> (Fetched, Vec<Url>, Option<CacheEntry>) {
        let mut req = self.client.get(url.clone());
        // Ask "changed since?" only for pages the index holds as cached: a page
        // cached by a run that died before the index committed is fetched whole.
        let cached = cached.filter(|c| {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .is_none_or(|held| held.get(url.as_str()) == Some(&c.hash))
        });
        if let Some(c) = cached {
            if let Some(e) = &c.etag {
                req = req.header(reqwest::header::IF_NONE_MATCH, e);
            }
            if let Some(m) = &c.last_modified {
                req = req.header(reqwest::header::IF_MODIFIED_SINCE, m);
            }
        }
        let limits = &self.limits;
        let work = async {
            let mut resp = req.send().await.map_err(|e| magpie_core::error_chain(&e))?;
            let mut hops = 0;
            while resp.status().is_redirection()
                && resp.status() != reqwest::StatusCode::NOT_MODIFIED
            {
                let next = self.redirect_target(&resp, robots)?;
                hops += 1;
                if hops > limits.max_redirects {
                    return Err(format!(
                        "more than {} redirects (the last to {next})",
                        limits.max_redirects
                    ));
                }
                resp = self
                    .client
                    .get(next)
                    .send()
                    .await
                    .map_err(|e| magpie_core::error_chain(&e))?;
            }
            let status = resp.status();
            let final_url = resp.url().clone();
            if status == reqwest::StatusCode::NOT_MODIFIED {
                return Ok((None, final_url, resp.headers().clone(), status));
            }
            if !status.is_success() {
                return Err(format!("HTTP {status}"));
            }
            if let Some(len) = resp.content_length() {
                if len as usize > limits.max_page_bytes {
                    return Err(format!(
                        "the page is {len} bytes; the limit is {}",
                        limits.max_page_bytes
                    ));
                }
            }
            let headers = resp.headers().clone();
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| magpie_core::error_chain(&e))?
            {
                if body.len() + chunk.len() > limits.max_page_bytes {
                    return Err(format!(
                        "the page is over the limit of {} bytes",
                        limits.max_page_bytes
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((Some(body), final_url, headers, status))
        };
        let (body, final_url, headers) = match tokio::time::timeout(limits.timeout, work).await {
            Err(_) => {
                return (
                    Fetched::Skipped(format!("no complete answer within {:?}", limits.timeout)),
                    vec![],
                    None,
                )
            }
            Ok(Err(e)) => return (Fetched::Skipped(e), vec![], None),
            Ok(Ok((body, u, h, _))) => (body, u, h),
        };
        let header = |name: reqwest::header::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        let Some(body) = body else {
            // 304: the page is as it was.
            let c = cached.cloned().unwrap_or_default();
            let links = c.links.iter().filter_map(|l| Url::parse(l).ok()).collect();
            return (
                Fetched::Unchanged {
                    hash: c.hash.clone(),
                },
                links,
                Some(c),
            );
        };
        if body.len() > *budget {
            return (
                Fetched::Skipped("the crawl's total byte limit is reached".into()),
                vec![],
                None,
            );
        }
        *budget -= body.len();
        let ctype = header(reqwest::header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let mime = ctype.split(';').next().unwrap_or("").trim().to_string();
        let hash = content_hash(&body);
        let mut links = Vec::new();
        let (text, sections, title, pages) = if mime == "text/html"
            || mime == "application/xhtml+xml"
            || (mime.is_empty() && body.trim_ascii_start().starts_with(b"<"))
        {
            let html = String::from_utf8_lossy(&body);
            links = extract_links(&html, &final_url, self.limits.max_links_per_page);
            let (t, s, title) = magpie_files::parse::html_to_text(&html);
            (t, s, title, Vec::new())
        } else if mime.starts_with("text/") {
            let text = String::from_utf8_lossy(&body).into_owned();
            let (s, t) = if mime == "text/markdown" {
                magpie_files::parse::markdown_sections(&text)
            } else {
                (Vec::new(), None)
            };
            (text, s, t, Vec::new())
        } else if mime == "application/pdf" {
            match magpie_files::pdf::pdf(&body) {
                Ok(p) => (p.text, p.sections, p.title, p.pages),
                Err(e) => return (Fetched::Skipped(e), vec![], None),
            }
        } else {
            return (
                Fetched::Skipped(format!(
                    "content type {} is not indexed (HTML, text, Markdown and PDF are)",
                    if mime.is_empty() { "(none)" } else { &mime }
                )),
                vec![],
                None,
            );
        };
        let entry = CacheEntry {
            etag: header(reqwest::header::ETAG),
            last_modified: header(reqwest::header::LAST_MODIFIED),
            hash: hash.clone(),
            links: links.iter().map(|u| u.to_string()).collect(),
        };
        if text.trim().is_empty() {
            return (
                Fetched::Skipped("no text to index after extraction".into()),
                links,
                Some(entry),
            );
        }
        let mut metadata = Metadata::new();
        metadata.insert("url".into(), final_url.to_string().into());
        if let Some(t) = title {
            metadata.insert("title".into(), t.into());
        }
        let doc = Document {
            id: doc_id_for(url.as_str()),
            uri: url.to_string(),
            text,
            mime: if mime.is_empty() {
                "text/html".into()
            } else {
                mime
            },
            metadata,
            sections,
            content_hash: hash,
            pages,
        };
        (Fetched::Page(doc), links, Some(entry))
    }
}

fn client(limits: &CrawlLimits) -> std::result::Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        // Redirects are followed by hand, each hop checked like a link.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(limits.timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[async_trait]
impl Loader for WebLoader {
    fn origin(&self) -> String {
        self.start.to_string()
    }

    fn indexed(&self, held: &HashMap<String, String>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(held.clone());
    }

    /// Fetch the page (or crawl the site); documents are kept for `load`.
    async fn list(&self) -> Result<Listing> {
        let mut cache = self.read_cache();
        let start = normalise(self.start.clone());
        let robots = if self.crawl {
            Robots::fetch(&self.client, &start, self.limits.timeout).await
        } else {
            Robots::allow_all()
        };
        let delay = robots
            .crawl_delay()
            .map(|d| d.max(self.limits.delay))
            .unwrap_or(self.limits.delay);
        let mut queue: VecDeque<(Url, usize)> = VecDeque::from([(start.clone(), 0)]);
        let mut queued: HashSet<String> = HashSet::from([start.to_string()]);
        let mut listing = Listing::default();
        let mut budget = self.limits.max_total_bytes;
        let mut last: Option<Instant> = None;
        let mut pages = 0usize;
        while let Some((url, depth)) = queue.pop_front() {
            if pages >= self.limits.max_pages {
                tracing::info!(
                    limit = self.limits.max_pages,
                    "page limit reached; crawl stops"
                );
                break;
            }
            if !robots.allowed(&robots_target(&url)) {
                listing.skipped.push(Skipped {
                    uri: url.to_string(),
                    reason: "disallowed by robots.txt".into(),
                });
                continue;
            }
            if let Some(t) = last {
                let wait = delay.saturating_sub(t.elapsed());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            last = Some(Instant::now());
            pages += 1;
            let (fetched, links, entry) = self
                .fetch(&url, cache.get(url.as_str()), &mut budget, &robots)
                .await;
            tracing::debug!(url = %url, "fetched");
            if let Some(e) = entry {
                cache.insert(url.to_string(), e);
            }
            match &fetched {
                Fetched::Skipped(reason) => listing.skipped.push(Skipped {
                    uri: url.to_string(),
                    reason: reason.clone(),
                }),
                _ => listing.sources.push(SourceRef {
                    uri: url.to_string(),
                    locator: url.to_string(),
                    size: None,
                }),
            }
            if !matches!(fetched, Fetched::Skipped(_)) {
                self.fetched
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(url.to_string(), fetched);
            }
            if self.crawl && depth < self.limits.max_depth {
                for l in links {
                    if same_site(&l, &start)
                        && queued.len() < self.limits.max_pages * 20
                        && queued.insert(l.to_string())
                    {
                        queue.push_back((l, depth + 1));
                    }
                }
            }
        }
        self.write_cache(&cache);
        Ok(listing)
    }

    async fn load(&self, source: &SourceRef) -> std::result::Result<Document, Skipped> {
        let skip = |reason: &str| Skipped {
            uri: source.uri.clone(),
            reason: reason.to_string(),
        };
        let fetched = self
            .fetched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&source.uri)
            .ok_or_else(|| skip("not fetched in this run"))?;
        match fetched {
            Fetched::Page(doc) => Ok(doc),
            // The pipeline compares hashes before splitting: an unchanged page
            // is counted as unchanged and never re-embedded.
            Fetched::Unchanged { hash } => Ok(Document {
                id: doc_id_for(&source.uri),
                uri: source.uri.clone(),
                text: String::new(),
                mime: "text/html".into(),
                metadata: Metadata::new(),
                sections: Vec::new(),
                content_hash: hash,
                pages: Vec::new(),
            }),
            Fetched::Skipped(reason) => Err(skip(&reason)),
        }
    }
}
