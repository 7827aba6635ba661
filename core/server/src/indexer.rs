//! The background indexer: one worker indexes queued jobs one at a time, under
//! a supervisor that restarts it if it dies. Uploads live in
//! `<index>/uploads/<job>/` until they are indexed; one that fails, or that was
//! being indexed when the server died three times, is set aside in
//! `<index>/failed-uploads/<job>/` with its reason, never retried on its own.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use magpie_core::{NoProgress, RunOptions};
use magpie_files::DirectoryLoader;

use super::documents::{
    catalog, display_name, document_id, register, set_job, upload_file, JobStatus, UploadLoader,
};
use super::App;

/// Work for the indexing worker.
pub enum Job {
    /// One uploaded file, in its own directory under uploads/.
    Upload { id: String, file: PathBuf },
    /// Bring a watched directory up to date (adds, changes, deletions).
    Sync { id: String, dir: PathBuf },
}

impl Job {
    pub fn id(&self) -> &str {
        match self {
            Job::Upload { id, .. } | Job::Sync { id, .. } => id,
        }
    }
}

/// Starts an upload's indexing this many times (each interrupted by the server
/// dying) before it is set aside.
const MAX_ATTEMPTS: u32 = 3;
/// Worker crashes within a minute after which the supervisor gives up (the
/// server stays up for search; /readyz says indexing is down).
const MAX_RESTARTS_PER_MINUTE: usize = 5;
/// The file in an upload's directory counting the times its indexing started.
const ATTEMPTS_FILE: &str = ".attempts";
/// The file in a set-aside upload's directory saying why.
const REASON_FILE: &str = ".reason";

/// Where uploads that could not be indexed are kept.
pub fn failed_dir(app: &App) -> PathBuf {
    app.engine.dir.join("failed-uploads")
}

/// Start the worker on its own thread and runtime (indexing is long, CPU-heavy
/// work that must not hold the server's threads), under a supervisor that
/// restarts it when it panics. The receiver fires when indexing has stopped.
pub fn spawn(
    app: Arc<App>,
    mut rx: tokio::sync::mpsc::Receiver<Job>,
) -> Result<tokio::sync::oneshot::Receiver<()>> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("docqa-indexer".into())
        .spawn(move || {
            let mut crashes: Vec<Instant> = Vec::new();
            loop {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the indexing runtime: {e}");
                        break;
                    }
                };
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rt.block_on(worker(app.clone(), &mut rx))
                }));
                let Err(panic) = run else { break };
                // Uploads keep queueing while the worker restarts.
                let msg = magpie_core::guard::panic_message(&*panic);
                tracing::error!("the indexing worker crashed: {msg}");
                app.indexer_restarts.fetch_add(1, Ordering::SeqCst);
                if let Some(id) = app.current_job.lock().unwrap().take() {
                    job_failed(&app, &id, &format!("indexing crashed on it: {msg}"));
                }
                drop(rt);
                let now = Instant::now();
                crashes.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
                crashes.push(now);
                if crashes.len() >= MAX_RESTARTS_PER_MINUTE {
                    tracing::error!(
                        "the indexing worker crashed {} times within a minute; indexing is \
                         stopped until the server restarts (search and answers go on)",
                        crashes.len()
                    );
                    break;
                }
                if app.stopping.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
                tracing::warn!("restarting the indexing worker");
            }
            app.indexing_up.store(false, Ordering::SeqCst);
            let _ = done_tx.send(());
        })
        .context("starting the indexing thread")?;
    Ok(done_rx)
}

/// Indexes one job at a time until the channel closes or the server stops.
async fn worker(app: Arc<App>, rx: &mut tokio::sync::mpsc::Receiver<Job>) {
    loop {
        let job = tokio::select! {
            j = rx.recv() => j,
            _ = wait_stopping(&app) => None,
        };
        let Some(job) = job else { break };
        if app.stopping.load(Ordering::SeqCst) {
            break; // what is left stays in uploads/ for the next start
        }
        let id = job.id().to_string();
        *app.current_job.lock().unwrap() = Some(id.clone());
        set_job(&app, &id, |j| j.status = JobStatus::Running);
        if let Job::Upload { file, .. } = &job {
            count_attempt(file);
            crash_for_tests(file);
        }
        let mut pipeline = app.pipeline.lock().await;
        let outcome = match &job {
            Job::Upload { file, .. } => {
                let loader = UploadLoader::new(file, app.cfg.max_upload as u64);
                pipeline
                    .run(&loader, &RunOptions { sync: false }, &NoProgress)
                    .await
            }
            Job::Sync { dir, .. } => {
                let loader = DirectoryLoader::new(dir).skip_dir(&app.engine.dir);
                pipeline
                    .run(&loader, &RunOptions { sync: true }, &NoProgress)
                    .await
            }
        };
        *app.counts.lock().unwrap() = (pipeline.catalog().len(), pipeline.catalog().chunk_count());
        drop(pipeline);
        match outcome {
            Ok(report) => {
                let failed =
                    matches!(job, Job::Upload { .. }) && report.indexed + report.unchanged == 0;
                tracing::info!(job = %id, indexed = report.indexed, chunks = report.chunks, "indexing job done");
                if failed {
                    let reason = report
                        .skipped
                        .first()
                        .map(|s| s.reason.clone())
                        .unwrap_or_else(|| "nothing to index".into());
                    job_failed(&app, &id, &reason);
                } else {
                    if let Job::Upload { file, .. } = &job {
                        let _ = std::fs::remove_file(attempts_path(file));
                    }
                    let report = serde_json::to_value(&report).ok();
                    set_job(&app, &id, |j| {
                        j.report = report;
                        j.status = JobStatus::Done;
                    });
                }
            }
            Err(e) => {
                // Not the document's fault (a store or the disk): the upload stays
                // and the next start tries again, up to MAX_ATTEMPTS times.
                let msg = magpie_core::error_chain(&e);
                tracing::error!(job = %id, "indexing failed: {msg}");
                set_job(&app, &id, |j| {
                    j.status = JobStatus::Failed;
                    j.error = Some(msg);
                });
            }
        }
        *app.current_job.lock().unwrap() = None;
    }
}

async fn wait_stopping(app: &App) {
    while !app.stopping.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Mark job `id` failed with `reason`; an upload's files move to failed-uploads/.
fn job_failed(app: &App, id: &str, reason: &str) {
    tracing::warn!(job = %id, "document not indexed: {reason}");
    set_aside(app, &app.uploads.join(id), reason);
    set_job(app, id, |j| {
        j.status = JobStatus::Failed;
        j.error = Some(reason.to_string());
    });
}

/// Move an upload's directory to failed-uploads/ with its reason (best effort:
/// where it cannot be moved it is removed, so it is never retried forever).
fn set_aside(app: &App, dir: &Path, reason: &str) {
    if !dir.is_dir() {
        return;
    }
    let failed = failed_dir(app);
    let target = failed.join(dir.file_name().unwrap_or_default());
    let moved = std::fs::create_dir_all(&failed)
        .and_then(|_| std::fs::rename(dir, &target))
        .and_then(|_| std::fs::write(target.join(REASON_FILE), reason));
    if let Err(e) = moved {
        tracing::warn!("cannot keep the failed upload {}: {e}", dir.display());
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn attempts_path(file: &Path) -> PathBuf {
    file.with_file_name(ATTEMPTS_FILE)
}

fn attempts(file: &Path) -> u32 {
    std::fs::read_to_string(attempts_path(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn count_attempt(file: &Path) {
    let n = attempts(file) + 1;
    if let Err(e) = magpie_core::atomic_write(&attempts_path(file), n.to_string().as_bytes()) {
        tracing::warn!("cannot record an indexing attempt: {e}");
    }
}

/// Tests only (debug builds): panic the worker on an upload whose name contains
/// `DOCQA_TEST_CRASH_ON`, to exercise the supervisor.
fn crash_for_tests(file: &Path) {
    if cfg!(debug_assertions) {
        if let Ok(pat) = std::env::var("DOCQA_TEST_CRASH_ON") {
            if !pat.is_empty() && display_name(file).contains(&pat) {
                panic!("injected crash for {}", display_name(file));
            }
        }
    }
}

/// Uploads that are on disk but not in the catalog (acknowledged before a stop,
/// not yet indexed) are queued again, streamed into the queue as it drains so
/// any number of them can wait. Ones whose indexing was started MAX_ATTEMPTS
/// times are set aside instead. Returns how many were queued.
pub fn resume_uploads(app: &Arc<App>) -> Result<usize> {
    let cat = magpie::block_on(catalog(app)).map_err(|e| anyhow::anyhow!(e.message))?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&app.uploads)
        .with_context(|| format!("reading {}", app.uploads.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    let mut queued = Vec::new();
    for dir in entries {
        let id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some(file) = upload_file(&dir) else {
            // A write that never finished (no file or only a temporary one).
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        };
        let doc_id = document_id(&file);
        if cat.get(&doc_id).is_some() {
            continue;
        }
        let name = display_name(&file);
        let tried = attempts(&file);
        if tried >= MAX_ATTEMPTS {
            let reason = format!(
                "indexing {name} was started {tried} times and the server stopped each time \
                 before it finished; it is set aside (upload it again to retry)"
            );
            register(app, &id, name, Some(doc_id));
            job_failed(app, &id, &reason);
            continue;
        }
        register(app, &id, name, Some(doc_id));
        queued.push(Job::Upload { id, file });
    }
    let n = queued.len();
    if n > 0 {
        let tx = app.job_tx.clone();
        tokio::spawn(async move {
            for job in queued {
                if tx.send(job).await.is_err() {
                    break; // the server is stopping; the rest wait for the next start
                }
            }
        });
    }
    Ok(n)
}

/// Uploads set aside by earlier runs, listed as failed jobs with their reasons.
pub fn load_failed(app: &App) {
    let Ok(entries) = std::fs::read_dir(failed_dir(app)) else {
        return;
    };
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    // The newest 1,000 are enough to answer a client polling its job.
    for (_, dir) in dirs.iter().rev().take(1000) {
        let id = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let reason =
            std::fs::read_to_string(dir.join(REASON_FILE)).unwrap_or_else(|_| "not indexed".into());
        let name = upload_file(dir)
            .map(|f| display_name(&f))
            .unwrap_or_default();
        register(app, &id, name, None);
        set_job(app, &id, |j| {
            j.status = JobStatus::Failed;
            j.error = Some(reason);
        });
    }
}
