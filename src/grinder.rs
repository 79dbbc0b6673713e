//! `WorkGrinder`: many small blocking submissions, run in leased batches.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "process")]
use leasepool_actors::plumbing::IfAbandoned;
use leasepool_actors::{Grinder, GrinderConfig, GrinderStats, JobHandle, LeaseError, StopMode};

use crate::manager::LeaseManager;
use leasepool_actors::BuildError;

/// Batches many small blocking jobs onto leases, so callers submit single items and never deal
/// with leases.
///
/// A batch starts when `batch_size_threshold` items are pending or the oldest has waited
/// `max_wait`; it takes every pending item, acquires one lease (owner
/// `{owner_prefix}-batch-{n}`), runs the items on that pool's workers in parallel, and releases
/// the lease when the last one ends. Up to `max_concurrent_batches` batches run at once. Each
/// item resolves exactly once, with its own value or error; a panicking item fails alone.
///
/// ```
/// use leasepool::{LeaseManager, StopMode, WorkGrinder};
/// use std::time::Duration;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().max_pools(2).build()?;
/// manager.start().await?;
/// let grinder = WorkGrinder::builder(&manager)
///     .batch_size_threshold(10)
///     .max_wait(Duration::from_millis(20))
///     .build()?;
/// grinder.start().await?;
/// assert_eq!(grinder.submit(|| 6 * 7).await?, 42);
/// grinder.stop(StopMode::Drain).await;
/// manager.stop().await;
/// # Ok(()) }
/// ```
pub struct WorkGrinder<S: 'static = ()> {
    inner: Arc<Inner<S>>,
}

struct Inner<S: 'static> {
    grinder: Arc<Grinder<S>>,
    // A grinder needs its manager: keep it alive as long as the grinder.
    manager: LeaseManager<S>,
}

impl<S: 'static> Drop for Inner<S> {
    fn drop(&mut self) {
        // Last handle gone: pending items are answered `Stopped`; running batches finish.
        self.grinder.stop_detached();
    }
}

impl<S: 'static> Clone for WorkGrinder<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: 'static> std::fmt::Debug for WorkGrinder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkGrinder")
            .field("config", self.inner.grinder.config())
            .finish_non_exhaustive()
    }
}

/// Removes a `submit` item from the queue if its future is dropped while the item waits.
struct CancelOnDrop<'a, S: 'static> {
    grinder: &'a Grinder<S>,
    id: u64,
}

impl<S: 'static> Drop for CancelOnDrop<'_, S> {
    fn drop(&mut self) {
        self.grinder.cancel(self.id);
    }
}

impl<S: 'static> WorkGrinder<S> {
    /// Starts configuring a grinder over `manager`'s pools.
    pub fn builder(manager: &LeaseManager<S>) -> GrinderBuilder<S> {
        GrinderBuilder {
            manager: manager.clone(),
            config: GrinderConfig {
                batch_size_threshold: 20,
                max_wait: Duration::from_secs(10),
                lease_for: Duration::from_secs(60),
                owner_prefix: "work-grinder".to_owned(),
                max_pending: 100_000,
                max_concurrent_batches: manager.engine().config().max_pools(),
                stop_timeout: manager.engine().config().shutdown_timeout(),
            },
        }
    }

    /// Starts the grinder's actor on the manager's host. The manager must be started.
    /// Idempotent; a stopped grinder can be started again, also after its manager was stopped
    /// and started again.
    ///
    /// # Errors
    /// `NotStarted` if the manager is not running.
    pub async fn start(&self) -> Result<(), LeaseError> {
        self.inner.grinder.start().await
    }

    /// Runs `f` in a batch and returns its value, waiting for queue room when `max_pending`
    /// items are already pending.
    ///
    /// # Cancel safety
    /// Dropping the future removes the item from the queue at once; if a batch already took it
    /// but no worker has started it, it is skipped.
    pub async fn submit<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.closures_allowed("submit")?;
        self.submit_any(f).await
    }

    async fn submit_any<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (id, handle) = self.inner.grinder.submit(f).await?;
        self.await_item(id, handle).await
    }

    /// Awaits a submitted item's answer; dropping this future removes the item from the queue.
    async fn await_item<R>(&self, id: u64, handle: JobHandle<R>) -> Result<R, LeaseError> {
        let cancel = CancelOnDrop {
            grinder: &*self.inner.grinder,
            id,
        };
        let out = handle.await;
        std::mem::forget(cancel);
        out
    }

    /// Runs the [`ProcessJob`](crate::process::ProcessJob) `job` in a batch, like
    /// [`submit`](Self::submit) — in a worker child on the process backend, on a worker thread
    /// on the thread backend. On the process backend a batch's items of one job type travel to
    /// the children in one frame per worker: one round trip for many items. Feature `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub async fn submit_call<J: crate::process::ProcessJob>(
        &self,
        job: J,
    ) -> Result<J::Output, LeaseError> {
        if !self.process_backend() {
            return self
                .submit_any(move || crate::process::run_here(job))
                .await?;
        }
        let (launch, handle) = self.gathered(job, IfAbandoned::Skip);
        let id = self.inner.grinder.submit_launch(launch).await?;
        self.await_item(id, handle).await
    }

    /// Queues the [`ProcessJob`](crate::process::ProcessJob) `job` now, like
    /// [`enqueue`](Self::enqueue) (batched as for [`submit_call`](Self::submit_call)). Feature
    /// `process`.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn enqueue_call<J: crate::process::ProcessJob>(
        &self,
        job: J,
    ) -> Result<JobHandle<J::Output>, LeaseError> {
        if !self.process_backend() {
            return Ok(self
                .inner
                .grinder
                .enqueue(move || crate::process::run_here(job))?
                .flatten());
        }
        let (launch, handle) = self.gathered(job, IfAbandoned::Run);
        self.inner.grinder.enqueue_launch(launch)?;
        Ok(handle)
    }

    #[cfg(feature = "process")]
    fn process_backend(&self) -> bool {
        self.inner.manager.backend() == leasepool_actors::Backend::Process
    }

    /// An item that joins its batch's group of `J`s (sent in one frame per worker).
    #[cfg(feature = "process")]
    fn gathered<J: crate::process::ProcessJob>(
        &self,
        job: J,
        if_abandoned: IfAbandoned,
    ) -> (
        leasepool_actors::plumbing::RawLaunch<S>,
        JobHandle<J::Output>,
    ) {
        let (reply, handle) = JobHandle::channel();
        let workers = self.inner.manager.engine().config().workers_per_pool();
        // The submitter's span, for its part's (see `batch::part_span`).
        let span = tracing::Span::current();
        let launch: leasepool_actors::plumbing::RawLaunch<S> = Box::new(move |batch| match batch {
            Err(e) => {
                reply.fail(e);
                crate::process::drop_quietly(job);
            }
            Ok(batch) => batch.group(
                move |g: &mut crate::process::Gathered<J>| {
                    g.workers = workers;
                    g.items.push((job, reply, if_abandoned));
                    g.spans.push(span);
                },
                crate::process::send_gathered::<S, J>,
            ),
        });
        (launch, handle)
    }

    /// Closures cannot cross into a child process: on the process backend only the `_call`
    /// methods run.
    fn closures_allowed(&self, method: &'static str) -> Result<(), LeaseError> {
        if self.inner.manager.backend() == leasepool_actors::Backend::Process {
            return Err(LeaseError::InvalidArgument(format!(
                "WorkGrinder::{method} sends a closure, which cannot run in a worker process: \
                 on Backend::Process use submit_call / enqueue_call with a process::ProcessJob"
            )));
        }
        Ok(())
    }

    /// Queues `f` now and returns a handle to its result, or `Unavailable` at once when
    /// `max_pending` items are pending. Dropping the handle does not cancel the item.
    pub fn enqueue<F, R>(&self, f: F) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.closures_allowed("enqueue")?;
        self.inner.grinder.enqueue(f)
    }

    /// For code that may block — plain OS threads, `tokio::task::spawn_blocking` closures,
    /// threads that only entered a runtime handle: queues `f` (waiting for room) and blocks
    /// until its result.
    ///
    /// # Errors
    /// `BlockingOnRuntime` when called inside an async task or `block_on` (use [`submit`]
    /// there), instead of blocking — and possibly deadlocking — that executor. Where it cannot
    /// tell: inside `tokio::task::unconstrained` it blocks as asked.
    ///
    /// [`submit`]: Self::submit
    pub fn submit_blocking<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.closures_allowed("submit_blocking")?;
        self.inner.grinder.submit_blocking(f)
    }

    /// Stops: `Drain` runs everything already queued first; `CancelPending` answers every item
    /// not yet on a lease (pending, or in a batch still waiting for its lease, whose wait is
    /// cancelled) with `Stopped`. Either way new items are refused with `Stopped`, and this
    /// returns when nothing is pending and no batch runs — or after
    /// [`stop_timeout`](GrinderBuilder::stop_timeout), when items not yet on a lease are answered
    /// `Stopped` and running batches are left to finish. Idempotent; a `start` called meanwhile
    /// waits for the stop to finish. Stopping the manager stops its grinders too (their pending
    /// items are answered `Stopped`): to drain a grinder, stop it before its manager.
    pub async fn stop(&self, mode: StopMode) {
        self.inner.grinder.stop(mode).await;
    }

    /// A snapshot: started, pending items, running batches, oldest wait, batches and items done.
    pub async fn stats(&self) -> GrinderStats {
        self.inner.grinder.stats()
    }
}

/// Configures a [`WorkGrinder`]. Start from [`WorkGrinder::builder`].
///
/// ```
/// use std::time::Duration;
/// use leasepool::{LeaseManager, WorkGrinder};
///
/// let manager = LeaseManager::builder().max_pools(4).build().expect("valid");
/// let grinder = WorkGrinder::builder(&manager)
///     .batch_size_threshold(64)               // a batch at 64 items …
///     .max_wait(Duration::from_millis(5))      // … or when the oldest waited 5 ms
///     .max_concurrent_batches(2)               // leave 2 pools to other users
///     .max_pending(10_000)                     // backpressure beyond it
///     .stop_timeout(Duration::from_secs(30))   // time to drain at shutdown
///     .build()
///     .expect("valid settings");
/// # drop(grinder);
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct GrinderBuilder<S: 'static> {
    manager: LeaseManager<S>,
    config: GrinderConfig,
}

impl<S: 'static> GrinderBuilder<S> {
    /// Pending items that start a batch. Default 20; at least 1.
    pub fn batch_size_threshold(mut self, n: usize) -> Self {
        self.config.batch_size_threshold = n;
        self
    }

    /// Longest an item waits before a batch starts anyway. Default 10 s; positive;
    /// `Duration::MAX` means "never by age, only at the threshold (or a `Drain`)".
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.config.max_wait = d;
        self
    }

    /// Soft lifetime of each batch's lease. Default 60 s; positive.
    pub fn lease_for(mut self, d: Duration) -> Self {
        self.config.lease_for = d;
        self
    }

    /// Batch leases are owned by `{owner_prefix}-batch-{n}`. Default `"work-grinder"`.
    pub fn owner_prefix(mut self, p: impl Into<String>) -> Self {
        self.config.owner_prefix = p.into();
        self
    }

    /// Most items that may be pending. Default 100 000; at least 1.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.config.max_pending = n;
        self
    }

    /// Most batches at once (waiting for a lease or running). Default: the manager's
    /// `max_pools`; at least 1.
    pub fn max_concurrent_batches(mut self, n: usize) -> Self {
        self.config.max_concurrent_batches = n;
        self
    }

    /// The longest [`WorkGrinder::stop`] waits: with `Drain`, for the queued items to run and
    /// the batches to finish; with `CancelPending`, for the running batches. When it passes,
    /// items not yet on a lease are answered `Stopped` (logged with `warn!`) and running
    /// batches finish on their own, so `stop` always returns. Default: the manager's
    /// `shutdown_timeout` (5 s unless set) — raise it to drain a long queue. Zero means "do
    /// not wait"; `Duration::MAX` waits as long as it takes.
    pub fn stop_timeout(mut self, d: Duration) -> Self {
        self.config.stop_timeout = d;
        self
    }

    /// Checks the settings and builds the grinder (not started).
    ///
    /// # Errors
    /// A [`BuildError`] naming the first setting out of range.
    pub fn build(self) -> Result<WorkGrinder<S>, BuildError> {
        let c = &self.config;
        for (setting, value) in [
            ("batch_size_threshold", c.batch_size_threshold),
            ("max_pending", c.max_pending),
            ("max_concurrent_batches", c.max_concurrent_batches),
        ] {
            if value == 0 {
                return Err(BuildError::Zero { setting });
            }
        }
        for (setting, value) in [("max_wait", c.max_wait), ("lease_for", c.lease_for)] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration { setting });
            }
        }
        Ok(WorkGrinder {
            inner: Arc::new(Inner {
                grinder: Grinder::new(Arc::clone(self.manager.engine()), self.config),
                manager: self.manager,
            }),
        })
    }
}
