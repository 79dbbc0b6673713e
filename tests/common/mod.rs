//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use leasepool::{LeaseManager, Stats};

/// Generous bound for "eventually" on a shared 2-core VM.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

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

/// Polls `stats()` until `pred` holds; panics with the last snapshot after [`EVENTUALLY`].
pub async fn stats_until<S: 'static>(
    manager: &LeaseManager<S>,
    what: &str,
    pred: impl Fn(&Stats) -> bool,
) -> Stats {
    let deadline = Instant::now() + EVENTUALLY;
    loop {
        let stats = manager.stats().await;
        if pred(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last stats: {stats:#?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
