//! The settings a manager runs with: gathered by `leasepool`'s builder as [`Settings`], checked
//! once into an [`EngineConfig`] — the only way to make one, so that no out-of-range value (a
//! `units_per_pool` of 0 dividing on the host, say) can reach the engine.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{BuildError, MAX_TOTAL_WORKERS};
use crate::stats::Backend;

/// The shortest `check_interval` accepted.
pub(crate) const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(1);

/// Builds one worker's state; called on the worker thread, again after each panicking job.
/// An `Err` (its text) or a panic means the worker cannot serve: its thread ends and the pool
/// replaces it with backoff.
pub type StateFactory<S> = Arc<dyn Fn() -> Result<S, String> + Send + Sync>;

/// Runs on a worker thread as its worker ends (after its last job, before the thread exits).
pub type WorkerHook = Arc<dyn Fn() + Send + Sync>;

/// Counts work units (e.g. connected devices) for adaptive sizing.
pub type SizeProvider = Arc<dyn Fn() -> usize + Send + Sync>;

/// Every setting, as given (see `leasepool::ManagerBuilder` for each one's meaning and default).
pub struct Settings<S> {
    /// Where work runs.
    pub backend: Backend,
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
    /// Prefix of every thread name, and the manager's name in logs.
    pub name_prefix: String,
    /// How long `stop` waits for worker threads before leaving them detached.
    pub shutdown_timeout: Duration,
    /// Builds per-worker state.
    pub state_factory: StateFactory<S>,
    /// `start` succeeds even when not one worker can start.
    pub start_degraded: bool,
    /// Runs on each worker thread as its worker ends (the process backend ends its child).
    pub worker_exit: Option<WorkerHook>,
}

impl Settings<()> {
    /// The defaults (the design card's).
    pub fn new() -> Self {
        Self {
            backend: Backend::Thread,
            max_pools: 1,
            min_pools: 1,
            workers_per_pool: 4,
            units_per_pool: 10,
            size_provider: None,
            check_interval: Duration::from_secs(120),
            default_lease: Duration::from_secs(300),
            lease_grace: Duration::from_secs(15),
            max_waiters: 10_000,
            name_prefix: "leasepool".to_owned(),
            shutdown_timeout: Duration::from_secs(5),
            state_factory: Arc::new(|| Ok(())),
            start_degraded: false,
            worker_exit: None,
        }
    }
}

impl Default for Settings<()> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Settings<S> {
    /// The same settings with another worker-state factory.
    pub fn with_factory<T>(self, state_factory: StateFactory<T>) -> Settings<T> {
        Settings {
            backend: self.backend,
            max_pools: self.max_pools,
            min_pools: self.min_pools,
            workers_per_pool: self.workers_per_pool,
            units_per_pool: self.units_per_pool,
            size_provider: self.size_provider,
            check_interval: self.check_interval,
            default_lease: self.default_lease,
            lease_grace: self.lease_grace,
            max_waiters: self.max_waiters,
            name_prefix: self.name_prefix,
            shutdown_timeout: self.shutdown_timeout,
            state_factory,
            start_degraded: self.start_degraded,
            worker_exit: self.worker_exit,
        }
    }
}

/// Checked settings; made only by [`EngineConfig::new`].
pub struct EngineConfig<S> {
    pub(crate) settings: Settings<S>,
}

impl<S> EngineConfig<S> {
    /// Checks every setting.
    ///
    /// # Errors
    /// A [`BuildError`] naming the first setting out of range.
    pub fn new(settings: Settings<S>) -> Result<Self, BuildError> {
        let s = &settings;
        for (setting, value) in [
            ("max_pools", s.max_pools),
            ("workers_per_pool", s.workers_per_pool),
            ("units_per_pool", s.units_per_pool),
        ] {
            if value == 0 {
                return Err(BuildError::Zero { setting });
            }
        }
        for (setting, value) in [
            ("check_interval", s.check_interval),
            ("default_lease", s.default_lease),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration { setting });
            }
        }
        // Each check runs the size provider on the host thread: a period of nanoseconds would
        // keep it busy doing nothing else.
        if s.check_interval < MIN_CHECK_INTERVAL {
            return Err(BuildError::TooShort {
                setting: "check_interval",
                min: MIN_CHECK_INTERVAL,
                got: s.check_interval,
            });
        }
        if s.min_pools > s.max_pools {
            return Err(BuildError::MinAboveMax {
                min_pools: s.min_pools,
                max_pools: s.max_pools,
            });
        }
        let total = s.max_pools.saturating_mul(s.workers_per_pool);
        if total > MAX_TOTAL_WORKERS {
            return Err(BuildError::TooManyThreads {
                max_pools: s.max_pools,
                workers_per_pool: s.workers_per_pool,
                total,
                limit: MAX_TOTAL_WORKERS,
            });
        }
        if s.name_prefix.is_empty() || s.name_prefix.contains('\0') {
            return Err(BuildError::InvalidNamePrefix(settings.name_prefix));
        }
        Ok(Self { settings })
    }

    /// Where work runs.
    pub fn backend(&self) -> Backend {
        self.settings.backend
    }

    /// Upper bound on pools.
    pub fn max_pools(&self) -> usize {
        self.settings.max_pools
    }

    /// Worker threads per pool.
    pub fn workers_per_pool(&self) -> usize {
        self.settings.workers_per_pool
    }

    /// Soft lifetime of a lease acquired without `lease_for`.
    pub fn default_lease(&self) -> Duration {
        self.settings.default_lease
    }

    /// How long `stop` waits for worker threads.
    pub fn shutdown_timeout(&self) -> Duration {
        self.settings.shutdown_timeout
    }
}

impl<S> fmt::Debug for EngineConfig<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("EngineConfig")
            .field("backend", &s.backend)
            .field("max_pools", &s.max_pools)
            .field("min_pools", &s.min_pools)
            .field("workers_per_pool", &s.workers_per_pool)
            .field("units_per_pool", &s.units_per_pool)
            .field("size_provider", &s.size_provider.is_some())
            .field("check_interval", &s.check_interval)
            .field("default_lease", &s.default_lease)
            .field("lease_grace", &s.lease_grace)
            .field("max_waiters", &s.max_waiters)
            .field("name_prefix", &s.name_prefix)
            .field("shutdown_timeout", &s.shutdown_timeout)
            .field("start_degraded", &s.start_degraded)
            .finish_non_exhaustive()
    }
}
