//! `LeaseCore`: the engine side of a lease handle — the job fast path, and release.
//!
//! Jobs go from here straight to the pool's job queue; the lease's shared state (atomics) lets
//! the handle refuse a job without a message. Release — explicit, or by dropping the handle —
//! ends the lease right here when nothing is in flight, taking the bookkeeper's short mutex (as
//! deadpool's object guard does); with jobs in flight the lease drains, and the last job to
//! finish ends it. Neither path waits for another thread's work or wakes the host.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use crate::error::LeaseError;
use crate::job::{
    completed, drop_quietly, job_span, IfAbandoned, InFlight, Job, JobHandle, JobReply, JobTally,
    PoolQueue, TypedJob,
};
use crate::lease_state::{LeaseFacts, LeaseShared};

/// The engine's lease handle.
pub struct LeaseCore<S: 'static> {
    shared: Arc<LeaseShared>,
    /// Weak, so a handle kept after its lease was revoked cannot keep a retired pool's threads
    /// alive (workers leave only when the queue's last sender is gone).
    queue: Weak<PoolQueue<S>>,
}

impl<S: 'static> LeaseCore<S> {
    pub(crate) fn new(shared: Arc<LeaseShared>, queue: Weak<PoolQueue<S>>) -> Self {
        Self { shared, queue }
    }

    /// What the lease is: id, pool, owner, expiry times.
    pub fn facts(&self) -> &LeaseFacts {
        &self.shared.facts
    }

    /// Jobs sent on this lease that have not finished.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Admits one job: counts it in flight (before checking the lease's state, see
    /// `InFlight`), and finds the pool's queue, refusing if the pool is gone or has no live
    /// worker.
    fn admit(&self) -> Result<(InFlight, Arc<PoolQueue<S>>), LeaseError> {
        let in_flight = InFlight::enter(&self.shared)?;
        let queue = self.queue.upgrade().ok_or(LeaseError::NeverRan)?;
        if queue.dead.load(Relaxed) {
            return Err(LeaseError::NeverRan);
        }
        let facts = &self.shared.facts;
        tracing::debug!(manager = %facts.manager, lease_id = %facts.id, pool = %facts.pool, "job sent");
        Ok((in_flight, queue))
    }

    fn send_job<F, R>(queue: &PoolQueue<S>, job: TypedJob<F, R>)
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        queue.send(Job::Run(Box::new(job)));
    }

    /// Sends `f` to a worker of this lease's pool now.
    pub fn dispatch<F, R>(
        &self,
        f: F,
        if_abandoned: IfAbandoned,
    ) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.dispatch_counted(f, completed, if_abandoned)
    }

    /// Like [`dispatch`](Self::dispatch), with how the job's value counts in the counters
    /// (a process job's value is the child's answer: completed, panicked, failed or lost).
    pub fn dispatch_counted<F, R>(
        &self,
        f: F,
        count: fn(&R) -> JobTally,
        if_abandoned: IfAbandoned,
    ) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (in_flight, queue) = self.admit()?;
        let (reply, handle) = JobHandle::channel();
        let span = self.job_span();
        Self::send_job(
            &queue,
            TypedJob::new(f, reply.0, in_flight, if_abandoned, count, span),
        );
        Ok(handle)
    }

    /// Like [`dispatch`](Self::dispatch), answering on a reply channel made beforehand (so a
    /// caller can hold its `JobHandle` before the job has a lease, as the `WorkGrinder` does).
    /// If the lease refuses the job, `reply` is answered with the refusal.
    /// `span` is the job's span, made where it was submitted ([`LeaseCore::job_span`] there).
    pub fn dispatch_reply<F, R>(
        &self,
        f: F,
        reply: JobReply<R>,
        if_abandoned: IfAbandoned,
        span: tracing::Span,
    ) where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        match self.admit() {
            Ok((in_flight, queue)) => {
                // Only on the job's own span: a disabled one stands in with the submitter's.
                let ours = span
                    .metadata()
                    .is_some_and(|m| m.target() == "leasepool::job");
                if ours {
                    let facts = &self.shared.facts;
                    span.record("lease_id", tracing::field::display(facts.id));
                    span.record("pool", tracing::field::display(facts.pool));
                }
                let job = TypedJob::new(f, reply.0, in_flight, if_abandoned, completed, span);
                Self::send_job(&queue, job);
            }
            Err(e) => {
                reply.fail(e);
                // A grinder dispatches from the host thread, which must never panic.
                drop_quietly(f, &self.shared.facts.manager);
            }
        }
    }

    /// The span a job sent on this lease now runs in: a child of the current span (see
    /// `docs/observability.md`).
    pub fn job_span(&self) -> tracing::Span {
        let facts = &self.shared.facts;
        job_span(&facts.manager, Some((facts.id, facts.pool)))
    }

    /// Releases the lease: when it returns, the pool is free again (to the next waiter, idle,
    /// or retired) or the lease is draining its running jobs and ends with the last one.
    pub fn release(self) {
        // Drop does it.
    }
}

impl<S: 'static> Drop for LeaseCore<S> {
    fn drop(&mut self) {
        // Nothing can become in flight once the lease is marked released: `dispatch` raises the
        // count before it checks the state.
        if self.shared.mark_released() {
            self.shared.finish_or_drain();
        }
    }
}
