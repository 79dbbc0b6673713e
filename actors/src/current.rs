//! What a running job may ask about itself, from inside its closure on the worker thread: should
//! it stop now (its lease was revoked, or `stop` ran past `shutdown_timeout`), and may it ask
//! its worker to rebuild its state once it has answered.
//!
//! A thread cannot be interrupted, so these are for work that can look: a loop that checks
//! [`job_stop_reason`] now and then, or the process backend, whose worker thread waits on a
//! child process and kills it when told to stop. Both are plain thread-locals set by the worker
//! around each job: nothing here touches a lock or sends a message.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Weak};

use crate::error::LeaseError;
use crate::lease_state::{LeaseEnds, LeaseShared};

thread_local! {
    static CURRENT: RefCell<Option<Arc<LeaseShared>>> = const { RefCell::new(None) };
    static REBUILD: Cell<Option<&'static str>> = const { Cell::new(None) };
    /// The manager run this worker thread serves (set as the thread starts).
    static RUN: RefCell<Option<(Weak<dyn LeaseEnds>, u64)>> = const { RefCell::new(None) };
}

/// Records, on a new worker thread, the manager run it serves.
pub(crate) fn enter_run(ends: Weak<dyn LeaseEnds>, generation: u64) {
    let _ = RUN.try_with(|r| *r.borrow_mut() = Some((ends, generation)));
}

/// Marks the job running on this thread for as long as it lives.
pub(crate) struct JobScope(());

impl JobScope {
    pub(crate) fn enter(lease: &Arc<LeaseShared>) -> Self {
        CURRENT.with(|c| *c.borrow_mut() = Some(Arc::clone(lease)));
        JobScope(())
    }
}

impl Drop for JobScope {
    fn drop(&mut self) {
        // `try_with`: a job may end while the thread's locals are being torn down.
        let _ = CURRENT.try_with(|c| c.borrow_mut().take());
    }
}

/// Why the job running on this thread should stop now, if it should: `Expired` when its lease
/// passed its hard expiry and was revoked, `WorkerLost` when its lease was revoked because its
/// pool or lease actor died, `Stopped` when the manager's `stop` has waited `shutdown_timeout`
/// for it. `None` while the job may go on.
///
/// A lease whose manager merely *began* stopping is not a reason: `stop` lets running jobs
/// finish within `shutdown_timeout`. Outside a job — a worker building its state, say — the
/// reason is `Stopped` once the manager run the worker serves has ended: nobody will send it a
/// job again.
pub fn job_stop_reason() -> Option<LeaseError> {
    let in_job = CURRENT
        .try_with(|c| c.borrow().as_ref().map(|lease| lease.stop_reason()))
        .ok()
        .flatten();
    if let Some(reason) = in_job {
        return reason;
    }
    RUN.try_with(|r| {
        let run = r.borrow();
        let (ends, generation) = run.as_ref()?;
        let ended = ends.upgrade().is_none_or(|ends| ends.run_over(*generation));
        ended.then_some(LeaseError::Stopped)
    })
    .ok()
    .flatten()
}

/// Asks the worker running this job to rebuild its state (call the worker state factory again)
/// after the job has answered, as it does after a panic — but without counting a panic. `why`
/// goes to the debug log. Outside a worker thread it does nothing.
pub fn request_state_rebuild(why: &'static str) {
    let _ = REBUILD.try_with(|r| r.set(Some(why)));
}

/// Takes this thread's pending rebuild request.
pub(crate) fn take_rebuild_request() -> Option<&'static str> {
    REBUILD.try_with(Cell::take).ok().flatten()
}
