//! Timing helpers: warm-up + median of rounds, RSS, runtimes.

use std::time::Duration;

/// Runs `f` once as a warm-up, then `rounds` times; returns the median.
pub fn median(rounds: usize, mut f: impl FnMut() -> f64) -> f64 {
    f();
    let mut values: Vec<f64> = (0..rounds.max(1)).map(|_| f()).collect();
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Microseconds per operation.
pub fn us_per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / ops as f64
}

/// Operations per second.
pub fn per_sec(elapsed: Duration, ops: usize) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

/// Returns freed heap pages to the OS (glibc keeps them otherwise), so that RSS shows memory
/// still in use. Called the same way for every system before each RSS reading.
#[allow(unsafe_code)]
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free memory held by glibc's allocator; it takes no
        // pointers and is safe to call at any time from any thread.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Resident set size of this process in KiB (Linux; 0 elsewhere).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A current-thread tokio runtime for the caller side (the "another thread" of each topology).
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A multi-thread tokio runtime with two workers (this machine has two cores).
pub fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}
