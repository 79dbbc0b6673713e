//! `ManagerBuilder`: every setting, checked once in `build()`.

use std::sync::Arc;
use std::time::Duration;

use leasepool_actors::{Backend, EngineConfig, SizeProvider, StateFactory};

use crate::manager::LeaseManager;

/// Most worker threads one manager may run (`max_pools * workers_per_pool`).
pub const MAX_TOTAL_WORKERS: usize = 10_000;

/// A setting that `build()` refused. The text names the setting and the value.
///
/// ```
/// use leasepool::{BuildError, LeaseManager};
///
/// let err = LeaseManager::builder().workers_per_pool(0).build().unwrap_err();
/// assert_eq!(err, BuildError::Zero { setting: "workers_per_pool" });
/// assert_eq!(err.to_string(), "workers_per_pool must be at least 1 (got 0)");
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A count that must be at least 1 was 0.
    #[error("{setting} must be at least 1 (got 0)")]
    Zero {
        /// The setting's builder method name.
        setting: &'static str,
    },
    /// A duration that must be positive was zero.
    #[error("{setting} must be greater than zero (got 0s)")]
    ZeroDuration {
        /// The setting's builder method name.
        setting: &'static str,
    },
    /// `min_pools` is larger than `max_pools`.
    #[error("min_pools ({min_pools}) exceeds max_pools ({max_pools})")]
    MinAboveMax {
        /// The `min_pools` given.
        min_pools: usize,
        /// The `max_pools` given.
        max_pools: usize,
    },
    /// `max_pools * workers_per_pool` is more threads than one manager may run.
    #[error(
        "max_pools ({max_pools}) x workers_per_pool ({workers_per_pool}) = {total} worker threads exceeds the limit of {limit}"
    )]
    TooManyThreads {
        /// The `max_pools` given.
        max_pools: usize,
        /// The `workers_per_pool` given.
        workers_per_pool: usize,
        /// Their product (saturating).
        total: usize,
        /// [`MAX_TOTAL_WORKERS`].
        limit: usize,
    },
    /// The name prefix cannot name threads.
    #[error("name_prefix {0:?} is invalid: it must be non-empty and contain no NUL byte")]
    InvalidNamePrefix(String),
    /// The backend is not available in this build.
    #[error("backend {0} is not supported yet; use Backend::Thread")]
    UnsupportedBackend(Backend),
}

/// Configures a [`LeaseManager`]. Start from [`LeaseManager::builder`].
///
/// ```
/// use std::time::Duration;
/// use leasepool::LeaseManager;
///
/// let manager = LeaseManager::builder()
///     .max_pools(4)
///     .workers_per_pool(2)
///     .default_lease(Duration::from_secs(30))
///     .build()
///     .expect("valid settings");
/// assert_eq!(manager.backend(), leasepool::Backend::Thread);
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct ManagerBuilder<S> {
    backend: Backend,
    max_pools: usize,
    min_pools: usize,
    workers_per_pool: usize,
    units_per_pool: usize,
    size_provider: Option<SizeProvider>,
    check_interval: Duration,
    default_lease: Duration,
    lease_grace: Duration,
    max_waiters: usize,
    name_prefix: String,
    shutdown_timeout: Duration,
    state_factory: StateFactory<S>,
    start_degraded: bool,
}

impl ManagerBuilder<()> {
    pub(crate) fn new() -> Self {
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
        }
    }
}

impl<S> ManagerBuilder<S> {
    /// Where work runs. Default [`Backend::Thread`]; `Process` is refused by `build()` for now.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Upper bound on pools, and so on live leases. Default 1; must be at least 1.
    pub fn max_pools(mut self, n: usize) -> Self {
        self.max_pools = n;
        self
    }

    /// Pools kept even when idle, created by `start`. Default 1; at most `max_pools`.
    pub fn min_pools(mut self, n: usize) -> Self {
        self.min_pools = n;
        self
    }

    /// Worker threads per pool: how many jobs one lease runs in parallel. Default 4.
    pub fn workers_per_pool(mut self, n: usize) -> Self {
        self.workers_per_pool = n;
        self
    }

    /// Work units one pool serves, for adaptive sizing. Default 10; must be at least 1.
    pub fn units_per_pool(mut self, n: usize) -> Self {
        self.units_per_pool = n;
        self
    }

    /// Counts work units now; `desired = min(max_pools, max(min_pools, ceil(units /
    /// units_per_pool)))`. Called on the host thread: keep it quick and non-blocking. A panic
    /// counts as 0 units.
    pub fn size_provider<F>(mut self, f: F) -> Self
    where
        F: Fn() -> usize + Send + Sync + 'static,
    {
        self.size_provider = Some(Arc::new(f));
        self
    }

    /// How often the supervisor re-evaluates sizing. Default 120 s; must be positive.
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.check_interval = d;
        self
    }

    /// Soft lifetime of a lease acquired without `lease_for`. Default 300 s; must be positive.
    pub fn default_lease(mut self, d: Duration) -> Self {
        self.default_lease = d;
        self
    }

    /// Time after the soft lifetime before a lease is revoked. Default 15 s; zero is allowed.
    pub fn lease_grace(mut self, d: Duration) -> Self {
        self.lease_grace = d;
        self
    }

    /// Most acquirers that may queue for a release. Default 10 000; 0 = never queue (an
    /// acquire that finds nothing free fails with `Unavailable` at once).
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = n;
        self
    }

    /// Prefix of thread names: workers are `{prefix}-{pool}-{worker}`, the host thread
    /// `{prefix}-host`. Default `"leasepool"`. (Linux shows only the first 15 bytes.)
    pub fn name_prefix(mut self, p: impl Into<String>) -> Self {
        self.name_prefix = p.into();
        self
    }

    /// How long `stop` waits for worker threads still running a job; after it, the threads are
    /// logged with `warn!` and left to finish on their own, so `stop` always returns.
    /// Default 5 s; zero means "do not wait"; `Duration::MAX` waits as long as the jobs run.
    /// It is also the default `stop_timeout` of a [`WorkGrinder`](crate::WorkGrinder).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Whether `start` succeeds when not one worker can build its state. Default `false`:
    /// `start` then fails with [`LeaseError::NoHealthyPool`](crate::LeaseError) carrying
    /// the factory's error, and the manager stays stopped — the way a service finds out at
    /// boot that its database is unreachable. With `true`, `start` logs a warning and returns
    /// `Ok`; the pools keep retrying with backoff, acquires fail at once with
    /// `NoHealthyPool` while no pool can serve, and succeed again once a worker builds
    /// its state.
    pub fn start_degraded(mut self, allow: bool) -> Self {
        self.start_degraded = allow;
        self
    }

    /// Gives every worker thread its own state `T`, built by `factory` on that thread (and built
    /// again after a job panics). `T` need not be `Send`: it never leaves its thread.
    pub fn worker_state<T, F>(self, factory: F) -> ManagerBuilder<T>
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: 'static,
    {
        self.with_factory(Arc::new(move || Ok(factory())))
    }

    /// Like [`worker_state`](Self::worker_state), for factories that can fail (opening a
    /// database connection, logging in to a vendor SDK). An `Err` is logged with its text (a
    /// panic is logged as a panic); that worker thread ends and is replaced after a backoff
    /// (10 ms doubling to 5 s). A pool is handed out only once a worker has built its state;
    /// while a pool has no such worker it is *unhealthy* (`Stats::unhealthy`) and never handed
    /// out. When no pool at all can serve, acquires fail at once with
    /// [`LeaseError::NoHealthyPool`](crate::LeaseError) carrying the factory's last error
    /// (like a connection pool whose connect fails), and `start` fails with it unless
    /// [`start_degraded`](Self::start_degraded) is set. `counters.worker_state_failures` counts
    /// the failures.
    pub fn try_worker_state<T, E, F>(self, factory: F) -> ManagerBuilder<T>
    where
        F: Fn() -> Result<T, E> + Send + Sync + 'static,
        E: std::fmt::Display,
        T: 'static,
    {
        self.with_factory(Arc::new(move || factory().map_err(|e| e.to_string())))
    }

    fn with_factory<T>(self, state_factory: StateFactory<T>) -> ManagerBuilder<T> {
        ManagerBuilder {
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
        }
    }

    /// Checks every setting and builds the manager (not started).
    ///
    /// # Errors
    /// A [`BuildError`] naming the first setting that is out of range.
    pub fn build(self) -> Result<LeaseManager<S>, BuildError>
    where
        S: 'static,
    {
        for (setting, value) in [
            ("max_pools", self.max_pools),
            ("workers_per_pool", self.workers_per_pool),
            ("units_per_pool", self.units_per_pool),
        ] {
            if value == 0 {
                return Err(BuildError::Zero { setting });
            }
        }
        for (setting, value) in [
            ("check_interval", self.check_interval),
            ("default_lease", self.default_lease),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration { setting });
            }
        }
        if self.min_pools > self.max_pools {
            return Err(BuildError::MinAboveMax {
                min_pools: self.min_pools,
                max_pools: self.max_pools,
            });
        }
        let total = self.max_pools.saturating_mul(self.workers_per_pool);
        if total > MAX_TOTAL_WORKERS {
            return Err(BuildError::TooManyThreads {
                max_pools: self.max_pools,
                workers_per_pool: self.workers_per_pool,
                total,
                limit: MAX_TOTAL_WORKERS,
            });
        }
        if self.name_prefix.is_empty() || self.name_prefix.contains('\0') {
            return Err(BuildError::InvalidNamePrefix(self.name_prefix));
        }
        if self.backend != Backend::Thread {
            return Err(BuildError::UnsupportedBackend(self.backend));
        }
        Ok(LeaseManager::from_config(
            self.backend,
            EngineConfig {
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
                state_factory: self.state_factory,
                start_degraded: self.start_degraded,
            },
        ))
    }
}
