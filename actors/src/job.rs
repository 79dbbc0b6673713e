//! The unit of work that travels from a lease handle to a worker thread, the queue it travels
//! on, and the handle its caller awaits.
//!
//! Jobs do not travel through actix: each pool has a crossbeam queue ([`PoolQueue`]) that its
//! `Worker` sync actors serve directly (see `worker.rs` for why).
//!
//! A job owns its reply sender. Whatever happens to it — it runs, it panics, it is skipped
//! because its lease was revoked, its envelope is dropped because the pool died — it answers
//! exactly once: the `Drop` impl answers `NeverRan` if nothing else did.
//!
//! Everything a user handed us is also *dropped* under `catch_unwind`: a closure skipped unrun,
//! a panic payload, a result nobody waits for any more. A destructor that panics outside
//! `catch_unwind` would kill the worker thread (actix does not catch it), so such a panic is
//! swallowed here and the job still answers what it would have answered.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use tokio::sync::oneshot;

use crate::current::JobScope;
use crate::error::LeaseError;
use crate::lease_state::LeaseShared;
use crate::metrics::JobEnd;
use crate::stats::{CounterCells, LeaseId, PoolId};

/// One message on a pool's job queue.
pub(crate) enum Job<S> {
    /// Run this job.
    Run(Box<dyn ErasedJob<S>>),
    /// Fault injection (`kill_worker`): kill the thread that takes this, outside
    /// `catch_unwind`, as a crash in the worker itself would.
    KillWorker,
}

/// The sending side of a pool's job queue. The pool actor owns the only `Arc`; lease handles
/// hold `Weak`s, so a handle kept after its lease ended cannot keep the pool's threads alive.
pub(crate) struct PoolQueue<S> {
    pub(crate) jobs: Sender<Job<S>>,
    /// The queue's receiving side, for senders to empty a dead pool's queue themselves (below).
    pub(crate) backlog: Receiver<Job<S>>,
    /// Set while the pool has no live worker: new jobs fail at once with `NeverRan`.
    pub(crate) dead: AtomicBool,
}

impl<S> PoolQueue<S> {
    /// Sends `job` to the pool's workers. A job that slips in just as the last worker dies
    /// (after the pool emptied its queue) would wait for a replacement that may be seconds away;
    /// so a sender that sees the pool dead after sending empties the queue itself: what is in
    /// it answers `NeverRan` now.
    pub(crate) fn send(&self, job: Job<S>) {
        // If every worker is gone the queue is closed; the returned job is dropped here and
        // answers NeverRan, like any job that never runs.
        drop(self.jobs.send(job));
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            while let Ok(stranded) = self.backlog.try_recv() {
                drop(stranded);
            }
        }
    }
}

/// What happens to a job whose caller stops waiting before a worker starts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfAbandoned {
    /// Skip it (`run`, `run_with`, `send`: dropping the future cancels the job).
    Skip,
    /// Run it anyway (`submit`: the caller may drop the handle on purpose).
    Run,
}

/// What running a job did to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JobOutcome {
    /// Ran (or was skipped); the worker's state is intact.
    Ran,
    /// Panicked; the worker must be rebuilt with fresh state.
    Panicked,
}

/// A job with its closure and result type erased, so one `Worker<S>` serves every `R`.
pub(crate) trait ErasedJob<S>: Send {
    fn run(self: Box<Self>, state: &mut S, counters: &CounterCells, manager: &str) -> JobOutcome;
}

/// Counts a job as in flight on its lease for as long as it exists.
///
/// The count is raised *before* the lease state is checked and lowered when the job is gone, so
/// a lease actor that sees zero after a release knows no job can still reach its pool.
pub(crate) struct InFlight(Arc<LeaseShared>);

impl InFlight {
    pub(crate) fn enter(lease: &Arc<LeaseShared>) -> Result<Self, LeaseError> {
        lease.raise_in_flight();
        let guard = InFlight(Arc::clone(lease));
        match lease.refusal() {
            None => Ok(guard),
            Some(err) => Err(err),
        }
    }

    pub(crate) fn lease(&self) -> &LeaseShared {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.lower_in_flight();
    }
}

/// How many jobs one dispatched job's value stands for, by how each ended: one for a closure
/// or a process job, one per item for a grinder part sent to a child in one frame. A job that
/// never ran (`None` from [`JobEnd::of`]) is counted nowhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobTally {
    by_end: [u64; JobEnd::ALL.len()],
}

impl JobTally {
    /// Adds the jobs this tally stands for to the engine's counters (and metrics: `took` is
    /// the time the dispatched job ran, shared evenly by its jobs).
    pub(crate) fn add_to(self, counters: &crate::stats::CounterCells, took: Option<Duration>) {
        use std::sync::atomic::Ordering::Relaxed;
        counters
            .jobs_completed
            .fetch_add(self.of(JobEnd::Ok), Relaxed);
        counters
            .jobs_panicked
            .fetch_add(self.of(JobEnd::Panicked), Relaxed);
        counters
            .jobs_failed
            .fetch_add(self.of(JobEnd::Invalid), Relaxed);
        counters.jobs_lost.fetch_add(self.lost(), Relaxed);
        if let Some(took) = took {
            let each = took / u32::try_from(self.total().max(1)).unwrap_or(u32::MAX);
            for end in JobEnd::ALL {
                counters.metrics.jobs(end, self.of(end), each);
            }
        }
    }

    /// A tally of one job.
    pub fn one(end: Option<JobEnd>) -> Self {
        let mut tally = Self::default();
        tally.add(end);
        tally
    }

    /// Adds one job.
    pub fn add(&mut self, end: Option<JobEnd>) {
        if let Some(end) = end {
            self.by_end[end as usize] += 1;
        }
    }

    /// Jobs that ended `end`.
    pub fn of(&self, end: JobEnd) -> u64 {
        self.by_end[end as usize]
    }

    /// Jobs lost with their worker (`jobs_lost`): crashed, killed at expiry or at stop.
    pub fn lost(&self) -> u64 {
        self.of(JobEnd::WorkerLost) + self.of(JobEnd::Expired) + self.of(JobEnd::Stopped)
    }

    /// Every job counted.
    pub fn total(&self) -> u64 {
        self.by_end.iter().sum()
    }
}

/// Counts every value as one completed job (closures).
pub(crate) fn completed<R>(_: &R) -> JobTally {
    JobTally::one(Some(JobEnd::Ok))
}

/// The span a job runs in on its worker: `job` (target `leasepool::job`, level DEBUG, fields
/// `manager`, `lease_id`, `pool`), made where the job is submitted, so its parent is the span
/// current there — the request's, say. If DEBUG is off for that target, the job runs in the
/// submitter's span itself: its events still join the submitter's trace.
pub(crate) fn job_span(manager: &str, lease: Option<(LeaseId, PoolId)>) -> tracing::Span {
    let span = tracing::debug_span!(
        target: "leasepool::job",
        "job",
        manager,
        lease_id = tracing::field::Empty,
        pool = tracing::field::Empty,
    );
    if span.is_disabled() {
        return tracing::Span::current();
    }
    if let Some((lease, pool)) = lease {
        span.record("lease_id", tracing::field::display(lease));
        span.record("pool", tracing::field::display(pool));
    }
    span
}

pub(crate) struct TypedJob<F, R> {
    /// Entered around the job on its worker (see [`job_span`]).
    span: tracing::Span,
    f: Option<F>,
    reply: Option<oneshot::Sender<Result<R, LeaseError>>>,
    in_flight: Option<InFlight>,
    if_abandoned: IfAbandoned,
    count: fn(&R) -> JobTally,
}

impl<F, R> TypedJob<F, R> {
    pub(crate) fn new(
        f: F,
        reply: oneshot::Sender<Result<R, LeaseError>>,
        in_flight: InFlight,
        if_abandoned: IfAbandoned,
        count: fn(&R) -> JobTally,
        span: tracing::Span,
    ) -> Self {
        Self {
            span,
            f: Some(f),
            reply: Some(reply),
            in_flight: Some(in_flight),
            if_abandoned,
            count,
        }
    }
}

impl<S, F, R> ErasedJob<S> for TypedJob<F, R>
where
    F: FnOnce(&mut S) -> R + Send,
    R: Send,
{
    fn run(
        mut self: Box<Self>,
        state: &mut S,
        counters: &CounterCells,
        manager: &str,
    ) -> JobOutcome {
        let revoked = self
            .in_flight
            .as_ref()
            .is_some_and(|guard| guard.lease().is_revoked());
        if revoked {
            // Dropping `self` answers NeverRan: the job was queued when its lease was revoked.
            drop_quietly(self.f.take(), manager);
            return JobOutcome::Ran;
        }
        let abandoned = self.reply.as_ref().is_some_and(|tx| tx.is_closed());
        if self.if_abandoned == IfAbandoned::Skip && abandoned {
            self.reply = None;
            drop_quietly(self.f.take(), manager);
            return JobOutcome::Ran;
        }
        let Some(f) = self.f.take() else {
            return JobOutcome::Ran;
        };
        let scope = self.in_flight.as_ref().map(|g| JobScope::enter(&g.0));
        // The clock is read only for a recorder.
        let started = counters.metrics.enabled().then(Instant::now);
        let span = std::mem::replace(&mut self.span, tracing::Span::none());
        let ran = span.in_scope(|| catch_unwind(AssertUnwindSafe(move || f(state))));
        let took = started.map(|t| t.elapsed());
        let (result, outcome) = match ran {
            Ok(value) => {
                (self.count)(&value).add_to(counters, took);
                (Ok(value), JobOutcome::Ran)
            }
            Err(payload) => {
                JobTally::one(Some(JobEnd::Panicked)).add_to(counters, took);
                let msg = panic_message(payload.as_ref());
                drop_quietly(payload, manager);
                (Err(LeaseError::Panicked(msg)), JobOutcome::Panicked)
            }
        };
        drop(scope);
        // Lower in-flight before answering: a caller that has its answer and releases at once
        // finds the lease idle, so its pool returns immediately instead of draining.
        drop(self.in_flight.take());
        if let Some(tx) = self.reply.take() {
            if let Err(unsent) = tx.send(result) {
                // The caller left: the result is dropped here, on the worker.
                drop_quietly(unsent, manager);
            }
        }
        outcome
    }
}

impl<F, R> Drop for TypedJob<F, R> {
    fn drop(&mut self) {
        // An unrun job can be dropped anywhere (a worker, the host, a caller whose send failed).
        if let Some(f) = self.f.take() {
            let manager = self
                .in_flight
                .as_ref()
                .map_or("", |g| &*g.lease().facts.manager);
            drop_quietly(f, manager);
        }
        // Out of flight before answering (as a job that ran is): a caller that has its answer
        // and releases at once finds the lease idle, not draining.
        drop(self.in_flight.take());
        if let Some(tx) = self.reply.take() {
            // Dropped before it ran: nothing of it happened.
            let _ = tx.send(Err(LeaseError::NeverRan));
        }
    }
}

/// Drops `value`, swallowing a panic from its destructor (and from the destructor of that
/// panic's payload, which is leaked rather than dropped a third time); logs a contained panic
/// with the manager's name.
pub(crate) fn drop_quietly<T>(value: T, manager: &str) {
    if let Some(panic) = drop_contained(value) {
        tracing::error!(
            manager,
            panic = %panic,
            "a destructor panicked on a worker thread; the panic was contained"
        );
    }
}

/// Drops a user value where a panic must not escape (a worker thread, the host thread, a worker
/// child): a panic from its destructor is caught and its message returned; that panic's own
/// payload is then dropped the same way, and leaked if its destructor panics too. The one place
/// the engine and the process backend drop what a user handed them.
pub fn drop_contained<T>(value: T) -> Option<String> {
    let payload = catch_unwind(AssertUnwindSafe(move || drop(value))).err()?;
    let message = panic_message(payload.as_ref());
    drop_payload(payload);
    Some(message)
}

/// Drops a caught panic's payload, leaking it if its destructor panics as well.
pub fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// The text of a caught panic: its `&str` or `String` payload, or a placeholder.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The result of one job: a future that resolves exactly once, with the job's value or the
/// reason it has none. Dropping it does not cancel a job sent with `submit`.
#[must_use = "a JobHandle does nothing unless awaited (the job itself runs regardless)"]
pub struct JobHandle<R> {
    answer: Answer<R>,
}

enum Answer<R> {
    /// The job's own reply.
    Direct(oneshot::Receiver<Result<R, LeaseError>>),
    /// A job whose value is itself a `Result` (see [`JobHandle::flatten`]).
    Flattened(Pin<Box<dyn Future<Output = Result<R, LeaseError>> + Send + Sync>>),
}

impl<R> std::fmt::Debug for JobHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").finish_non_exhaustive()
    }
}

impl<R: Send + 'static> JobHandle<Result<R, LeaseError>> {
    /// A handle to a job that answers a `Result` of its own (a process job, whose child may fail
    /// it): resolves to the job's error or its value.
    pub fn flatten(self) -> JobHandle<R> {
        JobHandle {
            answer: Answer::Flattened(Box::pin(async move { self.await? })),
        }
    }
}

/// The sending side of a [`JobHandle`], for work whose job is created later.
#[derive(Debug)]
pub struct JobReply<R>(pub(crate) oneshot::Sender<Result<R, LeaseError>>);

impl<R> JobReply<R> {
    /// Answers the job's handle with an error instead of a value.
    pub fn fail(self, error: LeaseError) {
        let _ = self.0.send(Err(error));
    }

    /// Answers the job's handle (a value nobody waits for any more is returned).
    pub fn answer(self, answer: Result<R, LeaseError>) -> Result<(), Result<R, LeaseError>> {
        self.0.send(answer)
    }

    /// Whether the handle was dropped (nobody waits for the answer).
    pub fn is_closed(&self) -> bool {
        self.0.is_closed()
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
        (
            JobReply(reply),
            JobHandle {
                answer: Answer::Direct(answer),
            },
        )
    }
}

impl<R> Future for JobHandle<R> {
    type Output = Result<R, LeaseError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.answer {
            Answer::Direct(answer) => Pin::new(answer)
                .poll(cx)
                .map(|answer| answer.unwrap_or(Err(LeaseError::WorkerLost))),
            Answer::Flattened(answer) => answer.as_mut().poll(cx),
        }
    }
}
