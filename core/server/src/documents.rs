//! Documents over HTTP: uploads written to disk before they are acknowledged,
//! indexed one at a time by a background worker; listing, deletion, jobs.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use axum::extract::{FromRequest, Multipart, Path as UrlPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use magpie_core::{Catalog, Document, Listing, Loader, Skipped, SourceRef};
use magpie_files::DirectoryLoader;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::indexer::Job;
use super::{ApiError, ApiJson, App};

/// What a client polls.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct JobInfo {
    pub id: String,
    pub status: JobStatus,
    /// The uploaded file's name, or the watched directory.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Value>,
    pub created: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Done,
    Failed,
}

/// The catalog as last committed (never waits for indexing): the file, or
/// with a Qdrant store the catalog every server of the collection shares.
pub async fn catalog(app: &App) -> Result<Catalog, ApiError> {
    app.engine.catalog().await.map_err(ApiError::internal)
}

/// The kind of a job's record in a shared (Qdrant) index.
const JOB_RECORD: &str = "job";

/// With a Qdrant store, jobs are written there too (in order, off the request
/// path), so every server of the collection can answer for them.
pub fn publish_jobs(app: &App) -> Option<tokio::sync::mpsc::UnboundedSender<JobInfo>> {
    let shared = app.engine.shared.clone()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<JobInfo>();
    tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            let value = match serde_json::to_value(&job) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Err(e) = shared.put_record(JOB_RECORD, &job.id, &value).await {
                tracing::warn!(job = %job.id, "could not record the job in Qdrant: {e}");
            }
        }
    });
    Some(tx)
}

fn publish(app: &App, job: &JobInfo) {
    if let Some(tx) = app.job_sink.get() {
        let _ = tx.send(job.clone());
    }
}

pub fn job_counts(app: &App) -> (usize, usize) {
    let jobs = app.jobs.lock().unwrap();
    let count = |s| jobs.values().filter(|j| j.status == s).count();
    (count(JobStatus::Queued), count(JobStatus::Running))
}

pub(super) fn set_job(app: &App, id: &str, f: impl FnOnce(&mut JobInfo)) {
    let changed = app.jobs.lock().unwrap().get_mut(id).map(|j| {
        f(j);
        j.clone()
    });
    if let Some(j) = changed {
        publish(app, &j);
    }
}

/// Record a job as queued (without queueing it).
pub(super) fn register(
    app: &App,
    id: &str,
    source: String,
    document_id: Option<String>,
) -> JobInfo {
    let info = JobInfo {
        id: id.to_string(),
        status: JobStatus::Queued,
        source,
        document_id,
        error: None,
        report: None,
        created: super::unix_now(),
    };
    let mut jobs = app.jobs.lock().unwrap();
    // Keep the most recent finished jobs only.
    if jobs.len() > 10_000 {
        let mut done: Vec<(u64, String)> = jobs
            .values()
            .filter(|j| matches!(j.status, JobStatus::Done | JobStatus::Failed))
            .map(|j| (j.created, j.id.clone()))
            .collect();
        done.sort();
        for (_, id) in done.iter().take(done.len() / 2) {
            jobs.remove(id);
        }
    }
    jobs.insert(info.id.clone(), info.clone());
    drop(jobs);
    publish(app, &info);
    info
}

/// Register and queue a job; 503 when the queue is full or indexing is down.
fn enqueue(
    app: &App,
    job: Job,
    source: String,
    document_id: Option<String>,
) -> Result<JobInfo, ApiError> {
    if !app.indexing_up.load(Ordering::SeqCst) {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "indexing_down",
            "indexing is stopped after repeated crashes (see the server's log); restart the \
             server, search and answers still work",
        );
        e.retry_after = Some(60);
        return Err(e);
    }
    let info = register(app, job.id(), source, document_id);
    if app.job_tx.try_send(job).is_err() {
        app.jobs.lock().unwrap().remove(&info.id);
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many documents are waiting to be indexed; retry later",
        );
        e.retry_after = Some(30);
        return Err(e);
    }
    Ok(info)
}

/// The finished file of an upload directory: never a hidden file (a temporary
/// file of an unfinished write, `.<name>.tmp`, or the server's own bookkeeping).
/// Upload names never start with a dot (see [`sanitize_name`]).
pub(super) fn upload_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
}

pub(super) fn display_name(file: &Path) -> String {
    file.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The id the index gives the document at `file` (its canonical path's).
pub(super) fn document_id(file: &Path) -> String {
    let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    magpie_core::doc_id_for(&canonical.to_string_lossy())
}

/// Keep a watched directory indexed: a sync now and after every batch of changes.
pub fn watch(app: Arc<App>, dir: PathBuf, index: &Path) -> Result<tokio::task::JoinHandle<()>> {
    let mut changes = magpie::Changes::new(&dir, index)?;
    let source = dir.display().to_string();
    let _ = enqueue(
        &app,
        Job::Sync {
            id: uuid::Uuid::new_v4().to_string(),
            dir: dir.clone(),
        },
        source.clone(),
        None,
    );
    Ok(tokio::spawn(async move {
        while changes.next_batch().await {
            if app.stopping.load(Ordering::SeqCst) {
                break;
            }
            let job = Job::Sync {
                id: uuid::Uuid::new_v4().to_string(),
                dir: dir.clone(),
            };
            if let Err(e) = enqueue(&app, job, source.clone(), None) {
                tracing::warn!("watched folder change not queued: {}", e.message);
            }
        }
    }))
}

/// Loads one uploaded file, naming it by its file name (not its path on the server).
pub(super) struct UploadLoader {
    inner: DirectoryLoader,
    name: String,
}

impl UploadLoader {
    pub(super) fn new(file: &Path, max: u64) -> Self {
        Self {
            inner: DirectoryLoader::new(file).max_file_size(max),
            name: display_name(file),
        }
    }
}

#[async_trait]
impl Loader for UploadLoader {
    fn origin(&self) -> String {
        self.inner.origin()
    }
    async fn list(&self) -> magpie_core::Result<Listing> {
        self.inner.list().await
    }
    async fn load(&self, source: &SourceRef) -> std::result::Result<Document, Skipped> {
        let mut doc = self.inner.load(source).await.map_err(|mut s| {
            s.uri = self.name.clone();
            s
        })?;
        doc.uri = self.name.clone();
        doc.metadata
            .insert("path".into(), Value::String(self.name.clone()));
        Ok(doc)
    }
}

// ---- handlers ----

/// A document sent as JSON.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDocument {
    text: String,
    title: Option<String>,
    /// File name to show in citations (its extension picks the format).
    name: Option<String>,
    /// text, markdown or html (default: from the name, else text).
    format: Option<String>,
}

/// `POST /v1/documents`: JSON `{text, title?, name?, format?}` or a multipart
/// upload (field `file`). 202 with a job to poll.
pub async fn add(State(app): State<Arc<App>>, req: Request) -> Result<Response, ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (name, bytes) = if is_multipart {
        let mut mp = Multipart::from_request(req, &())
            .await
            .map_err(|e| ApiError::new(e.status(), "invalid_request_error", e.body_text()))?;
        let mut got = None;
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| multipart_error(e.status(), e.body_text()))?
        {
            let Some(fname) = field.file_name().map(str::to_string) else {
                continue;
            };
            let data = field
                .bytes()
                .await
                .map_err(|e| multipart_error(e.status(), e.body_text()))?;
            got = Some((fname, data.to_vec()));
            break;
        }
        got.ok_or_else(|| {
            ApiError::bad_request(
                "the upload has no file: send it in a multipart field with a filename",
            )
        })?
    } else {
        let ApiJson(doc) = ApiJson::<NewDocument>::from_request(req, &()).await?;
        if doc.text.trim().is_empty() {
            return Err(ApiError::bad_request("the document's text is empty"));
        }
        let ext = match doc.format.as_deref() {
            None => None,
            Some("text") => Some("txt"),
            Some("markdown") => Some("md"),
            Some("html") => Some("html"),
            Some(f) => {
                return Err(ApiError::bad_request(format!(
                    "unknown format {f:?}: use text, markdown or html"
                )))
            }
        };
        let base = doc
            .name
            .or(doc.title.clone())
            .unwrap_or_else(|| "document".into());
        let mut name = sanitize_name(&base);
        if let Some(ext) = ext {
            if !name.ends_with(&format!(".{ext}")) {
                name = format!("{name}.{ext}");
            }
        } else if Path::new(&name).extension().is_none() {
            name.push_str(".txt");
        }
        let text = match (&doc.title, ext) {
            (Some(t), Some("md")) if !doc.text.trim_start().starts_with('#') => {
                format!("# {t}\n\n{}", doc.text)
            }
            _ => doc.text,
        };
        (name, text.into_bytes())
    };
    let name = sanitize_name(&name);
    check_content(&name, &bytes)?;
    let id = uuid::Uuid::new_v4().to_string();
    let dir = app.uploads.join(&id);
    let file = dir.join(&name);
    let write = {
        let dir = dir.clone();
        let file = file.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            magpie_core::atomic_write(&file, &bytes).map_err(std::io::Error::other)
        })
    };
    write.await.map_err(ApiError::internal)?.map_err(|e| {
        tracing::error!("cannot store the upload in {}: {e}", dir.display());
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!(
                "cannot store the upload ({}); see the server's log",
                e.kind()
            ),
        )
    })?;
    let doc_id = document_id(&file);
    let info = enqueue(&app, Job::Upload { id, file }, name, Some(doc_id)).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    Ok((StatusCode::ACCEPTED, Json(info)).into_response())
}

fn multipart_error(status: StatusCode, text: String) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            status,
            "payload_too_large",
            "the upload is larger than max_upload_bytes",
        )
    } else {
        ApiError::new(status, "invalid_request_error", text)
    }
}

/// Longest stored upload name, bytes: with the `.` and `.tmp` of an
/// unfinished write it stays far inside the 255-byte limit of file systems.
const MAX_NAME_BYTES: usize = 200;
/// Longest extension kept, bytes (no supported format has a longer one).
const MAX_EXT_BYTES: usize = 16;

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut_bytes(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A file name safe to create: its last component, printable, not hidden,
/// at most [`MAX_NAME_BYTES`] bytes with an extension of at most
/// [`MAX_EXT_BYTES`].
fn sanitize_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut s: String = base
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    s = s.trim().trim_start_matches('.').to_string();
    let (stem, ext) = match s.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => {
            (stem.to_string(), cut_bytes(ext, MAX_EXT_BYTES).to_string())
        }
        _ => (s.clone(), String::new()),
    };
    let room = MAX_NAME_BYTES - if ext.is_empty() { 0 } else { ext.len() + 1 };
    let stem = cut_bytes(&stem, room).trim_end();
    s = if ext.is_empty() {
        stem.to_string()
    } else {
        format!("{stem}.{ext}")
    };
    if s.is_empty() || s.starts_with('.') {
        "document.txt".into()
    } else {
        s
    }
}

/// Refuse what cannot be indexed before acknowledging it.
fn check_content(name: &str, bytes: &[u8]) -> Result<(), ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_request("the file is empty"));
    }
    let ext = Path::new(name)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    if let Err(kind) = magpie_files::parse::format_for(ext.as_deref()) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{name} is {kind}, which docqa cannot index; send text, Markdown, HTML, PDF, DOCX, EPUB or source code"),
        ));
    }
    let bad = |what: &str| {
        Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_document",
            format!("{name} is not a valid {what} file"),
        ))
    };
    match ext.as_deref() {
        Some("pdf")
            if !bytes[..bytes.len().min(1024)]
                .windows(5)
                .any(|w| w == b"%PDF-") =>
        {
            bad("PDF")
        }
        Some("docx") | Some("epub") if !bytes.starts_with(b"PK\x03\x04") => {
            bad(if ext.as_deref() == Some("docx") {
                "DOCX"
            } else {
                "EPUB"
            })
        }
        _ => Ok(()),
    }
}

fn doc_json(id: &str, e: &magpie_core::CatalogEntry) -> Value {
    json!({
        "id": id,
        "source": e.uri,
        "title": e.title,
        "mime": e.mime,
        "chunks": e.chunks,
        "hash": e.hash,
    })
}

/// `GET /v1/documents`
pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let cat = catalog(&app).await?;
    let docs: Vec<Value> = cat.iter().map(|(id, e)| doc_json(id, e)).collect();
    Ok(Json(
        json!({"documents": docs, "count": docs.len(), "chunks": cat.chunk_count()}),
    ))
}

/// `GET /v1/documents/{id}`
pub async fn get_one(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let cat = catalog(&app).await?;
    let e = cat
        .get(&id)
        .ok_or_else(|| ApiError::not_found(format!("no document {id}")))?;
    Ok(Json(doc_json(&id, e)))
}

/// `DELETE /v1/documents/{id}`: from both stores and the catalog, and its upload.
pub async fn delete(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    if catalog(&app).await?.get(&id).is_none() {
        return Err(ApiError::not_found(format!("no document {id}")));
    }
    let mut pipeline = app.pipeline.lock().await;
    let n = pipeline.delete_docs(std::slice::from_ref(&id)).await?;
    *app.counts.lock().unwrap() = (pipeline.catalog().len(), pipeline.catalog().chunk_count());
    drop(pipeline);
    if n == 0 {
        return Err(ApiError::not_found(format!("no document {id}")));
    }
    // Its upload, so a restart does not index it again.
    if let Ok(entries) = std::fs::read_dir(&app.uploads) {
        for dir in entries.filter_map(|e| e.ok().map(|e| e.path())) {
            if upload_file(&dir).is_some_and(|f| document_id(&f) == id) {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    Ok(Json(json!({"deleted": id})))
}

/// `GET /v1/jobs/{id}`
pub async fn job(
    State(app): State<Arc<App>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<JobInfo>, ApiError> {
    let here = app.jobs.lock().unwrap().get(&id).cloned();
    if let Some(j) = here {
        return Ok(Json(j));
    }
    // Another server of a shared index may have taken it.
    if let Some(shared) = &app.engine.shared {
        if let Some(v) = shared
            .record(JOB_RECORD, &id)
            .await
            .map_err(ApiError::internal)?
        {
            if let Ok(j) = serde_json::from_value::<JobInfo>(v) {
                return Ok(Json(j));
            }
        }
    }
    Err(ApiError::not_found(format!(
        "no job {id} (jobs are kept until the server restarts)"
    )))
}

/// `GET /v1/jobs`: newest first.
pub async fn jobs(State(app): State<Arc<App>>) -> Json<Value> {
    let mut all: Vec<JobInfo> = app.jobs.lock().unwrap().values().cloned().collect();
    if let Some(shared) = &app.engine.shared {
        // Every server's jobs, when the index is shared (this one's win ties).
        if let Ok(records) = shared.records(JOB_RECORD).await {
            let here: std::collections::HashSet<String> =
                all.iter().map(|j| j.id.clone()).collect();
            all.extend(
                records
                    .into_values()
                    .filter_map(|v| serde_json::from_value::<JobInfo>(v).ok())
                    .filter(|j| !here.contains(&j.id)),
            );
        }
    }
    all.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    all.truncate(200);
    Json(json!({"jobs": all}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_reduced_to_a_safe_file_name() {
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("C:\\x\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_name(".hidden"), "hidden");
        assert_eq!(sanitize_name("a\u{0}b;rm -rf.txt"), "a_b_rm -rf.txt");
        assert_eq!(sanitize_name(""), "document.txt");
        assert!(sanitize_name(&"x".repeat(500)).len() <= MAX_NAME_BYTES);
        // Bytes, not characters: 100 Chinese characters are 300 bytes.
        let zh = sanitize_name(&format!("{}.md", "文".repeat(100)));
        assert!(zh.len() <= MAX_NAME_BYTES && zh.ends_with("文.md"), "{zh}");
        let long_ext = sanitize_name(&format!("a.{}", "e".repeat(300)));
        assert_eq!(long_ext, format!("a.{}", "e".repeat(MAX_EXT_BYTES)));
    }

    #[test]
    fn content_is_checked_before_it_is_accepted() {
        assert!(check_content("a.pdf", b"%PDF-1.7 ...").is_ok());
        assert_eq!(
            check_content("a.pdf", b"hello").unwrap_err().status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            check_content("a.png", b"\x89PNG").unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert!(check_content("a.txt", b"").is_err());
        assert!(check_content("a.docx", b"PK\x03\x04rest").is_ok());
    }
}
