//! The unit of work that travels from a lease handle to a worker thread.
//!
//! A job owns its reply sender. Whatever happens to it — it runs, it panics, it is skipped
//! because its lease was revoked, its envelope is dropped because the pool died — it answers
//! exactly once: the `Drop` impl answers `WorkerLost` if nothing else did.
//!
//! Everything a user handed us is also *dropped* under `catch_unwind`: a closure skipped unrun,
//! a panic payload, a result nobody waits for any more. A destructor that panics outside
//! `catch_unwind` would kill the worker thread (actix does not catch it), so such a panic is
//! swallowed here and the job still answers what it would have answered.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::LeaseError;
use crate::lease::LeaseShared;
use crate::stats::CounterCells;

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

pub(crate) struct TypedJob<F, R> {
    f: Option<F>,
    reply: Option<oneshot::Sender<Result<R, LeaseError>>>,
    in_flight: Option<InFlight>,
    /// `run`/`send` futures: skip the job if the caller stopped waiting before it started.
    /// `submit`: run it anyway (the caller may drop the handle on purpose).
    skip_if_abandoned: bool,
}

impl<F, R> TypedJob<F, R> {
    pub(crate) fn new(
        f: F,
        reply: oneshot::Sender<Result<R, LeaseError>>,
        in_flight: InFlight,
        skip_if_abandoned: bool,
    ) -> Self {
        Self {
            f: Some(f),
            reply: Some(reply),
            in_flight: Some(in_flight),
            skip_if_abandoned,
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
            // Dropping `self` answers WorkerLost: the job was queued when its lease was revoked.
            drop_quietly(self.f.take(), manager);
            return JobOutcome::Ran;
        }
        if self.skip_if_abandoned && self.reply.as_ref().is_some_and(|tx| tx.is_closed()) {
            self.reply = None;
            drop_quietly(self.f.take(), manager);
            return JobOutcome::Ran;
        }
        let Some(f) = self.f.take() else {
            return JobOutcome::Ran;
        };
        let (result, outcome) = match catch_unwind(AssertUnwindSafe(move || f(state))) {
            Ok(value) => {
                CounterCells::bump(&counters.jobs_completed);
                (Ok(value), JobOutcome::Ran)
            }
            Err(payload) => {
                CounterCells::bump(&counters.jobs_panicked);
                let msg = panic_message(payload.as_ref());
                drop_quietly(payload, manager);
                (Err(LeaseError::Panicked(msg)), JobOutcome::Panicked)
            }
        };
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
            let manager = self.in_flight.as_ref().map_or("", |g| &*g.lease().manager);
            drop_quietly(f, manager);
        }
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Err(LeaseError::WorkerLost));
        }
    }
}

/// Drops `value`, swallowing a panic from its destructor (and from the destructor of that
/// panic's payload, which is leaked rather than dropped a third time).
pub(crate) fn drop_quietly<T>(value: T, manager: &str) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        tracing::error!(manager,
            panic = %panic_message(payload.as_ref()),
            "a destructor panicked on a worker thread; the panic was contained"
        );
        if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(again);
        }
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
