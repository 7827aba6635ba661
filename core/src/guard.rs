//! Containment for faults that must not take a whole run down: a panic in a
//! connector becomes an error, and a full disk is seen before a write rather
//! than as a crash inside a memory-mapped store.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use futures::FutureExt;

use crate::error::{Error, Result};

/// The message a panic carried, for a report.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

thread_local! {
    /// Set while code runs whose panics are caught and reported as errors.
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The panic hook prints nothing for a panic that [`catch`] or [`catch_async`]
/// turns into an error (the error quotes it); every other panic is reported
/// as before.
fn install_quiet_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info)
            }
        }));
    });
}

/// Run `f` with caught panics kept quiet on this thread.
fn quiet<R>(f: impl FnOnce() -> R) -> R {
    install_quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let r = f();
    QUIET.with(|q| q.set(was));
    r
}

/// Run `f`; a panic becomes an error of `stage` that quotes it.
pub fn catch<T>(stage: &'static str, f: impl FnOnce() -> T) -> Result<T> {
    quiet(|| std::panic::catch_unwind(AssertUnwindSafe(f)))
        .map_err(|p| Error::stage(stage, format!("crashed: {}", panic_message(&*p))))
}

/// A future polled with caught panics kept quiet (each poll may run on another thread).
struct Quiet<F>(F);

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // SAFETY: the inner future is never moved out of the pinned wrapper.
        let inner = unsafe { self.map_unchecked_mut(|q| &mut q.0) };
        quiet(|| inner.poll(cx))
    }
}

/// Await `fut`; a panic becomes an error of `stage` that quotes it.
pub async fn catch_async<T>(stage: &'static str, fut: impl Future<Output = T>) -> Result<T> {
    AssertUnwindSafe(Quiet(fut))
        .catch_unwind()
        .await
        .map_err(|p| Error::stage(stage, format!("crashed: {}", panic_message(&*p))))
}

/// Bytes free for an unprivileged writer on the file system holding `path`
/// (the nearest existing ancestor when `path` does not exist yet).
/// `None` where the platform cannot say.
pub fn free_bytes(path: &Path) -> Option<u64> {
    // Tests on machines where they cannot mount a small disk set the free space
    // (debug builds only).
    if cfg!(debug_assertions) {
        if let Some(n) = std::env::var("MAGPIE_TEST_FREE_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            return Some(n);
        }
    }
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    statvfs_free(if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    })
}

#[cfg(unix)]
fn statvfs_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn statvfs_free(_path: &Path) -> Option<u64> {
    None
}

/// Free space an index needs before it is opened: the stores map files of a
/// few MiB each, and a write into a mapping on a full disk kills the process.
pub const MIN_FREE_TO_OPEN: u64 = 64 << 20;

/// Refuse to go on when the disk holding `dir` has less than `need` bytes free.
/// `what` says what was about to happen ("opening the index", "writing 512 chunks").
pub fn ensure_free_space(dir: &Path, need: u64, what: &str) -> Result<()> {
    match free_bytes(dir) {
        Some(free) if free < need => Err(Error::DiskFull(format!(
            "{what} needs about {} free on the disk holding {}, which has {}: free some space \
             (or move the index with --index) and run again; nothing stored was changed",
            mib(need),
            dir.display(),
            mib(free)
        ))),
        _ => Ok(()),
    }
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

/// True when an I/O error means the disk is full (or over quota).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28) | Some(122))
}

/// True when `e` or any of its causes says the disk is full (connectors wrap
/// the I/O error, or only keep its text).
pub fn mentions_disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(is_disk_full)
        {
            return true;
        }
        let text = err.to_string();
        if text.contains("No space left on device") || text.contains("os error 28") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// This process's peak resident set so far, in MiB (`None` where the system
/// does not say: Linux only).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_that_quote_them() {
        let e = catch("splitter", || -> usize {
            panic!("byte index 7 is not a char boundary")
        })
        .unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("splitter: crashed:"), "{s}");
        assert!(s.contains("not a char boundary"), "{s}");
        assert_eq!(catch("splitter", || 3).unwrap(), 3);
    }

    #[test]
    fn async_panics_become_errors() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt
            .block_on(catch_async("embedder", async {
                let v: Vec<u8> = Vec::new();
                v[3]
            }))
            .unwrap_err();
        assert!(e.to_string().contains("embedder: crashed"), "{e}");
    }

    #[test]
    fn free_space_is_read_and_a_shortfall_is_refused() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir.join("does/not/exist/yet")).expect("statvfs works here");
        assert!(free > 0);
        assert!(ensure_free_space(&dir, 1, "a tiny write").is_ok());
        let e = ensure_free_space(&dir, u64::MAX / 2, "opening the index").unwrap_err();
        assert!(matches!(e, Error::DiskFull(_)));
        assert!(e.to_string().contains("free some space"), "{e}");
    }

    #[test]
    fn enospc_is_recognised() {
        assert!(is_disk_full(&std::io::Error::from_raw_os_error(28)));
        assert!(!is_disk_full(&std::io::Error::from_raw_os_error(2)));
    }
}
