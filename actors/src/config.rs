//! The validated settings the engine runs with (validation itself lives in `leasepool`'s builder).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Builds one worker's state; called on the worker thread, again after each panicking job.
/// An `Err` (its text) or a panic means the worker cannot serve: its thread ends and the pool
/// replaces it with backoff.
pub type StateFactory<S> = Arc<dyn Fn() -> Result<S, String> + Send + Sync>;

/// Counts work units (e.g. connected devices) for adaptive sizing.
pub type SizeProvider = Arc<dyn Fn() -> usize + Send + Sync>;

/// Everything a manager needs to run, already checked by `ManagerBuilder::build`.
pub struct EngineConfig<S> {
    /// Upper bound on pools (and leases).
    pub max_pools: usize,
    /// Pools kept even when idle.
    pub min_pools: usize,
    /// Worker threads per pool.
    pub workers_per_pool: usize,
    /// Work units one pool serves, for `desired`.
    pub units_per_pool: usize,
    /// Optional unit count for adaptive sizing.
    pub size_provider: Option<SizeProvider>,
    /// How often the supervisor re-evaluates sizing.
    pub check_interval: Duration,
    /// Soft lifetime of a lease when `lease_for` is not given.
    pub default_lease: Duration,
    /// Extra time after the soft lifetime before a lease is revoked.
    pub lease_grace: Duration,
    /// Bound on queued acquirers; 0 = never queue.
    pub max_waiters: usize,
    /// Prefix of every thread name.
    pub name_prefix: String,
    /// How long `stop` waits for worker threads before leaving them detached.
    pub shutdown_timeout: Duration,
    /// Builds per-worker state.
    pub state_factory: StateFactory<S>,
    /// `start` succeeds even when not one worker can build its state (the pools then keep
    /// retrying, and acquires fail with `NoHealthyPool` until one succeeds).
    pub start_degraded: bool,
}

impl<S> fmt::Debug for EngineConfig<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("max_pools", &self.max_pools)
            .field("min_pools", &self.min_pools)
            .field("workers_per_pool", &self.workers_per_pool)
            .field("units_per_pool", &self.units_per_pool)
            .field("size_provider", &self.size_provider.is_some())
            .field("check_interval", &self.check_interval)
            .field("default_lease", &self.default_lease)
            .field("lease_grace", &self.lease_grace)
            .field("max_waiters", &self.max_waiters)
            .field("name_prefix", &self.name_prefix)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("start_degraded", &self.start_degraded)
            .finish_non_exhaustive()
    }
}
