//! The thread pool of the fused decode step.
//!
//! A decoding step is some ninety parallel sections a token with a few
//! microseconds of serial work between them. candle's pool suits its own ops
//! but waits badly on a busy machine: its workers spin for about a
//! millisecond before they sleep, and the caller spins without limit while a
//! worker that the OS put aside holds a piece of the job (measured: decode
//! fell from 26 to 4 tokens/s while a build ran on the other core, with half
//! the time in those spins). Here:
//!
//! - work is handed out in chunks from a shared counter, the caller taking
//!   its share, so no one waits for a thread that is not running;
//! - a worker spins a short while (`MAGPIE_POOL_SPIN_US`, default 50 µs:
//!   longer than the serial gaps of a decode step) and then sleeps;
//! - the caller, done with its share, spins briefly and then yields its core
//!   while the last chunks finish;
//! - a second caller while a job runs does its work inline rather than wait.

use std::any::Any;
use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

type Body = dyn Fn(Range<usize>) + Sync;

/// The job description before the first job.
fn nothing(_: Range<usize>) {}
static NOTHING: fn(Range<usize>) = nothing;

struct JobDesc {
    /// The caller's closure, its lifetime erased: the caller does not return
    /// before every worker has left the job.
    body: *const Body,
    n: usize,
    chunk: usize,
}

struct Shared {
    epoch: AtomicUsize,
    job: UnsafeCell<JobDesc>,
    next: AtomicUsize,
    /// The epoch of the job still taking workers; 0 once its caller closed it.
    open: AtomicUsize,
    /// Workers inside a job.
    active: AtomicUsize,
    parked: Vec<AtomicBool>,
    threads: OnceLock<Vec<Thread>>,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    spin: Duration,
}

// SAFETY: `job` is written only by the caller holding the pool's lock, before
// the epoch is published (Release) and while no worker is inside a job;
// workers read it after observing the epoch (Acquire).
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw closure pointer is only dereferenced during the job.
unsafe impl Send for Shared {}

/// A pool of `threads − 1` workers plus the calling thread.
pub struct Pool {
    shared: &'static Shared,
    workers: usize,
    lock: Mutex<()>,
}

fn run_chunks(shared: &Shared, job: &JobDesc) {
    // SAFETY: the body outlives the job (see JobDesc).
    let body = unsafe { &*job.body };
    loop {
        let start = shared.next.fetch_add(job.chunk, Ordering::Relaxed);
        if start >= job.n {
            break;
        }
        body(start..job.n.min(start + job.chunk));
    }
}

fn worker(shared: &'static Shared, id: usize) {
    let mut seen = 0usize;
    loop {
        // wait for the next job: spin a little, then sleep
        let t = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = shared.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || t.elapsed() < shared.spin {
                std::hint::spin_loop();
                continue;
            }
            shared.parked[id].store(true, Ordering::SeqCst);
            if shared.epoch.load(Ordering::SeqCst) == seen {
                std::thread::park();
            }
            shared.parked[id].store(false, Ordering::SeqCst);
        }
        // enter, then check the job is still open: a caller that closed it
        // waits for every worker that entered before, and none after touches it
        shared.active.fetch_add(1, Ordering::SeqCst);
        if shared.open.load(Ordering::SeqCst) == seen {
            // SAFETY: published before the epoch this worker observed, and
            // alive until this worker leaves (the caller waits for active == 0).
            let job = unsafe { &*shared.job.get() };
            if let Err(p) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_chunks(shared, job)))
            {
                let mut slot = shared.panic.lock().unwrap_or_else(|e| e.into_inner());
                slot.get_or_insert(p);
            }
        }
        shared.active.fetch_sub(1, Ordering::Release);
    }
}

/// Closes the job and waits, on drop, for every worker inside it to leave
/// (also when the caller's own share panics, so the closure outlives every
/// use). Workers that never started are not waited for.
struct Join<'a>(&'a Shared);

impl Drop for Join<'_> {
    fn drop(&mut self) {
        self.0.open.store(0, Ordering::SeqCst);
        let t = Instant::now();
        while self.0.active.load(Ordering::Acquire) != 0 {
            if t.elapsed() < Duration::from_micros(20) {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Pool {
    /// A pool running on `threads` threads in all (the caller among them).
    pub fn new(threads: usize) -> Self {
        let workers = threads.max(1) - 1;
        let spin = std::env::var("MAGPIE_POOL_SPIN_US")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(50);
        // lives as long as the process, like the workers that read it
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(JobDesc {
                body: &NOTHING as &Body as *const Body,
                n: 0,
                chunk: 1,
            }),
            next: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            parked: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            threads: OnceLock::new(),
            panic: Mutex::new(None),
            spin: Duration::from_micros(spin),
        }));
        let mut handles = Vec::with_capacity(workers);
        for id in 0..workers {
            match std::thread::Builder::new()
                .name(format!("magpie-llm-{id}"))
                .spawn(move || worker(shared, id))
            {
                Ok(h) => handles.push(h.thread().clone()),
                Err(_) => break,
            }
        }
        let workers = handles.len();
        let _ = shared.threads.set(handles);
        Pool {
            shared,
            workers,
            lock: Mutex::new(()),
        }
    }

    /// Threads that take part in a job (workers and the caller).
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Run `body` over `0..n` in chunks on every thread; returns when all
    /// of it has run. A panic in any chunk is raised here.
    pub fn run(&self, n: usize, body: impl Fn(Range<usize>) + Sync) {
        if n == 0 {
            return;
        }
        let guard = match self.lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            // another job is running (or this is one of its chunks): inline
            Err(std::sync::TryLockError::WouldBlock) => return body(0..n),
        };
        if self.workers == 0 || n == 1 {
            return body(0..n);
        }
        let s = self.shared;
        s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        // about four chunks a thread: balance without much counter traffic
        let chunk = n.div_ceil(self.threads() * 4).max(1);
        let body_ref: &(dyn Fn(Range<usize>) + Sync + '_) = &body;
        // SAFETY: the job is closed and every worker inside it has left
        // before this function returns (Join), so the erased lifetime is
        // never outlived; no worker reads the description now (none is inside).
        unsafe {
            *s.job.get() = JobDesc {
                body: std::mem::transmute::<*const (dyn Fn(Range<usize>) + Sync + '_), *const Body>(
                    body_ref,
                ),
                n,
                chunk,
            };
        }
        s.next.store(0, Ordering::Relaxed);
        let epoch = s.epoch.load(Ordering::Relaxed).wrapping_add(1).max(1);
        s.open.store(epoch, Ordering::SeqCst);
        s.epoch.store(epoch, Ordering::SeqCst);
        if let Some(threads) = s.threads.get() {
            for (i, t) in threads.iter().enumerate() {
                if s.parked[i].load(Ordering::SeqCst) {
                    t.unpark();
                }
            }
        }
        {
            let _join = Join(s);
            // SAFETY: just written above.
            run_chunks(s, unsafe { &*s.job.get() });
        }
        drop(guard);
        let p = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = p {
            std::panic::resume_unwind(p);
        }
    }
}

/// The process's pool for decoding, as many threads as candle uses.
pub fn decode_pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_on_any_pool() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for n in [0, 1, 2, 7, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..50 {
                    pool.run(n, |r| {
                        for i in r {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                assert!(
                    hits.iter().all(|h| h.load(Ordering::Relaxed) == 50),
                    "{threads} {n}"
                );
            }
        }
    }

    #[test]
    fn a_panic_in_a_chunk_reaches_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(64, |r| {
                if r.contains(&40) {
                    panic!("chunk 40");
                }
            })
        }));
        assert!(r.is_err());
        let sum = AtomicUsize::new(0);
        pool.run(100, |r| {
            sum.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 100);
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let pool = Pool::new(2);
        for _ in 0..3 {
            // longer than the spin: the worker sleeps between jobs
            std::thread::sleep(Duration::from_millis(5));
            let sum = AtomicUsize::new(0);
            pool.run(10, |r| {
                sum.fetch_add(r.len(), Ordering::Relaxed);
            });
            assert_eq!(sum.load(Ordering::Relaxed), 10);
        }
    }

    #[test]
    fn a_second_caller_runs_inline_without_waiting() {
        let pool = Pool::new(2);
        let sum = AtomicUsize::new(0);
        pool.run(4, |r| {
            // nested: the lock is held, so this runs on the calling thread
            pool.run(3, |r2| {
                sum.fetch_add(r2.len(), Ordering::Relaxed);
            });
            sum.fetch_add(r.len() * 10, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4 * 10 + 4 * 3);
    }
}
