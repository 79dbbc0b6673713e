//! Snapshot types returned by `stats()`, and the counters behind them.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Identifies one lease for its whole life. Unique within one manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct LeaseId(pub(crate) u64);

impl LeaseId {
    /// The numeric value of this id (increasing in acquisition order).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lease-{}", self.0)
    }
}

/// Identifies one pool (one `SyncArbiter` of worker threads). Unique within one manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(transparent))]
pub struct PoolId(pub(crate) u64);

impl PoolId {
    /// The numeric value of this id; worker threads are named `{prefix}-{pool}-{worker}`.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PoolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool-{}", self.0)
    }
}

/// Where leased work runs.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "lowercase")
)]
pub enum Backend {
    /// Pools of OS threads in this process (an actix `SyncArbiter` per pool).
    #[default]
    Thread,
    /// Pools of worker processes. Not built yet: `build()` rejects it with a `BuildError`.
    Process,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Thread => "thread",
            Backend::Process => "process",
        })
    }
}

/// A consistent snapshot of a manager, taken under one lock.
///
/// Invariant in every snapshot: `available + leased == total <= max_pools`; pools being retired
/// are counted apart in `retiring`.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    /// The backend the manager runs.
    pub backend: Backend,
    /// Pools wanted now: `min(max_pools, max(min_pools, ceil(size / units_per_pool)))`.
    pub desired: usize,
    /// Upper bound on pools (and so on live leases).
    pub max_pools: usize,
    /// Pools kept even when idle.
    pub min_pools: usize,
    /// Idle pools, ready to be leased.
    pub available: usize,
    /// Pools held by a lease (draining leases included).
    pub leased: usize,
    /// Pools in service: `available + leased`.
    pub total: usize,
    /// Worker threads in each pool.
    pub workers_per_pool: usize,
    /// Acquirers queued for a pool.
    pub waiting: usize,
    /// Pools taken out of service (revoked, or above the sizing target) whose worker threads
    /// are still finishing their last jobs. Not counted in `total`.
    pub retiring: usize,
    /// Pools with no live worker (their state factory keeps failing) being rebuilt with
    /// backoff. They are never handed out; an unhealthy pool that is not leased is not counted
    /// in `total` either.
    pub unhealthy: usize,
    /// Pools whose worker threads are starting: none has built its state yet, so they are not
    /// handed out and not counted in `total` until one has.
    pub starting: usize,
    /// Every live lease, oldest first.
    pub leases: Vec<LeaseInfo>,
    /// Monotonic counters since the manager was built (they survive stop/start).
    pub counters: Counters,
}

/// How much a manager can hand out now: a small `Copy` snapshot taken under the engine's lock,
/// with no allocation and no message to an actor — cheap enough to read on every admission
/// decision (a queue worker's `poll_ready`), where [`Stats`] builds a list of leases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capacity {
    /// Upper bound on pools (and so on live leases).
    pub max_pools: usize,
    /// Idle pools, ready to be leased.
    pub available: usize,
    /// Pools held by a lease.
    pub leased: usize,
    /// Pools being rebuilt with backoff: never handed out.
    pub unhealthy: usize,
    /// Pools whose workers are starting.
    pub starting: usize,
    /// Acquirers queued for a pool.
    pub waiting: usize,
}

impl Capacity {
    /// Leases that could still be handed out, at most: `max_pools − leased − unhealthy`.
    pub fn free(&self) -> usize {
        self.max_pools.saturating_sub(self.leased + self.unhealthy)
    }
}

/// One live lease in a [`Stats`] snapshot.
#[derive(Debug, Clone)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LeaseInfo {
    /// The lease.
    pub id: LeaseId,
    /// The label given with `Acquire::owner`.
    pub owner: Option<String>,
    /// Time left until `lease_for` runs out (zero once passed). Serialized as seconds.
    #[cfg_attr(feature = "serde", serde(serialize_with = "as_secs"))]
    pub until_soft_expiry: Duration,
    /// Time left until the lease is revoked (zero once passed). Serialized as seconds.
    #[cfg_attr(feature = "serde", serde(serialize_with = "as_secs"))]
    pub until_hard_expiry: Duration,
    /// Jobs sent on this lease that have not finished.
    pub in_flight: usize,
    /// Released, but still waiting for running jobs before its pool returns.
    pub draining: bool,
    /// The pool the lease holds.
    pub pool: PoolId,
}

/// Monotonic event counts, since the manager was built (they survive stop/start).
///
/// The lease counts (`acquired` … `revoked`) are kept by the books themselves, so a [`Stats`]
/// snapshot and its counts always agree; the job and worker counts are live atomics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Counters {
    /// Leases handed out.
    pub acquired: u64,
    /// Leases handed out to an acquirer that had to queue.
    pub acquired_after_wait: u64,
    /// Acquires that ended with `Timeout`.
    pub timed_out: u64,
    /// Acquires refused with `Unavailable`.
    pub rejected: u64,
    /// Leases released by their holder and finished (pool returned or retired).
    pub released: u64,
    /// Leases revoked (hard expiry, stop, a dead pool or lease actor).
    pub revoked: u64,
    /// Jobs that ran to completion and delivered a value.
    pub jobs_completed: u64,
    /// Jobs that panicked (answered with `Panicked`), in a worker thread or a worker child.
    pub jobs_panicked: u64,
    /// Process jobs answered `ProcessJob`: an input or output that could not be encoded,
    /// decoded or fit `max_message_bytes`, a `Serialize` or `Deserialize` that panicked (in the
    /// parent or the child), or a job name the worker program does not know.
    pub jobs_failed: u64,
    /// Jobs lost with their worker while they ran: a worker child that crashed, or was killed
    /// at hard expiry or by `stop` (answered `WorkerLost`, `Expired` or `Stopped`). In a grinder
    /// frame, every item not answered when its child died counts here: the parent cannot tell
    /// which of them had started.
    pub jobs_lost: u64,
    /// Worker states rebuilt from the factory on the same thread after a job panicked there
    /// (not when a worker child is replaced: see the `children_*` counters).
    pub worker_states_rebuilt: u64,
    /// Replacement worker threads started for threads that ended early (a failing state
    /// factory, a crash, a thread that could not be spawned).
    pub workers_replaced: u64,
    /// Pools replaced because their pool actor crashed.
    pub pools_replaced: u64,
    /// Worker threads lost because their state factory failed (returned `Err` or panicked).
    pub worker_state_failures: u64,
    /// Worker threads that could not be spawned (for example `EAGAIN` at the thread limit);
    /// each is retried with the same backoff as a failing state factory.
    pub thread_spawn_failures: u64,
    /// Process backend: worker children started (handshake done).
    pub children_started: u64,
    /// Process backend: worker children that died on their own — a crash, `exit`, a kill from
    /// outside, a malformed frame (then killed) — while running a job or idle.
    pub children_crashed: u64,
    /// Process backend: worker children killed because their lease passed its hard expiry, or
    /// by `stop` past `shutdown_timeout`, while they ran a job.
    pub children_killed: u64,
    /// Process backend: worker children that died of their memory limit (`child_memory_limit`:
    /// an allocation failed and the child aborted).
    pub children_over_memory: u64,
    /// Process backend: worker children ended and replaced after `max_jobs_per_child` jobs.
    pub children_recycled: u64,
    /// `worker_states_rebuilt` under its old name (not serialized).
    #[cfg_attr(feature = "serde", serde(skip))]
    #[deprecated(
        since = "0.2.0",
        note = "renamed `worker_states_rebuilt`: it counts state rebuilds after a panicking job, not restarts"
    )]
    pub workers_restarted: u64,
    /// `workers_replaced + pools_replaced` under its old name, which mixed the two (not
    /// serialized).
    #[cfg_attr(feature = "serde", serde(skip))]
    #[deprecated(
        since = "0.2.0",
        note = "split into `workers_replaced` and `pools_replaced`"
    )]
    pub pools_restarted: u64,
}

/// Declares the live atomic counters once: their struct and how they fill a [`Counters`].
macro_rules! counter_cells {
    ($($name:ident),* $(,)?) => {
        /// The live counters; cheap relaxed atomics shared by the engine, and the manager's
        /// metric handles beside them (feature `metrics`), so that every place that counts an
        /// event can also record it.
        #[derive(Debug, Default)]
        pub(crate) struct CounterCells {
            $(pub(crate) $name: AtomicU64,)*
            pub(crate) metrics: crate::metrics::Metrics,
        }

        impl CounterCells {
            /// Copies every live counter into `counters`.
            pub(crate) fn fill(&self, counters: &mut Counters) {
                $(counters.$name = self.$name.load(Relaxed);)*
            }
        }
    };
}

counter_cells!(
    jobs_completed,
    jobs_panicked,
    jobs_failed,
    jobs_lost,
    worker_states_rebuilt,
    workers_replaced,
    pools_replaced,
    worker_state_failures,
    thread_spawn_failures,
);

impl CounterCells {
    /// Counters that record into `metrics` too.
    pub(crate) fn with_metrics(metrics: crate::metrics::Metrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    pub(crate) fn bump(cell: &AtomicU64) {
        cell.fetch_add(1, Relaxed);
    }
}

#[cfg(feature = "serde")]
fn as_secs<Ser: serde::Serializer>(d: &Duration, s: Ser) -> Result<Ser::Ok, Ser::Error> {
    s.serialize_f64(d.as_secs_f64())
}
