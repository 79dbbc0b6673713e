//! `Lease`: a held pool, and the ways to run work on it.

use std::fmt;
use std::time::Instant;

use leasepool_actors::plumbing::IfAbandoned;
use leasepool_actors::{Backend, JobHandle, LeaseCore, LeaseError, LeaseId, PoolId};

use crate::message::Handle;

/// Exclusive use of one pool of `workers_per_pool` worker threads, until released or revoked.
///
/// Jobs go straight from this handle to the pool's workers. Up to `workers_per_pool` jobs run
/// in parallel; more queue in the pool. Dropping the lease releases it at once, like
/// [`release`](Self::release) (`Drop` takes the engine's short lock, never blocks on other work,
/// and works on any thread).
///
/// ```
/// use std::time::Duration;
/// use leasepool::LeaseManager;
///
/// # #[actix_rt::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().workers_per_pool(2).build()?;
/// manager.start().await?;
/// let lease = manager
///     .acquire()
///     .owner("nightly-import")
///     .lease_for(Duration::from_secs(60))
///     .await?;
/// let rows = lease.run(|| 3 /* a blocking driver call */).await?;
/// let more = lease.submit(|| 4)?; // sent now, awaited later
/// assert_eq!(rows + more.await?, 7);
/// assert_eq!(lease.owner(), Some("nightly-import"));
/// lease.release().await; // or drop it
/// # manager.stop().await;
/// # Ok(()) }
/// ```
#[must_use = "dropping a Lease releases it"]
pub struct Lease<S: 'static = ()> {
    core: LeaseCore<S>,
}

impl<S: 'static> fmt::Debug for Lease<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("id", &self.id())
            .field("pool", &self.pool())
            .field("owner", &self.owner())
            .finish()
    }
}

impl<S: 'static> Lease<S> {
    pub(crate) fn new(core: LeaseCore<S>) -> Self {
        Self { core }
    }

    /// This lease's id (as shown in logs and [`Stats`](crate::Stats)).
    pub fn id(&self) -> LeaseId {
        self.core.facts().id
    }

    /// The pool this lease holds (as shown in [`Stats`](crate::Stats)).
    pub fn pool(&self) -> PoolId {
        self.core.facts().pool
    }

    /// The name of the manager this lease is from (its `name_prefix`).
    pub fn manager_name(&self) -> &str {
        &self.core.facts().manager
    }

    /// The owner label given at acquire.
    pub fn owner(&self) -> Option<&str> {
        self.core.facts().owner.as_deref()
    }

    /// When the soft lifetime (`lease_for`) runs out. Jobs still run during the grace period.
    pub fn soft_expires_at(&self) -> Instant {
        self.core.facts().soft_expires_at
    }

    /// When the lease is revoked: new jobs then fail with [`LeaseError::Expired`].
    pub fn hard_expires_at(&self) -> Instant {
        self.core.facts().hard_expires_at
    }

    /// Jobs sent on this lease that have not finished yet.
    pub fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    /// Runs `f` on a worker thread of this lease's pool and returns its value.
    ///
    /// # Errors
    /// `Panicked` if `f` panics (the worker survives, rebuilt with fresh state); `Released`,
    /// `Expired` or `Stopped` if the lease can no longer take jobs; `NeverRan` if the job was
    /// queued when the lease was revoked or the pool died (it never started: safe to retry).
    ///
    /// # Cancel safety
    /// Dropping the future before a worker starts `f` skips it. Once started, `f` runs to the
    /// end (a thread cannot be interrupted) and the lease counts it until it finishes.
    pub async fn run<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.closures_allowed("run")?;
        self.core
            .dispatch(move |_: &mut S| f(), IfAbandoned::Skip)?
            .await
    }

    /// Like [`run`](Self::run), with `&mut` access to the worker thread's own state.
    pub async fn run_with<F, R>(&self, f: F) -> Result<R, LeaseError>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.closures_allowed("run_with")?;
        self.core.dispatch(f, IfAbandoned::Skip)?.await
    }

    /// Sends a typed message to a worker: runs `<S as Handle<M>>::handle` on its state.
    pub async fn send<M>(&self, msg: M) -> Result<<S as Handle<M>>::Output, LeaseError>
    where
        S: Handle<M>,
        M: Send + 'static,
    {
        self.closures_allowed("send")?;
        self.core
            .dispatch(move |state: &mut S| state.handle(msg), IfAbandoned::Skip)?
            .await
    }

    /// Sends `f` now and returns a handle to its result. The handle may be dropped: the job
    /// still runs, and a release waits for it (draining).
    ///
    /// # Errors
    /// Fails at once, without sending, if the lease can no longer take jobs.
    pub fn submit<F, R>(&self, f: F) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.closures_allowed("submit")?;
        self.core.dispatch(move |_: &mut S| f(), IfAbandoned::Run)
    }

    /// Runs the [`ProcessJob`](crate::process::ProcessJob) `job` and returns its output: in a
    /// worker child on the process backend, on a worker thread on the thread backend (the same
    /// answers either way). Feature `process`.
    ///
    /// # Errors
    /// As [`run`](Self::run), and: `Panicked` if the job panics (the child survives);
    /// `WorkerLost` if the child crashed (it is replaced; the pool's other children are not
    /// affected); `Expired` if the lease was revoked while the job ran (the child was killed);
    /// `ProcessJob` if the job's name is unknown to the worker program or its input or output
    /// does not encode, decode or fit `max_message_bytes`.
    ///
    /// # Cancel safety
    /// As [`run`](Self::run): dropping the future before a worker starts the job skips it.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub async fn call<J: crate::process::ProcessJob>(
        &self,
        job: J,
    ) -> Result<J::Output, LeaseError> {
        self.core
            .dispatch_counted(
                move |_: &mut S| crate::process::run_here(job),
                crate::process::counters::job_tally,
                IfAbandoned::Skip,
            )?
            .flatten()
            .await
    }

    /// Sends the [`ProcessJob`](crate::process::ProcessJob) `job` now and returns a handle to
    /// its output, like [`submit`](Self::submit). Feature `process`.
    ///
    /// # Errors
    /// Fails at once, without sending, if the lease can no longer take jobs.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn submit_call<J: crate::process::ProcessJob>(
        &self,
        job: J,
    ) -> Result<JobHandle<J::Output>, LeaseError> {
        Ok(self
            .core
            .dispatch_counted(
                move |_: &mut S| crate::process::run_here(job),
                crate::process::counters::job_tally,
                IfAbandoned::Run,
            )?
            .flatten())
    }

    /// Closures cannot cross into a child process: on the process backend only `call` runs.
    fn closures_allowed(&self, method: &'static str) -> Result<(), LeaseError> {
        if self.core.facts().backend == Backend::Process {
            return Err(LeaseError::InvalidArgument(format!(
                "{method} sends a closure, which cannot run in a worker process: on \
                 Backend::Process use call / submit_call with a process::ProcessJob"
            )));
        }
        Ok(())
    }

    /// Releases the lease. When it returns the pool is free again (handed to the next waiter,
    /// idle, or retired), or — if jobs still run — the lease is draining and its pool returns
    /// when the last one ends. Dropping the lease does exactly the same; neither waits for
    /// another thread's work.
    pub async fn release(self) {
        self.core.release();
    }
}
