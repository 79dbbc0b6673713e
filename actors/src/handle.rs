//! `LeaseCore`: the engine side of a lease handle — the job fast path and the release message.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use std::sync::Weak;

use actix::Addr;
use tokio::sync::oneshot;

use crate::error::LeaseError;
use crate::job::{InFlight, TypedJob};
use crate::lease::{LeaseActor, LeaseShared};
use crate::messages::{Job, JobKind, Release};
use crate::pool::PoolQueue;
use crate::registry::Registry;
use crate::stats::{LeaseId, PoolId};

/// The engine's lease handle. Dropping it releases the lease (one non-blocking `do_send`).
pub struct LeaseCore<S: 'static> {
    shared: Arc<LeaseShared>,
    actor: Addr<LeaseActor<S>>,
    /// Weak, so a handle kept after its lease was revoked cannot keep a retired pool's threads
    /// alive (workers leave only when the queue's last sender is gone).
    queue: Weak<PoolQueue<S>>,
    registry: Arc<Registry<S>>,
}

impl<S: 'static> LeaseCore<S> {
    pub(crate) fn new(
        shared: Arc<LeaseShared>,
        actor: Addr<LeaseActor<S>>,
        queue: Weak<PoolQueue<S>>,
        registry: Arc<Registry<S>>,
    ) -> Self {
        Self {
            shared,
            actor,
            queue,
            registry,
        }
    }

    /// The lease's id.
    pub fn id(&self) -> LeaseId {
        self.shared.id
    }

    /// The pool this lease holds.
    pub fn pool(&self) -> PoolId {
        self.shared.pool
    }

    /// The owner label, if one was given.
    pub fn owner(&self) -> Option<&str> {
        self.shared.owner.as_deref()
    }

    /// When `lease_for` runs out.
    pub fn soft_expires_at(&self) -> Instant {
        self.shared.soft_expires_at
    }

    /// When the lease is revoked.
    pub fn hard_expires_at(&self) -> Instant {
        self.shared.hard_expires_at
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
        let queue = self.queue.upgrade().ok_or(LeaseError::WorkerLost)?;
        if queue.dead.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(LeaseError::WorkerLost);
        }
        tracing::debug!(manager = %self.registry.config.name_prefix, lease_id = %self.shared.id, pool = %self.shared.pool, "job sent");
        Ok((in_flight, queue))
    }

    fn send_job<F, R>(queue: &PoolQueue<S>, job: TypedJob<F, R>)
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        // If every worker is gone the queue is closed; the returned job is dropped here and
        // answers WorkerLost, like any job that never runs.
        drop(queue.jobs.send(Job(JobKind::Run(Box::new(job)))));
    }

    /// Sends `f` to a worker of this lease's pool now. With `skip_if_abandoned`, a job whose
    /// handle is dropped before a worker picks it up is skipped; without, it runs regardless.
    pub fn dispatch<F, R>(&self, f: F, skip_if_abandoned: bool) -> Result<JobHandle<R>, LeaseError>
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (in_flight, queue) = self.admit()?;
        let (reply, answer) = oneshot::channel();
        Self::send_job(
            &queue,
            TypedJob::new(f, reply, in_flight, skip_if_abandoned),
        );
        Ok(JobHandle { answer })
    }

    /// Like [`dispatch`](Self::dispatch), answering on a reply channel made beforehand (so a
    /// caller can hold its `JobHandle` before the job has a lease, as the `WorkGrinder` does).
    /// If the lease refuses the job, `reply` is answered with the refusal.
    pub fn dispatch_reply<F, R>(&self, f: F, reply: JobReply<R>, skip_if_abandoned: bool)
    where
        F: FnOnce(&mut S) -> R + Send + 'static,
        R: Send + 'static,
    {
        match self.admit() {
            Ok((in_flight, queue)) => {
                Self::send_job(
                    &queue,
                    TypedJob::new(f, reply.0, in_flight, skip_if_abandoned),
                );
            }
            Err(e) => {
                reply.fail(e);
                // A grinder dispatches from the host thread, which must never panic.
                crate::job::drop_quietly(f, &self.shared.manager);
            }
        }
    }

    /// Releases the lease; when it returns, the pool is free again or the lease is draining
    /// its running jobs.
    ///
    /// With nothing in flight the pool goes back to the books right here — no round trip to
    /// the host — and the lease actor is only told to stop. (Nothing can become in flight once
    /// the lease is marked released: `dispatch` raises the count before checking the state.)
    pub async fn release(self) {
        if !self.shared.mark_released() {
            return;
        }
        if self.shared.in_flight() == 0 {
            self.registry.finish_lease(self.shared.id);
            self.actor.do_send(Release);
        } else {
            let _ = self.actor.send(Release).await;
        }
    }
}

impl<S: 'static> Drop for LeaseCore<S> {
    fn drop(&mut self) {
        if self.shared.mark_released() {
            self.actor.do_send(Release);
        }
    }
}

/// The result of one job: a future that resolves exactly once, with the job's value or the
/// reason it has none. Dropping it does not cancel a job sent with `submit`.
#[must_use = "a JobHandle does nothing unless awaited (the job itself runs regardless)"]
#[derive(Debug)]
pub struct JobHandle<R> {
    answer: oneshot::Receiver<Result<R, LeaseError>>,
}

/// The sending side of a [`JobHandle`], for work whose job is created later.
#[derive(Debug)]
pub struct JobReply<R>(pub(crate) oneshot::Sender<Result<R, LeaseError>>);

impl<R> JobReply<R> {
    /// Answers the job's handle with an error instead of a value.
    pub fn fail(self, error: LeaseError) {
        let _ = self.0.send(Err(error));
    }
}

impl<R> JobHandle<R> {
    /// Waits for the answer by blocking this thread: from plain threads, `spawn_blocking`
    /// closures, or threads that only entered a runtime handle.
    ///
    /// # Errors
    /// [`LeaseError::BlockingOnRuntime`] inside an async task or `block_on`, where blocking
    /// would stall the executor (await the handle there); otherwise the job's own outcome.
    pub fn blocking_wait(self) -> Result<R, LeaseError> {
        if crate::blocking::inside_async_poll() {
            return Err(LeaseError::BlockingOnRuntime("blocking_wait"));
        }
        crate::blocking::block_on(self)
    }

    /// A reply channel and its handle.
    pub fn channel() -> (JobReply<R>, JobHandle<R>) {
        let (reply, answer) = oneshot::channel();
        (JobReply(reply), JobHandle { answer })
    }
}

impl<R> Future for JobHandle<R> {
    type Output = Result<R, LeaseError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(LeaseError::WorkerLost)))
    }
}
