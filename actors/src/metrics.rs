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

/// The `state` label of `leasepool_pools`, in the order [`Metrics::pools`] sets them.
pub const POOL_STATES: [&str; 5] = ["available", "leased", "unhealthy", "starting", "retiring"];

/// One manager's metric handles (empty without the feature, or before registration).
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

    /// An acquire ended after `waited` (zero for one answered without queueing).
    #[inline]
    pub fn acquire(&self, end: AcquireEnd, waited: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            h.acquire(end, waited);
        }
    }

    /// `jobs` jobs ended `end`, each having run `each` (a batch's mean time).
    #[inline]
    pub fn jobs(&self, end: JobEnd, jobs: u64, each: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            h.jobs(end, jobs, each);
        }
    }

    /// A worker was replaced.
    #[inline]
    pub fn replaced(&self, why: Replacement) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            h.replaced[why as usize].increment(1);
        }
    }

    /// The pools by state now — `available`, `leased`, `unhealthy`, `starting`, as in
    /// [`POOL_STATES`] — and `retiring` when known (it is derived from the worker threads), and
    /// the acquirers `waiting`.
    #[inline]
    pub fn pools(&self, by_state: [usize; 4], retiring: Option<usize>, waiting: usize) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            h.pools(by_state, retiring, waiting);
        }
    }

    /// A lease ended after being held `held`.
    #[inline]
    pub fn lease_held(&self, held: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(h) = &self.on {
            h.lease_held.record(held.as_secs_f64());
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

    /// The gauge of jobs in flight, for a lease to raise per job (see [`JobsGauge`]).
    pub fn jobs_gauge(&self) -> JobsGauge {
        JobsGauge(
            #[cfg(feature = "metrics")]
            self.on.as_ref().map(|h| h.in_flight.clone()),
        )
    }
}

/// `leasepool_jobs_in_flight`, as a lease holds it (empty without the feature).
#[derive(Clone, Default)]
pub struct JobsGauge(#[cfg(feature = "metrics")] Option<::metrics::Gauge>);

impl JobsGauge {
    /// Counts one job until the returned guard drops.
    #[inline]
    pub fn enter(&self) -> InFlightGauge {
        #[cfg(feature = "metrics")]
        if let Some(gauge) = &self.0 {
            gauge.increment(1.0);
            return InFlightGauge(Some(gauge.clone()));
        }
        InFlightGauge::default()
    }
}

/// Lowers `leasepool_jobs_in_flight` when dropped (empty without the feature).
#[derive(Default)]
pub struct InFlightGauge(#[cfg(feature = "metrics")] Option<::metrics::Gauge>);

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        if let Some(gauge) = &self.0 {
            gauge.decrement(1.0);
        }
    }
}

#[cfg(feature = "metrics")]
mod on {
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
        pub(super) in_flight: Gauge,
        pub(super) lease_held: Histogram,
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
            }
        }

        pub(super) fn acquire(&self, end: AcquireEnd, waited: Duration) {
            self.acquires[end as usize].increment(1);
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

        pub(super) fn pools(&self, by_state: [usize; 4], retiring: Option<usize>, waiting: usize) {
            for (gauge, n) in self.pools.iter().zip(by_state) {
                gauge.set(n as f64);
            }
            if let Some(n) = retiring {
                self.pools[4].set(n as f64);
            }
            self.waiters.set(waiting as f64);
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
