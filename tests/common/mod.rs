//! Helpers shared by the integration tests.
#![allow(dead_code)]

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

/// A test future of a binary with its own `main` (`harness = false`).
pub type LocalTest = std::pin::Pin<Box<dyn Future<Output = ()>>>;

/// A named test of such a binary: its name and how to make its future.
pub type NamedTest = (String, Box<dyn FnOnce() -> LocalTest + Send>);

/// What [`run_named`] ran: libtest-mimic's conclusion.
pub struct Ran(libtest_mimic::Conclusion);

impl Ran {
    /// Whether a test failed.
    pub fn has_failed(&self) -> bool {
        self.0.has_failed()
    }

    /// Exits with libtest's code: 101 if a test failed (its summary is printed already).
    pub fn finish(self) {
        self.0.exit_if_failed();
    }
}

/// The runner of the test binaries that are also worker programs (`process::init` first in
/// their `main`, so no libtest `main`): libtest-mimic, so that `--list`, filters, `--exact`,
/// `--skip` and `--test-threads` work as with libtest. Each test runs on a thread named after
/// it, under a [`Deadline`] of `limit`, its future driven by `drive`; one test at a time unless
/// `--test-threads` says otherwise (these tests count children, threads and CPU time of the
/// whole process). `on_start` runs before each test, `on_failure` after each that failed (to
/// print what it logged, say).
pub fn run_named(
    tests: Vec<NamedTest>,
    limit: Duration,
    drive: fn(LocalTest),
    on_start: impl Fn(&str) + Send + Sync + 'static,
    on_failure: impl Fn(&str) + Send + Sync + 'static,
) -> Ran {
    let mut args = libtest_mimic::Arguments::from_args();
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let hooks = Arc::new((on_start, on_failure));
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let hooks = Arc::clone(&hooks);
            libtest_mimic::Trial::test(name.clone(), move || {
                (hooks.0)(&name);
                let outcome = std::thread::Builder::new()
                    .name(name.clone())
                    .spawn(move || {
                        let _deadline = deadline_of(limit);
                        drive(test());
                    })
                    .expect("spawn a test thread")
                    .join();
                outcome.map_err(|payload| {
                    (hooks.1)(&name);
                    let text = payload
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| payload.downcast_ref::<&str>().copied())
                        .unwrap_or("a panic");
                    libtest_mimic::Failed::from(text)
                })
            })
        })
        .collect();
    Ran(libtest_mimic::run(&args, trials))
}

/// `named_tests![a, b]`: the async fns `a` and `b` (no arguments) as [`NamedTest`]s.
#[allow(unused_macros)]
macro_rules! named_tests {
    ($($name:ident),* $(,)?) => {
        vec![$((
            stringify!($name).to_owned(),
            Box::new(|| Box::pin($name()) as crate::common::LocalTest)
                as Box<dyn FnOnce() -> crate::common::LocalTest + Send>,
        )),*]
    };
}
#[allow(unused_imports)]
pub(crate) use named_tests;
