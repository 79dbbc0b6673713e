//! `LeaseManager`: the cheap, cloneable handle users keep, and the `Acquire` builder.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use leasepool_actors::{
    Backend, Capacity, Engine, EngineConfig, LeaseError, LeaseParams, Stats, WaitMode, WaitTicket,
};

#[cfg(feature = "testing")]
use leasepool_actors::{InjectFault, LeaseId, PoolId};

use crate::lease::Lease;

/// A handle to a set of bounded, leased pools of blocking worker threads.
///
/// Clone it freely (it is an `Arc`); every clone drives the same pools. Dropping the last clone
/// without calling [`stop`](LeaseManager::stop) begins the same shutdown without waiting for it.
///
/// ```
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), leasepool::LeaseError> {
/// let manager = LeaseManager::builder().max_pools(2).build().expect("valid settings");
/// manager.start().await?;
/// let lease = manager.acquire().owner("docs").await?;
/// let n = lease.run(|| 6 * 7).await?;
/// assert_eq!(n, 42);
/// lease.release().await;
/// manager.stop().await;
/// # Ok(()) }
/// ```
pub struct LeaseManager<S: 'static = ()> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: 'static> {
    engine: Arc<Engine<S>>,
    /// The process backend's children's counters (see `Counters::children_*`).
    #[cfg(feature = "process")]
    children: Option<Arc<crate::process::counters::ChildCounters>>,
}

impl<S: 'static> Drop for Inner<S> {
    fn drop(&mut self) {
        // Last handle gone: begin shutdown without blocking (threads exit on their own).
        self.engine.stop_detached();
    }
}

impl<S: 'static> Clone for LeaseManager<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: 'static> fmt::Debug for LeaseManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseManager")
            .field("config", self.inner.engine.config())
            .finish()
    }
}

impl<S: 'static> LeaseManager<S> {
    pub(crate) fn from_config(config: EngineConfig<S>) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine: Arc::new(Engine::new(config)),
                #[cfg(feature = "process")]
                children: None,
            }),
        }
    }

    /// Gives a manager just built its children's counters.
    #[cfg(feature = "process")]
    pub(crate) fn set_child_counters(
        &mut self,
        children: Option<Arc<crate::process::counters::ChildCounters>>,
    ) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.children = children;
        }
    }

    /// Starts the host thread and creates the initial pools (`max(min_pools, desired)`), and
    /// returns once each has a worker that built its state (or failed to). Idempotent; after
    /// [`stop`](Self::stop) — or after the supervisor died — it starts afresh.
    ///
    /// # Errors
    /// [`LeaseError::StartFailed`] if the host thread cannot be spawned;
    /// [`LeaseError::NoHealthyPool`] if not one worker could build its state (unless
    /// [`start_degraded`](crate::ManagerBuilder::start_degraded)); the manager is then stopped.
    pub async fn start(&self) -> Result<(), LeaseError> {
        self.inner.engine.start().await
    }

    /// Stops: queued acquirers get [`LeaseError::Stopped`], new acquires
    /// [`LeaseError::NotStarted`], every lease is revoked (its new jobs fail with `Stopped`,
    /// its queued jobs with `NeverRan`; running jobs finish), and every worker thread is
    /// joined — waiting at most `shutdown_timeout` for jobs that do not end, which are then
    /// logged and left detached. Idempotent.
    pub async fn stop(&self) {
        self.inner.engine.stop().await;
    }

    /// Starts an acquire; configure it, then `.await` it.
    ///
    /// Waiters are served first-come first-served. By default the acquire waits as long as it
    /// takes (bounded only by `max_waiters` and `stop`).
    ///
    /// # Cancel safety
    /// Dropping the future leaves the queue at once; a pool is never handed to a dropped
    /// acquire (if one was handed over at that very moment, it is released again).
    pub fn acquire(&self) -> Acquire<'_, S> {
        Acquire::new(ManagerRef::Borrowed(self))
    }

    /// Like [`acquire`](Self::acquire), but the acquire owns a handle to the manager (a cheap
    /// clone), so it is `'static` and can be spawned or stored:
    ///
    /// ```
    /// use leasepool::LeaseManager;
    ///
    /// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
    /// # async fn main() -> Result<(), leasepool::LeaseError> {
    /// let manager = LeaseManager::builder().build().expect("valid settings");
    /// manager.start().await?;
    /// let task = tokio::spawn(manager.acquire_owned().owner("background"));
    /// let lease = task.await.expect("task ran")?;
    /// assert_eq!(lease.owner(), Some("background"));
    /// lease.release().await;
    /// manager.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn acquire_owned(&self) -> Acquire<'static, S> {
        Acquire::new(ManagerRef::Owned(self.clone()))
    }

    /// How much the manager can hand out now: a `Copy` snapshot of its pool counts, taken
    /// under the engine's lock without allocating or messaging an actor — cheap enough for an
    /// admission check on every request. [`stats`](Self::stats) has everything (every lease,
    /// the counters) and builds a list for it.
    ///
    /// ```
    /// # #[actix_rt::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let manager = leasepool::LeaseManager::builder().max_pools(2).build()?;
    /// manager.start().await?;
    /// let lease = manager.acquire().await?;
    /// let now = manager.capacity();
    /// assert_eq!((now.leased, now.free()), (1, 1));
    /// lease.release().await;
    /// manager.stop().await;
    /// # Ok(()) }
    /// ```
    pub fn capacity(&self) -> Capacity {
        self.inner.engine.capacity()
    }

    /// How long an acquirer arriving now would wait for a pool, as estimated from what the
    /// manager observes: the mean of recent lease hold times (recent leases weigh most), how
    /// long each live lease has been held, the acquirers queued ahead and the pools in service
    /// — zero when a pool is free. The basis of a computed `Retry-After`
    /// ([`LeaseConfig::retry_after_estimated`](crate::web::LeaseConfig::retry_after_estimated)
    /// with feature `web`).
    ///
    /// `None` while there is no basis: hold times are measured from the first call on (until
    /// then a release reads no clock), so the first calls answer `None` until a lease has
    /// ended; also `None` with no pool in service. An estimate, not a promise: a job that
    /// runs longer than its pool's recent ones delays it.
    pub fn estimated_wait(&self) -> Option<Duration> {
        self.inner.engine.until_free()
    }

    /// A consistent snapshot: pool counts, waiters, every lease, counters.
    pub async fn stats(&self) -> Stats {
        #[cfg_attr(not(feature = "process"), allow(unused_mut))]
        let mut stats = self.inner.engine.stats();
        #[cfg(feature = "process")]
        if let Some(children) = &self.inner.children {
            children.fill(&mut stats.counters);
        }
        stats
    }

    /// Tells the supervisor the work-unit count changed, so it re-evaluates sizing now instead
    /// of at the next `check_interval`.
    pub fn notify_scale_changed(&self) {
        self.inner.engine.notify_scale_changed();
    }

    /// The manager's name: its `name_prefix` (default `"leasepool"`), as its threads and every
    /// log event's `manager` field carry it.
    pub fn name(&self) -> &str {
        self.inner.engine.name()
    }

    /// Whether `other` is this manager (a clone of it), not merely one of the same name.
    ///
    /// ```
    /// # fn main() -> Result<(), leasepool::BuildError> {
    /// let a = leasepool::LeaseManager::builder().name_prefix("db").build()?;
    /// let b = leasepool::LeaseManager::builder().name_prefix("db").build()?;
    /// assert!(a.same_as(&a.clone()));
    /// assert!(!a.same_as(&b));
    /// # Ok(()) }
    /// ```
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The backend this manager runs.
    pub fn backend(&self) -> Backend {
        self.inner.engine.config().backend()
    }

    /// Fault injection: makes the actor of `pool` panic in a handler, as a bug would. The
    /// supervisor replaces the pool; a lease holding it is revoked (its queued and new jobs fail
    /// with `NeverRan`). Returns whether the pool existed. Feature `testing`.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn kill_pool(&self, pool: PoolId) -> bool {
        self.inner
            .engine
            .inject_fault(InjectFault::CrashPool(pool))
            .await
    }

    /// Fault injection: kills `n` worker threads of `pool` (each takes a poison job and dies
    /// outside `catch_unwind`). The pool replaces them with backoff. Feature `testing`.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn kill_worker(&self, pool: PoolId, n: usize) -> bool {
        self.inner
            .engine
            .inject_fault(InjectFault::KillWorkers(pool, n))
            .await
    }

    /// Fault injection: makes the actor of `lease` panic in a handler. The lease is revoked
    /// (queued and new jobs fail with `NeverRan`) and its pool retired and replaced. Feature `testing`.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub async fn kill_lease_actor(&self, lease: LeaseId) -> bool {
        self.inner
            .engine
            .inject_fault(InjectFault::CrashLease(lease))
            .await
    }

    /// Fault injection: makes the supervisor actor itself panic in a handler, as a bug would.
    /// The engine fails closed: waiters and leases are answered `Stopped`, acquires
    /// `NotStarted`, every pool is stopped and the host thread ends after the worker threads
    /// (at most `shutdown_timeout`); `stop()` returns and `start()` works again. Returns
    /// whether a supervisor was running. Feature `testing`.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn kill_supervisor(&self) -> bool {
        self.inner.engine.crash_supervisor()
    }

    /// Fault injection: the next `n` worker-thread spawns fail the way they do at the
    /// process's thread limit (`EAGAIN`). Each failure is counted
    /// (`counters.thread_spawn_failures`), logged and retried with backoff; a pool with no
    /// thread is never handed out. Feature `testing`.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn fail_next_worker_spawns(&self, n: usize) {
        self.inner.engine.fail_next_worker_spawns(n);
    }

    /// Entries in the engine's books — pools in every state, queued waiters, live leases, and
    /// leases waiting for the supervisor to start their actors. It stays within a few times
    /// `max_pools` plus twice the queued waiters, whatever ran before (and drops to a handful once
    /// the supervisor has caught up), so a leak test can churn pools and leases and check that
    /// nothing accumulates. Feature `testing`.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn book_entries(&self) -> usize {
        self.inner.engine.book_entries()
    }

    pub(crate) fn engine(&self) -> &Arc<Engine<S>> {
        &self.inner.engine
    }

    /// Worker threads alive now (0 when stopped). Useful in tests and health checks.
    pub fn live_worker_threads(&self) -> usize {
        self.inner.engine.live_worker_threads()
    }
}

/// The manager an [`Acquire`] works on: borrowed (`acquire`) or owned (`acquire_owned`).
enum ManagerRef<'a, S: 'static> {
    Borrowed(&'a LeaseManager<S>),
    Owned(LeaseManager<S>),
}

impl<S: 'static> ManagerRef<'_, S> {
    fn get(&self) -> &LeaseManager<S> {
        match self {
            ManagerRef::Borrowed(m) => m,
            ManagerRef::Owned(m) => m,
        }
    }
}

/// An acquire being configured. `.await` it to get a [`Lease`]; it is a `Future` whose work
/// starts at the first poll.
///
/// ```
/// use std::time::Duration;
/// use leasepool::{LeaseError, LeaseManager};
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().max_pools(1).build()?;
/// manager.start().await?;
/// let first = manager.acquire().owner("first").await?; // waits as long as it takes
/// // Nothing free: fail at once, or wait a bounded time.
/// assert_eq!(manager.acquire().no_wait().await.unwrap_err(), LeaseError::Unavailable);
/// let waited = manager.acquire().timeout(Duration::from_millis(20)).await.unwrap_err();
/// assert_eq!(waited, LeaseError::Timeout(Duration::from_millis(20)));
/// first.release().await;
/// let second = manager.acquire().lease_for(Duration::from_secs(30)).await?;
/// # second.release().await;
/// # manager.stop().await;
/// # Ok(()) }
/// ```
#[must_use = "an acquire does nothing until awaited"]
pub struct Acquire<'a, S: 'static> {
    manager: ManagerRef<'a, S>,
    owner: Option<String>,
    lease_for: Option<Duration>,
    timeout: Option<Duration>,
    no_wait: bool,
    progress: Progress<S>,
}

impl<S: 'static> fmt::Debug for Acquire<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("owner", &self.owner)
            .field("lease_for", &self.lease_for)
            .field("timeout", &self.timeout)
            .field("no_wait", &self.no_wait)
            .finish()
    }
}

impl<'a, S: 'static> Acquire<'a, S> {
    fn new(manager: ManagerRef<'a, S>) -> Self {
        Acquire {
            manager,
            owner: None,
            lease_for: None,
            timeout: None,
            no_wait: false,
            progress: Progress::Configuring,
        }
    }

    /// Labels the lease in logs and [`Stats`].
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Soft lifetime of the lease (default: the manager's `default_lease`). After it plus
    /// `lease_grace` the lease is revoked. Zero is refused with `InvalidArgument`.
    pub fn lease_for(mut self, d: Duration) -> Self {
        self.lease_for = Some(d);
        self
    }

    /// Waits at most `d` for a pool, then fails with [`LeaseError::Timeout`].
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Fails at once with [`LeaseError::Unavailable`] unless a pool is free, or can be created
    /// (under `max_pools`) without waiting for anyone to release. Takes precedence over
    /// [`timeout`](Self::timeout).
    pub fn no_wait(mut self) -> Self {
        self.no_wait = true;
        self
    }
}

enum Progress<S: 'static> {
    Configuring,
    Waiting(WaitTicket<S>),
    Done,
}

/// `Acquire` is itself the future, so it also works where a `Future` is required, such as
/// `block_on` or `select!`; the work starts at the first poll. It is a small state machine polled
/// in place — no boxed future — so a queued acquirer costs little memory. `acquire()` borrows the
/// manager; to hand the future to `tokio::spawn` (which needs `'static`), use
/// [`LeaseManager::acquire_owned`].
impl<S: 'static> Future for Acquire<'_, S> {
    type Output = Result<Lease<S>, LeaseError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Progress::Configuring = this.progress {
            let engine = &this.manager.get().inner.engine;
            let lease_for = this.lease_for.unwrap_or(engine.config().default_lease());
            if lease_for.is_zero() {
                this.progress = Progress::Done;
                let invalid = leasepool_actors::metrics::AcquireEnd::Invalid;
                engine.metrics().acquire_at_once(invalid);
                return Poll::Ready(Err(LeaseError::InvalidArgument(
                    "lease_for must be greater than zero (got 0s)".to_owned(),
                )));
            }
            let mode = match (this.no_wait, this.timeout) {
                (true, _) => WaitMode::NoWait,
                (false, Some(d)) => WaitMode::Timeout(d),
                (false, None) => WaitMode::Forever,
            };
            let params = LeaseParams {
                owner: this.owner.take(),
                lease_for,
            };
            match engine.begin_acquire_waking(params, mode, cx.waker()) {
                Err(e) => {
                    this.progress = Progress::Done;
                    return Poll::Ready(Err(e));
                }
                Ok(Ok(lease)) => {
                    this.progress = Progress::Done;
                    return Poll::Ready(Ok(Lease::new(lease)));
                }
                Ok(Err(ticket)) => this.progress = Progress::Waiting(ticket),
            }
        }
        match &mut this.progress {
            Progress::Waiting(ticket) => {
                let answer = ready!(ticket.poll_wait(cx));
                this.progress = Progress::Done;
                Poll::Ready(answer.map(Lease::new))
            }
            // Polled after completion: answer like a stopped manager rather than panic.
            Progress::Done | Progress::Configuring => Poll::Ready(Err(LeaseError::NotStarted)),
        }
    }
}
