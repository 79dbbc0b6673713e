//! What leasepool's test binaries share: deadlines, polling helpers, a gate for worker threads,
//! the capture of `tracing` events, and the runner of the binaries that have their own `main`
//! (they are their managers' worker programs) with the [`test`] attribute that registers their
//! tests where they are written.
//!
//! A workspace crate of its own (not published), so that every binary of both packages uses it
//! as a dependency instead of including files by path.

pub mod capture;
mod runner;

pub use runner::{LocalTest, MakeTest, Ran, Registered, Runner, TESTS};

/// Registers an `async fn` as a test of a harness-less binary, where it is written; the
/// binary's `main` runs them with a [`Runner`]. `#[test]` on `async fn name()` is the test
/// `module::name`; `#[test(each = CASES)]` on `async fn name(case: T)` is one test per
/// `(label, case)` of `CASES` (a `&'static [(&'static str, T)]`, `T: Copy + Send`), named
/// `module::name::label`.
pub use leasepool_testkit_macros::test;

#[doc(hidden)]
pub use linkme;

use std::future::Future;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use leasepool::{GrinderStats, LeaseManager, Stats, WorkGrinder};

/// Generous bound for "eventually" on a shared 2-core VM.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// How long one test may run before its [`Deadline`] aborts the test binary. Tests take well
/// under 5 s each; this bound only exists so that a broken engine fails CI instead of hanging it.
pub const TEST_LIMIT: Duration = Duration::from_secs(90);

/// A watchdog for one test: if it is still alive after its limit, the whole test binary is
/// aborted with a message naming the test. Create it on the first line of every test (the
/// `bounded` test checks that each one does) and let it drop at the end.
#[must_use = "the deadline only runs while the guard is alive"]
pub struct Deadline {
    done: Arc<(Mutex<bool>, Condvar)>,
}

/// Starts a [`Deadline`] of [`TEST_LIMIT`] for the calling test.
pub fn deadline() -> Deadline {
    deadline_of(TEST_LIMIT)
}

/// Starts a [`Deadline`] of `limit` for the calling test.
pub fn deadline_of(limit: Duration) -> Deadline {
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned();
    let watched = Arc::clone(&done);
    std::thread::Builder::new()
        .name("test-deadline".to_owned())
        .spawn(move || {
            let (lock, cv) = &*watched;
            let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
            let (guard, _) = cv
                .wait_timeout_while(guard, limit, |done| !*done)
                .unwrap_or_else(|e| e.into_inner());
            if !*guard {
                // Straight to the process's stderr: the test harness captures `eprintln!`, and
                // the capture is lost when the process aborts.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** test `{test}` still running after {limit:?}: something hangs; aborting the test binary ***\n"
                );
                std::process::abort();
            }
        })
        .expect("spawn the deadline watchdog");
    Deadline { done }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        let (lock, cv) = &*self.done;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}

/// A started manager with one pool of one worker thread (the builder's defaults otherwise).
pub async fn one_worker(prefix: &str) -> LeaseManager {
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix(prefix)
        .build()
        .unwrap();
    m.start().await.unwrap();
    m
}

/// A started manager with `max_pools` pools of `workers` threads each.
pub async fn started(prefix: &str, max_pools: usize, workers: usize) -> LeaseManager {
    let manager = LeaseManager::builder()
        .max_pools(max_pools)
        .min_pools(max_pools.min(1))
        .workers_per_pool(workers)
        .name_prefix(prefix)
        .build()
        .expect("valid settings");
    manager.start().await.expect("start");
    manager
}

/// Polls `fetch` every 5 ms until `pred` holds on what it returns; panics with the last value
/// after [`EVENTUALLY`].
pub async fn until<T: std::fmt::Debug, F: Future<Output = T>>(
    what: &str,
    mut fetch: impl FnMut() -> F,
    pred: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let value = fetch().await;
        if pred(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last: {value:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls `stats()` until `pred` holds; panics with the last snapshot after [`EVENTUALLY`].
pub async fn stats_until<S: 'static>(
    manager: &LeaseManager<S>,
    what: &str,
    pred: impl Fn(&Stats) -> bool,
) -> Stats {
    until(what, || manager.stats(), pred).await
}

/// Checks the count invariant of one snapshot.
pub fn assert_invariant(stats: &Stats) {
    assert_eq!(
        stats.available + stats.leased,
        stats.total,
        "available + leased != total in {stats:#?}"
    );
    assert!(
        stats.total <= stats.max_pools,
        "total > max_pools in {stats:#?}"
    );
    assert_eq!(
        stats.leases.len(),
        stats.leased,
        "lease table disagrees: {stats:#?}"
    );
}

/// Threads of this process whose name (as Linux shows it, 15 bytes at most) starts with
/// `prefix`.
pub fn threads_named(prefix: &str) -> Vec<String> {
    let shown = &prefix[..prefix.len().min(15)];
    let mut names = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
                let comm = comm.trim_end().to_owned();
                if comm.starts_with(shown) {
                    names.push(comm);
                }
            }
        }
    }
    names
}

/// Polls (blocking) until no thread starts with `prefix`; returns the leftovers on timeout.
/// A thread that has finished its work still needs a moment for the OS to reap it.
pub fn wait_no_threads(prefix: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let left = threads_named(prefix);
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `fut` on a fresh multi-thread tokio runtime (for tests that need their own runtime).
pub fn block_on_tokio<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(fut)
}

/// Bound for an operation that must not hang (it usually takes milliseconds).
pub const PROMPTLY: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test (instead of hanging it) after [`PROMPTLY`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PROMPTLY, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {PROMPTLY:?}"),
    }
}

/// Polls a grinder's `stats()` until `pred` holds; panics with the last snapshot after
/// [`EVENTUALLY`].
pub async fn grinder_until<S: 'static>(
    g: &WorkGrinder<S>,
    what: &str,
    pred: impl Fn(&GrinderStats) -> bool,
) -> GrinderStats {
    until(what, || g.stats(), pred).await
}

/// A gate jobs can wait on (from worker threads) until the test opens it. The wait is bounded
/// (60 s), so that a failed test cannot keep worker threads forever.
#[derive(Clone)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Self {
        Gate(Arc::new((Mutex::new(false), Condvar::new())))
    }

    /// Waits until the gate is open (at most 60 s).
    pub fn wait(&self) {
        let (open, cv) = &*self.0;
        let guard = open.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv
            .wait_timeout_while(guard, Duration::from_secs(60), |open| !*open)
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Opens the gate for every waiter, now and later.
    pub fn open(&self) {
        let (open, cv) = &*self.0;
        *open.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    }
}
