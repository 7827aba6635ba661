//! Keeping an index in step with a folder: file-system events on a
//! directory, debounced into batches, each batch answered by one incremental
//! run ([`Index::add`](crate::Index::add) or a pipeline's sync).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Error, Result};
use notify::{RecursiveMode, Watcher};

/// How long the folder must be quiet before a batch is taken (editors save in
/// several steps: write a temporary file, rename it over the old one).
const QUIET: Duration = Duration::from_millis(400);

/// Changes under a directory, outside the index.
pub struct Changes {
    rx: tokio::sync::mpsc::UnboundedReceiver<()>,
    _watcher: notify::RecommendedWatcher,
}

impl Changes {
    /// Watch `dir` recursively, ignoring events inside `index`.
    pub fn new(dir: &Path, index: &Path) -> Result<Self> {
        let index: PathBuf = std::fs::canonicalize(index).unwrap_or_else(|_| index.to_path_buf());
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
                Ok(ev) => {
                    let relevant = !matches!(ev.kind, notify::EventKind::Access(_))
                        && ev.paths.iter().any(|p| !p.starts_with(&index));
                    if relevant {
                        let _ = tx.send(());
                    }
                }
                Err(e) => tracing::warn!("watch error: {e}"),
            })
            .map_err(|e| watch_error("starting the file watcher", e))?;
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| watch_error(&format!("watching {}", dir.display()), e))?;
        Ok(Self {
            rx,
            _watcher: watcher,
        })
    }

    /// Wait for changes, then for the folder to be quiet; false on Ctrl-C.
    pub async fn next_batch(&mut self) -> bool {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return false,
            got = self.rx.recv() => if got.is_none() { return false },
        }
        loop {
            match tokio::time::timeout(QUIET, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return false,
                Err(_) => return true,
            }
        }
    }
}

fn watch_error(context: &str, e: notify::Error) -> Error {
    let source = match e.kind {
        notify::ErrorKind::Io(io) => io,
        other => std::io::Error::other(format!("{other:?}")),
    };
    Error::io(context, source)
}
