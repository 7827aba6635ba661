//! Loaders: a directory walker with gitignore-style excludes, and a JSONL corpus reader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use magpie_core::{
    content_hash, doc_id_for, Document, Error, Listing, Loader, Metadata, Result, Skipped,
    SourceRef,
};
use tracing::debug;

use crate::decode::decode;
use crate::parse::{format_for, html_to_text, markdown_sections, Format};

/// Default largest file the directory loader reads (32 MiB).
pub const DEFAULT_MAX_FILE_SIZE: u64 = 32 * 1024 * 1024;

/// Walks a directory (or takes one file) and loads text, Markdown, HTML and source files.
///
/// Honours `.gitignore`, `.ignore` and `.magpieignore` files, skips hidden files,
/// follows symbolic links (reporting loops), and takes include/exclude globs.
#[derive(Debug, Clone)]
pub struct DirectoryLoader {
    root: PathBuf,
    include: Vec<String>,
    exclude: Vec<String>,
    max_file_size: u64,
    max_depth: Option<usize>,
    hidden: bool,
    skip_dirs: Vec<PathBuf>,
}

impl DirectoryLoader {
    /// A loader for everything under `root` (a directory or a single file).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_depth: None,
            hidden: false,
            skip_dirs: Vec::new(),
        }
    }

    /// Never descend into `dir` (the index itself, when it lies inside the folder).
    /// Directories that hold a magpie index (`magpie.json` beside `catalog.json`)
    /// are always skipped.
    pub fn skip_dir(mut self, dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        self.skip_dirs
            .push(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
        self
    }

    /// Only load files matching one of these globs (e.g. `**/*.md`).
    pub fn include(mut self, globs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.include.extend(globs.into_iter().map(Into::into));
        self
    }

    /// Never load files matching these globs (gitignore syntax, e.g. `target/`, `*.log`).
    pub fn exclude(mut self, globs: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.exclude.extend(globs.into_iter().map(Into::into));
        self
    }

    /// Skip files larger than this many bytes, with a message.
    pub fn max_file_size(mut self, bytes: u64) -> Self {
        self.max_file_size = bytes;
        self
    }

    /// Descend at most this many directory levels.
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = Some(depth);
        self
    }

    /// Also load hidden files and directories.
    pub fn hidden(mut self, yes: bool) -> Self {
        self.hidden = yes;
        self
    }

    fn uri_for(&self, path: &Path) -> String {
        let rel = path.strip_prefix(&self.root).unwrap_or(path);
        let joined = if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let s = joined.to_string_lossy().replace('\\', "/");
        s.strip_prefix("./").map(str::to_string).unwrap_or(s)
    }

    fn overrides(&self) -> Result<ignore::overrides::Override> {
        let mut b = ignore::overrides::OverrideBuilder::new(&self.root);
        let bad = |g: &str, e: ignore::Error| Error::InvalidInput(format!("bad glob {g:?}: {e}"));
        for g in &self.include {
            b.add(g).map_err(|e| bad(g, e))?;
        }
        for g in &self.exclude {
            let neg = format!("!{g}");
            b.add(&neg).map_err(|e| bad(g, e))?;
        }
        b.build()
            .map_err(|e| Error::InvalidInput(format!("bad globs: {e}")))
    }
}

fn describe_walk_error(e: &ignore::Error) -> (Option<String>, String) {
    match e {
        ignore::Error::WithPath { path, err } => {
            let (_, reason) = describe_walk_error(err);
            (Some(path.to_string_lossy().into_owned()), reason)
        }
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            describe_walk_error(err)
        }
        ignore::Error::Loop { child, ancestor } => (
            Some(child.to_string_lossy().into_owned()),
            format!(
                "symbolic link loop (points back to {}); not followed",
                ancestor.display()
            ),
        ),
        ignore::Error::Io(io) => (None, format!("unreadable: {io}")),
        other => (None, other.to_string()),
    }
}

#[async_trait]
impl Loader for DirectoryLoader {
    fn origin(&self) -> String {
        std::fs::canonicalize(&self.root)
            .unwrap_or_else(|_| self.root.clone())
            .to_string_lossy()
            .into_owned()
    }

    async fn list(&self) -> Result<Listing> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.list_blocking())
            .await
            .map_err(|e| Error::stage("loader", e))?
    }

    async fn load(&self, source: &SourceRef) -> std::result::Result<Document, Skipped> {
        let this = self.clone();
        let source = source.clone();
        let uri = source.uri.clone();
        tokio::task::spawn_blocking(move || this.load_blocking(&source))
            .await
            .unwrap_or_else(|e| {
                Err(Skipped {
                    uri,
                    reason: format!("loader crashed on this file: {e}"),
                })
            })
    }
}

impl DirectoryLoader {
    fn list_blocking(&self) -> Result<Listing> {
        let meta = std::fs::metadata(&self.root).map_err(|e| {
            Error::InvalidInput(format!("cannot read {}: {e}", self.root.display()))
        })?;
        let mut listing = Listing::default();
        if meta.is_file() {
            listing.sources.push(SourceRef {
                uri: self.uri_for(&self.root),
                locator: self.root.to_string_lossy().into_owned(),
                size: Some(meta.len()),
            });
            return Ok(listing);
        }
        let mut wb = ignore::WalkBuilder::new(&self.root);
        wb.follow_links(true)
            .hidden(!self.hidden)
            .git_ignore(true)
            .git_global(false)
            .git_exclude(false)
            .require_git(false)
            .ignore(true)
            .parents(false)
            .add_custom_ignore_filename(".magpieignore")
            .max_depth(self.max_depth)
            .overrides(self.overrides()?)
            .sort_by_file_path(|a, b| a.cmp(b));
        let skip_dirs = self.skip_dirs.clone();
        wb.filter_entry(move |e| {
            if !e.file_type().is_some_and(|t| t.is_dir()) {
                return true;
            }
            let p = e.path();
            if p.join("magpie.json").is_file() && p.join("catalog.json").is_file() {
                debug!(dir = %p.display(), "skipping a magpie index directory");
                return false;
            }
            if skip_dirs.is_empty() {
                return true;
            }
            let canonical = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            !skip_dirs.contains(&canonical)
        });
        for entry in wb.build() {
            match entry {
                Ok(e) => {
                    let is_file = e.file_type().is_some_and(|t| t.is_file());
                    if !is_file {
                        if e.path_is_symlink() && std::fs::metadata(e.path()).is_err() {
                            listing.skipped.push(Skipped {
                                uri: self.uri_for(e.path()),
                                reason: "unreadable: broken symbolic link".into(),
                            });
                        }
                        continue;
                    }
                    let size = e.metadata().ok().map(|m| m.len());
                    listing.sources.push(SourceRef {
                        uri: self.uri_for(e.path()),
                        locator: e.path().to_string_lossy().into_owned(),
                        size,
                    });
                }
                Err(err) => {
                    let (path, reason) = describe_walk_error(&err);
                    listing.skipped.push(Skipped {
                        uri: path
                            .map(|p| self.uri_for(Path::new(&p)))
                            .unwrap_or_else(|| self.root.to_string_lossy().into_owned()),
                        reason,
                    });
                }
            }
        }
        debug!(
            files = listing.sources.len(),
            problems = listing.skipped.len(),
            "walked"
        );
        Ok(listing)
    }

    fn load_blocking(&self, source: &SourceRef) -> std::result::Result<Document, Skipped> {
        let skip = |reason: String| Skipped {
            uri: source.uri.clone(),
            reason,
        };
        let path = Path::new(&source.locator);
        let ext = path.extension().and_then(|e| e.to_str());
        let (format, mime) =
            format_for(ext).map_err(|name| skip(format!("unsupported format ({name})")))?;
        let meta = std::fs::metadata(path).map_err(|e| skip(format!("unreadable: {e}")))?;
        if meta.len() > self.max_file_size {
            return Err(skip(format!(
                "{} is over the {} limit; raise --max-file-size to index it",
                human_bytes(meta.len()),
                human_bytes(self.max_file_size)
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| skip(format!("unreadable: {e}")))?;
        let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if matches!(format, Format::Docx | Format::Epub | Format::Pdf) {
            let (extracted, pages) = match format {
                Format::Docx => (crate::office::docx(&bytes).map_err(skip)?, Vec::new()),
                Format::Epub => (crate::office::epub(&bytes).map_err(skip)?, Vec::new()),
                _ => {
                    let p = crate::pdf::pdf(&bytes).map_err(skip)?;
                    ((p.text, p.sections, p.title), p.pages)
                }
            };
            return document(
                source,
                &canonical,
                &bytes,
                mime,
                Metadata::new(),
                extracted,
                pages,
            )
            .map_err(skip);
        }
        let decoded = decode(&bytes).map_err(skip)?;
        if let Some(enc) = decoded.converted_from {
            debug!(uri = %source.uri, encoding = enc, "converted to UTF-8");
        }
        let mut metadata = Metadata::new();
        if let Some(enc) = decoded.converted_from {
            metadata.insert("encoding".into(), enc.into());
        }
        let extracted = match format {
            Format::Markdown => {
                let (s, t) = markdown_sections(&decoded.text);
                (decoded.text, s, t)
            }
            Format::Html => html_to_text(&decoded.text),
            Format::Text | Format::Code | Format::Docx | Format::Epub | Format::Pdf => {
                (decoded.text, Vec::new(), None)
            }
        };
        document(
            source,
            &canonical,
            &bytes,
            mime,
            metadata,
            extracted,
            Vec::new(),
        )
        .map_err(skip)
    }
}

/// The document for extracted text (refused when there is no text).
fn document(
    source: &SourceRef,
    canonical: &Path,
    bytes: &[u8],
    mime: &str,
    mut metadata: Metadata,
    (text, sections, title): crate::office::Extracted,
    pages: Vec<usize>,
) -> std::result::Result<Document, String> {
    if text.trim().is_empty() {
        return Err("no text to index after extraction".into());
    }
    metadata.insert("path".into(), source.uri.clone().into());
    if let Some(t) = title {
        metadata.insert("title".into(), t.into());
    }
    Ok(Document {
        id: doc_id_for(&canonical.to_string_lossy()),
        uri: source.uri.clone(),
        content_hash: content_hash(bytes),
        text,
        mime: mime.to_string(),
        metadata,
        sections,
        pages,
    })
}

/// "3.2 MiB"-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Documents of a JSONL corpus by id: (title, text).
type CorpusDocs = HashMap<String, (Option<String>, String)>;

/// Reads a JSON-lines corpus (one document per line), such as BEIR's `corpus.jsonl`
/// with `_id`, `title` and `text` fields. Documents keep the corpus ids.
pub struct JsonlLoader {
    path: PathBuf,
    id_field: String,
    title_field: String,
    text_field: String,
    docs: tokio::sync::OnceCell<CorpusDocs>,
}

impl JsonlLoader {
    /// A loader for a BEIR-style corpus file (`_id`, `title`, `text`).
    pub fn beir(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            id_field: "_id".into(),
            title_field: "title".into(),
            text_field: "text".into(),
            docs: tokio::sync::OnceCell::new(),
        }
    }

    /// Use other field names.
    pub fn fields(mut self, id: &str, title: &str, text: &str) -> Self {
        self.id_field = id.into();
        self.title_field = title.into();
        self.text_field = text.into();
        self
    }

    fn parse(&self) -> Result<(Vec<String>, CorpusDocs)> {
        let raw = std::fs::read_to_string(&self.path)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        let mut order = Vec::new();
        let mut docs = HashMap::new();
        for (n, line) in raw.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                Error::InvalidInput(format!("{} line {}: {e}", self.path.display(), n + 1))
            })?;
            let id = match &v[&self.id_field] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(x) => x.to_string(),
                _ => {
                    return Err(Error::InvalidInput(format!(
                        "{} line {}: no {:?} field",
                        self.path.display(),
                        n + 1,
                        self.id_field
                    )))
                }
            };
            let title = v[&self.title_field]
                .as_str()
                .filter(|s| !s.trim().is_empty())
                .map(str::to_string);
            let text = v[&self.text_field].as_str().unwrap_or("").to_string();
            order.push(id.clone());
            docs.insert(id, (title, text));
        }
        Ok((order, docs))
    }
}

#[async_trait]
impl Loader for JsonlLoader {
    fn origin(&self) -> String {
        std::fs::canonicalize(&self.path)
            .unwrap_or_else(|_| self.path.clone())
            .to_string_lossy()
            .into_owned()
    }

    async fn list(&self) -> Result<Listing> {
        let (order, docs) = self.parse()?;
        let _ = self.docs.set(docs);
        Ok(Listing {
            sources: order
                .into_iter()
                .map(|id| SourceRef {
                    locator: id.clone(),
                    uri: id,
                    size: None,
                })
                .collect(),
            skipped: vec![],
        })
    }

    async fn load(&self, source: &SourceRef) -> std::result::Result<Document, Skipped> {
        let skip = |reason: &str| Skipped {
            uri: source.uri.clone(),
            reason: reason.into(),
        };
        let docs = self
            .docs
            .get()
            .ok_or_else(|| skip("list() was not called first"))?;
        let (title, text) = docs
            .get(&source.locator)
            .ok_or_else(|| skip("not in the corpus"))?;
        if text.trim().is_empty() && title.is_none() {
            return Err(skip("empty document"));
        }
        let mut metadata = Metadata::new();
        let body = if text.trim().is_empty() {
            title.clone().unwrap_or_default()
        } else {
            text.clone()
        };
        if let Some(t) = title {
            metadata.insert("title".into(), t.clone().into());
        }
        let hash_input = format!("{}\0{}", title.as_deref().unwrap_or(""), body);
        Ok(Document {
            id: source.uri.clone(),
            uri: source.uri.clone(),
            content_hash: content_hash(hash_input.as_bytes()),
            text: body,
            mime: "text/plain".into(),
            metadata,
            sections: vec![],
            pages: vec![],
        })
    }
}
