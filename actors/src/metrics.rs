//! The engine's metrics through the `metrics` facade (feature `metrics`).
//!
//! A manager registers its handles once, when it is built, with the recorder installed then (a
//! global one, or a local one around the build in tests); an event then costs one call on a
//! handle — nothing at all when no recorder was installed (the handles are no-ops) or when the
//! feature is off (every method below is empty and [`Metrics`] holds nothing). The names, kinds
//! and labels are a contract, documented in docs/observability.md: they may grow, never change.
//!
//! This file imports nothing of the engine (the lowest layer): which error is which outcome is
//! said beside the errors ([`AcquireEnd::of`], [`JobEnd::of`] in `error.rs`).

use std::time::Duration;

/// `leasepool_acquires_total` and `leasepool_acquire_wait_seconds`.
pub const ACQUIRES: &str = "leasepool_acquires_total";
/// Seconds from an acquire's start to its answer, every outcome included.
pub const ACQUIRE_WAIT: &str = "leasepool_acquire_wait_seconds";
/// Jobs by backend and outcome (a grinder item counts one).
pub const JOBS: &str = "leasepool_jobs_total";
/// Seconds a job ran, by outcome.
pub const JOB_SECONDS: &str = "leasepool_job_seconds";
/// Workers replaced, by reason.
pub const WORKERS_REPLACED: &str = "leasepool_workers_replaced_total";
/// Pools by state.
pub const POOLS: &str = "leasepool_pools";
/// Acquirers queued.
pub const WAITERS: &str = "leasepool_waiters";
/// Jobs sent and not finished.
pub const JOBS_IN_FLIGHT: &str = "leasepool_jobs_in_flight";
/// Seconds from a lease's grant to its end (released and drained, or revoked).
pub const LEASE_HELD: &str = "leasepool_lease_held_seconds";
/// Queue tasks by how their run ended (`leasepool::queue`).
pub const QUEUE_TASKS: &str = "leasepool_queue_tasks_total";
/// Seconds from when a queue task became due to when it started on a lease.
pub const QUEUE_TASK_WAIT: &str = "leasepool_queue_task_wait_seconds";

/// How an acquire ended: its `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireEnd {
    /// A lease was handed out.
    Acquired,
    /// `Timeout`: the wait limit passed.
    Timeout,
    /// `Unavailable`: no pool free with `no_wait`, or the waiter queue full.
    Unavailable,
    /// `Stopped`: the manager stopped while the acquirer waited.
    Stopped,
    /// `NotStarted`: the manager was not running.
    NotStarted,
    /// `NoHealthyPool`: every pool's state factory keeps failing.
    NoHealthyPool,
    /// The acquirer gave up (its future was dropped) before an answer.
    Cancelled,
    /// Bad input (`InvalidArgument`), or any other refusal.
    Invalid,
}

impl AcquireEnd {
    /// Every outcome, in label order.
    pub const ALL: [Self; 8] = [
        Self::Acquired,
        Self::Timeout,
        Self::Unavailable,
        Self::Stopped,
        Self::NotStarted,
        Self::NoHealthyPool,
        Self::Cancelled,
        Self::Invalid,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Acquired => "acquired",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Stopped => "stopped",
            Self::NotStarted => "not_started",
            Self::NoHealthyPool => "no_healthy_pool",
            Self::Cancelled => "cancelled",
            Self::Invalid => "invalid",
        }
    }
}

/// How a job ended: its `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    /// It delivered a value (`jobs_completed`).
    Ok,
    /// It panicked (`jobs_panicked`).
    Panicked,
    /// Lost with a worker child that crashed (`jobs_lost`).
    WorkerLost,
    /// Lost with a child killed at its lease's hard expiry (`jobs_lost`).
    Expired,
    /// Lost with a child killed by `stop` (`jobs_lost`).
    Stopped,
    /// Its input or output could not be encoded, decoded or delivered (`jobs_failed`).
    Invalid,
}

impl JobEnd {
    /// Every outcome, in label order.
    pub const ALL: [Self; 6] = [
        Self::Ok,
        Self::Panicked,
        Self::WorkerLost,
        Self::Expired,
        Self::Stopped,
        Self::Invalid,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Panicked => "panicked",
            Self::WorkerLost => "worker_lost",
            Self::Expired => "expired",
            Self::Stopped => "stopped",
            Self::Invalid => "invalid",
        }
    }
}

/// Why a worker was replaced: the `reason` label of `leasepool_workers_replaced_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replacement {
    /// A job panicked and the worker's state was rebuilt on its thread
    /// (`worker_states_rebuilt`).
    StateRebuilt,
    /// A worker thread ended early and another was started (`workers_replaced`).
    ThreadDied,
    /// A pool actor crashed and the pool was replaced (`pools_replaced`).
    PoolDied,
    /// A worker child died on its own (`children_crashed`).
    Crashed,
    /// A worker child was killed at hard expiry or by `stop` (`children_killed`).
    Killed,
    /// A worker child hit its memory limit (`children_over_memory`).
    OverMemory,
    /// A worker child was recycled after `max_jobs_per_child` (`children_recycled`).
    Recycled,
}

impl Replacement {
    /// Every reason, in label order.
    pub const ALL: [Self; 7] = [
        Self::StateRebuilt,
        Self::ThreadDied,
        Self::PoolDied,
        Self::Crashed,
        Self::Killed,
        Self::OverMemory,
        Self::Recycled,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::StateRebuilt => "state_rebuilt",
            Self::ThreadDied => "thread_died",
            Self::PoolDied => "pool_died",
            Self::Crashed => "crashed",
            Self::Killed => "killed",
            Self::OverMemory => "over_memory",
            Self::Recycled => "recycled",
        }
    }
}

/// The `state` label of `leasepool_pools`, in the order of [`Flush::by_state`] (then `retiring`).
pub const POOL_STATES: [&str; 5] = ["available", "leased", "unhealthy", "starting", "retiring"];

/// What a flush brings up to date: the books' counts and the pools now (see
/// [`Metrics::flush`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flush {
    /// Leases handed out (the books' `acquired`).
    pub acquired: u64,
    /// Of those, to an acquirer that had queued.
    pub acquired_after_wait: u64,
    /// Acquires that timed out.
    pub timed_out: u64,
    /// Acquires refused `Unavailable`.
    pub rejected: u64,
    /// Pools `available`, `leased`, `unhealthy`, `starting`, as in [`POOL_STATES`].
    pub by_state: [usize; 4],
    /// Pools retiring.
    pub retiring: usize,
    /// Acquirers queued.
    pub waiting: usize,
    /// Jobs sent and not finished.
    pub in_flight: usize,
}

/// How often a manager brings its counters and gauges up to date (see [`Metrics::flush`]).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

#[cfg(feature = "metrics")]
/// Whether the books count acquires that ended `end` (then the counter is brought up to date
/// by [`Metrics::flush`], not per event).
fn counted_by_books(end: AcquireEnd) -> bool {
    matches!(
        end,
        AcquireEnd::Acquired | AcquireEnd::Timeout | AcquireEnd::Unavailable
    )
}

/// One manager's metric handles (empty without the feature, or before registration).
///
/// The hot path records nothing it can count later: the acquire counters the books keep, the
/// zero waits of acquires answered at once, the gauges are brought up to date by
/// [`flush`](Self::flush) — every [`FLUSH_EVERY`] and at each `stats()` — so an uncontended
/// acquire and release touch no handle. Waits in the queue, jobs, replacements and lease hold
/// times are recorded as they happen.
#[derive(Default)]
pub struct Metrics {
    #[cfg(feature = "metrics")]
    on: Option<Box<on::Handles>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

// Without the feature the arguments are unused: each method below is empty.
#[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
impl Metrics {
    /// Registers the handles of manager `manager` (its `backend` label: `thread`, `process`)
    /// with the recorder installed now.
    pub fn register(manager: &str, backend: &str) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            on: Some(Box::new(on::Handles::register(manager, backend))),
        }
    }

    /// An acquire was answered without queueing (its wait: zero). Outcomes the books count
    /// (`acquired`, `unavailable`) are left to [`flush`](Self::flush).
    #[inline]
    pub fn acquire_at_once(&self, end: AcquireEnd) {
        #[cfg(feature = "metrics")]
        if let Some(h) = self.on.as_ref().filter(|_| !counted_by_books(end)) {
            contain(|| h.acquire(end, Duration::ZERO, true));
        }
    }

    /// A queued acquire ended after `waited` (its counter is left to [`flush`](Self::flush)
    /// if the books count it).
    #[inline]
    pub fn acquire_waited(&self, end: AcquireEnd, waited: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            contain(|| h.acquire(end, waited, !counted_by_books(end)));
        }
    }

    /// `jobs` jobs ended `end`, each having run `each` (a batch's mean time).
    #[inline]
    pub fn jobs(&self, end: JobEnd, jobs: u64, each: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            contain(|| h.jobs(end, jobs, each));
        }
    }

    /// A worker was replaced.
    #[inline]
    pub fn replaced(&self, why: Replacement) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            contain(|| h.replaced[why as usize].increment(1));
        }
    }

    /// Leases ended after being held so long (recorded in batches: see the bookkeeper).
    pub fn lease_held(&self, held: &[Duration]) {
        #[cfg(feature = "metrics")]
        if let Some(h) = self.on.as_ref().filter(|_| !held.is_empty()) {
            for t in held {
                contain(|| h.lease_held.record(t.as_secs_f64()));
            }
        }
    }

    /// Brings the counters the books keep and the gauges up to date, from `now()` (called
    /// once, if no other flush is under way: a flush never waits, and counters never go
    /// back).
    pub fn flush(&self, now: impl FnOnce() -> Flush) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            contain(|| h.flush(now));
        }
    }

    /// Whether events are recorded at all (the feature is on and handles were registered):
    /// callers skip reading the clock otherwise.
    #[inline]
    pub fn enabled(&self) -> bool {
        #[cfg(feature = "metrics")]
        return self.on.is_some();
        #[cfg(not(feature = "metrics"))]
        false
    }
}

/// Runs a recorder call: a recorder is user code, and its panic must not cut short what the
/// engine does next (answer a waiter, deliver a job's result). The panic is swallowed (its
/// payload dropped under the same guard).
#[cfg(feature = "metrics")]
fn contain(record: impl FnOnce()) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    if let Err(payload) = catch_unwind(AssertUnwindSafe(record)) {
        let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
    }
}

#[cfg(feature = "metrics")]
mod on {
    use std::sync::Mutex;
    use std::time::Duration;

    use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram, Unit};

    use super::*;

    /// Every handle of one manager, registered once.
    pub(super) struct Handles {
        acquires: Vec<Counter>,
        acquire_wait: Vec<Histogram>,
        jobs: Vec<Counter>,
        job_seconds: Vec<Histogram>,
        pub(super) replaced: Vec<Counter>,
        pools: Vec<Gauge>,
        waiters: Gauge,
        in_flight: Gauge,
        pub(super) lease_held: Histogram,
        /// What the last flush applied: the books' counts, so counters never go back and
        /// only new zero waits are recorded.
        flushed: Mutex<Flush>,
    }

    impl Handles {
        pub(super) fn register(manager: &str, backend: &str) -> Self {
            describe();
            let m = manager.to_owned();
            let b = backend.to_owned();
            Self {
                acquires: AcquireEnd::ALL
                    .iter()
                    .map(|e| counter!(ACQUIRES, "manager" => m.clone(), "outcome" => e.label()))
                    .collect(),
                acquire_wait: AcquireEnd::ALL
                    .iter()
                    .map(|e| {
                        histogram!(ACQUIRE_WAIT, "manager" => m.clone(), "outcome" => e.label())
                    })
                    .collect(),
                jobs: JobEnd::ALL
                    .iter()
                    .map(|e| {
                        counter!(JOBS, "manager" => m.clone(), "backend" => b.clone(), "outcome" => e.label())
                    })
                    .collect(),
                job_seconds: JobEnd::ALL
                    .iter()
                    .map(|e| {
                        histogram!(JOB_SECONDS, "manager" => m.clone(), "backend" => b.clone(), "outcome" => e.label())
                    })
                    .collect(),
                replaced: Replacement::ALL
                    .iter()
                    .map(|r| {
                        counter!(WORKERS_REPLACED, "manager" => m.clone(), "backend" => b.clone(), "reason" => r.label())
                    })
                    .collect(),
                pools: POOL_STATES
                    .iter()
                    .map(|s| gauge!(POOLS, "manager" => m.clone(), "state" => *s))
                    .collect(),
                waiters: gauge!(WAITERS, "manager" => m.clone()),
                in_flight: gauge!(JOBS_IN_FLIGHT, "manager" => m.clone()),
                lease_held: histogram!(LEASE_HELD, "manager" => m),
                flushed: Mutex::new(Flush::default()),
            }
        }

        pub(super) fn acquire(&self, end: AcquireEnd, waited: Duration, count: bool) {
            if count {
                self.acquires[end as usize].increment(1);
            }
            self.acquire_wait[end as usize].record(waited.as_secs_f64());
        }

        pub(super) fn jobs(&self, end: JobEnd, jobs: u64, each: Duration) {
            if jobs == 0 {
                return;
            }
            self.jobs[end as usize].increment(jobs);
            // One observation per job, so the histogram's count matches the counter's.
            let n = usize::try_from(jobs).unwrap_or(usize::MAX);
            self.job_seconds[end as usize].record_many(each.as_secs_f64(), n);
        }

        pub(super) fn flush(&self, now: impl FnOnce() -> Flush) {
            let Ok(mut last) = self.flushed.try_lock() else {
                return; // another flush is under way: it brings everything up to date
            };
            let now = now();
            let at_once = |f: &Flush| f.acquired.saturating_sub(f.acquired_after_wait);
            let new_at_once = at_once(&now).saturating_sub(at_once(&last));
            let new_rejected = now.rejected.saturating_sub(last.rejected);
            let zero = |end: AcquireEnd, n: u64| {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > 0 {
                    self.acquire_wait[end as usize].record_many(0.0, n);
                }
            };
            zero(AcquireEnd::Acquired, new_at_once);
            zero(AcquireEnd::Unavailable, new_rejected);
            let counts = [
                (AcquireEnd::Acquired, now.acquired.max(last.acquired)),
                (AcquireEnd::Timeout, now.timed_out.max(last.timed_out)),
                (AcquireEnd::Unavailable, now.rejected.max(last.rejected)),
            ];
            for (end, n) in counts {
                self.acquires[end as usize].absolute(n);
            }
            for (gauge, n) in self.pools.iter().zip(now.by_state) {
                gauge.set(n as f64);
            }
            self.pools[4].set(now.retiring as f64);
            self.waiters.set(now.waiting as f64);
            self.in_flight.set(now.in_flight as f64);
            *last = Flush {
                acquired: counts[0].1,
                timed_out: counts[1].1,
                rejected: counts[2].1,
                acquired_after_wait: now.acquired_after_wait.max(last.acquired_after_wait),
                ..now
            };
        }
    }

    /// Help texts and units, for exporters that show them (Prometheus' `# HELP`).
    fn describe() {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(ACQUIRES, "Acquires by how they ended.");
        describe_histogram!(
            ACQUIRE_WAIT,
            Unit::Seconds,
            "Time from an acquire's start to its answer, refused and timed-out ones included."
        );
        describe_counter!(
            JOBS,
            "Jobs by backend and outcome (a grinder item counts one)."
        );
        describe_histogram!(JOB_SECONDS, Unit::Seconds, "Time a job ran, by outcome.");
        describe_counter!(WORKERS_REPLACED, "Workers replaced, by reason.");
        describe_gauge!(POOLS, "Pools by state.");
        describe_gauge!(WAITERS, "Acquirers queued for a pool.");
        describe_gauge!(JOBS_IN_FLIGHT, "Jobs sent and not finished.");
        describe_histogram!(
            LEASE_HELD,
            Unit::Seconds,
            "Time from a lease's grant to its end (released and drained, or revoked)."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_in_index_order() {
        fn distinct(labels: Vec<&str>) {
            let mut sorted = labels.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), labels.len(), "{labels:?}");
        }
        distinct(AcquireEnd::ALL.iter().map(|e| e.label()).collect());
        distinct(JobEnd::ALL.iter().map(|e| e.label()).collect());
        distinct(Replacement::ALL.iter().map(|e| e.label()).collect());
        for (i, e) in AcquireEnd::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        for (i, e) in JobEnd::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
        for (i, e) in Replacement::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }
}
