//! `ManagerBuilder`: every setting, checked once in `build()` (by the engine's
//! `EngineConfig::new`, the only way to make one).

use std::sync::Arc;
use std::time::Duration;

use leasepool_actors::{Backend, BuildError, EngineConfig, Settings, StateFactory};

use crate::manager::LeaseManager;

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
    settings: Settings<S>,
    #[cfg(feature = "process")]
    process: crate::process::ProcessOptions,
}

impl LeaseManager<()> {
    /// Starts configuring a manager. See [`ManagerBuilder`] for every setting and its default.
    pub fn builder() -> ManagerBuilder<()> {
        ManagerBuilder::new()
    }
}

impl ManagerBuilder<()> {
    fn new() -> Self {
        Self {
            settings: Settings::new(),
            #[cfg(feature = "process")]
            process: crate::process::ProcessOptions::default(),
        }
    }
}

impl<S> ManagerBuilder<S> {
    /// Where work runs. Default [`Backend::Thread`]. [`Backend::Process`] (feature `process`,
    /// Unix) runs `process::ProcessJob`s in worker child processes and needs `process_jobs`
    /// (see the `process` module); without the feature, or on another
    /// platform, `build()` refuses it with [`BuildError::UnsupportedBackend`] saying why.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.settings.backend = backend;
        self
    }

    /// Upper bound on pools, and so on live leases. Default 1; must be at least 1.
    pub fn max_pools(mut self, n: usize) -> Self {
        self.settings.max_pools = n;
        self
    }

    /// Pools kept even when idle, created by `start`. Default 1; at most `max_pools`.
    pub fn min_pools(mut self, n: usize) -> Self {
        self.settings.min_pools = n;
        self
    }

    /// Worker threads per pool: how many jobs one lease runs in parallel. Default 4.
    pub fn workers_per_pool(mut self, n: usize) -> Self {
        self.settings.workers_per_pool = n;
        self
    }

    /// Work units one pool serves, for adaptive sizing. Default 10; must be at least 1.
    pub fn units_per_pool(mut self, n: usize) -> Self {
        self.settings.units_per_pool = n;
        self
    }

    /// Counts work units now; `desired = min(max_pools, max(min_pools, ceil(units /
    /// units_per_pool)))`. Called on the host thread: keep it quick and non-blocking. A panic
    /// counts as 0 units.
    pub fn size_provider<F>(mut self, f: F) -> Self
    where
        F: Fn() -> usize + Send + Sync + 'static,
    {
        self.settings.size_provider = Some(Arc::new(f));
        self
    }

    /// How often the supervisor re-evaluates sizing. Default 120 s; at least 1 ms (each check
    /// runs the size provider on the host thread); `Duration::MAX` means never (only
    /// `notify_scale_changed`).
    pub fn check_interval(mut self, d: Duration) -> Self {
        self.settings.check_interval = d;
        self
    }

    /// Soft lifetime of a lease acquired without `lease_for`. Default 300 s; must be positive.
    pub fn default_lease(mut self, d: Duration) -> Self {
        self.settings.default_lease = d;
        self
    }

    /// Time after the soft lifetime before a lease is revoked. Default 15 s; zero is allowed.
    pub fn lease_grace(mut self, d: Duration) -> Self {
        self.settings.lease_grace = d;
        self
    }

    /// Most acquirers that may queue for a release. Default 10 000. Beyond it an acquire that
    /// finds no pool free fails with `Unavailable` at once — unless a pool being created (under
    /// `max_pools`) can serve it, for which it waits, as a `no_wait` acquire does; if that pool
    /// fails to start, it is refused `Unavailable` rather than left waiting for a release. So 0
    /// means "never wait for a release".
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.settings.max_waiters = n;
        self
    }

    /// Prefix of thread names: workers are `{prefix}-{pool}-{worker}`, the host thread
    /// `{prefix}-host`. Default `"leasepool"`. (Linux shows only the first 15 bytes.)
    pub fn name_prefix(mut self, p: impl Into<String>) -> Self {
        self.settings.name_prefix = p.into();
        self
    }

    /// How long `stop` waits for worker threads still running a job; after it, the threads are
    /// logged with `warn!` and left to finish on their own, so `stop` always returns.
    /// Default 5 s; zero means "do not wait"; `Duration::MAX` waits as long as the jobs run.
    /// It is also the default `stop_timeout` of a [`WorkGrinder`](crate::WorkGrinder).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.settings.shutdown_timeout = d;
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
        self.settings.start_degraded = allow;
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
            settings: self.settings.with_factory(state_factory),
            #[cfg(feature = "process")]
            process: self.process,
        }
    }

    /// The jobs the worker children can run — the same [`Jobs`](crate::process::Jobs) the worker
    /// program passes to [`process::init`](crate::process::init). Required for
    /// [`Backend::Process`]. Feature `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn process_jobs(mut self, jobs: crate::process::Jobs) -> Self {
        self.process.jobs = Some(jobs);
        self
    }

    /// The program each worker child runs. Default: the running executable
    /// (`std::env::current_exe()`). Its `main` must call
    /// [`process::init`](crate::process::init) first. Feature `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn worker_program(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.process.program = Some(path.into());
        self
    }

    /// Replaces a child after it has run `n` jobs (a leaky library, a fragmented heap).
    /// Default: no limit; 0 is refused. Feature `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn max_jobs_per_child(mut self, n: usize) -> Self {
        self.process.max_jobs_per_child = Some(n);
        self
    }

    /// Caps each child's address space (`RLIMIT_AS`, bytes): a job that allocates past it
    /// fails its allocation, the child aborts, the job answers `WorkerLost` and the child is
    /// replaced. Leave room for the program itself (tens of MiB). Default: no limit; 0 is
    /// refused. Feature `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn child_memory_limit(mut self, bytes: u64) -> Self {
        self.process.memory_limit = Some(bytes);
        self
    }

    /// Largest encoded job input or output (one frame), in bytes. Default 64 MiB; at least
    /// 4096 (the handshake, which lists every job name, must fit). A larger
    /// input fails its job with `ProcessJob` before it is sent; a child that sends a larger
    /// frame is killed as broken. Feature `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.process.max_message_bytes = n;
        self
    }

    /// How long a new child has to complete its handshake (after `on_child_start`). Default
    /// 10 s; must be positive. Feature `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn child_start_timeout(mut self, d: Duration) -> Self {
        self.process.start_timeout = d;
        self
    }

    /// Checks every setting and builds the manager (not started).
    ///
    /// # Errors
    /// A [`BuildError`] naming the first setting that is out of range.
    pub fn build(self) -> Result<LeaseManager<S>, BuildError>
    where
        S: 'static,
    {
        #[cfg_attr(not(feature = "process"), allow(unused_mut))]
        let mut settings = self.settings;
        #[cfg(feature = "process")]
        let children = {
            let (configured, children) = crate::process::configure(settings, self.process)?;
            settings = configured;
            children
        };
        #[cfg(not(feature = "process"))]
        if settings.backend == Backend::Process {
            return Err(BuildError::UnsupportedBackend {
                backend: Backend::Process,
                why: "it needs the cargo feature `process` of leasepool".to_owned(),
            });
        }
        #[cfg_attr(not(feature = "process"), allow(unused_mut))]
        let mut manager = LeaseManager::from_config(EngineConfig::new(settings)?);
        #[cfg(feature = "process")]
        manager.set_child_counters(children);
        Ok(manager)
    }
}
