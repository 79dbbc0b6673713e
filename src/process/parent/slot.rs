//! Each worker thread of a process-backend pool owns one child, kept in a thread-local slot.
//!
//! Starting the child and its handshake *are* the worker's state factory: the builder wraps the
//! user's factory with [`wrap_factory`], so the engine's worker supervision (backoff, unhealthy
//! pools, `NoHealthyPool` carrying the error) applies to children unchanged. A job that finds
//! its child dead, broken or killed asks the worker to rebuild its state — that is, to start a
//! new child — after it has answered. The worker's exit hook ([`end_child`]) ends the child
//! before the thread goes.

use std::cell::RefCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use leasepool_actors::StateFactory;

use super::conn::{Child, ChildSpec, Exchange};
use crate::LeaseError;

thread_local! {
    static SLOT: RefCell<Option<Child>> = const { RefCell::new(None) };
    static MAX_MESSAGE: std::cell::Cell<usize> = const { std::cell::Cell::new(super::super::protocol::DEFAULT_MAX_MESSAGE) };
    static IS_PROCESS_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is a process-backend worker.
pub(crate) fn has_child_slot() -> bool {
    IS_PROCESS_WORKER.with(std::cell::Cell::get)
}

/// `max_message_bytes` of this worker's manager.
pub(crate) fn max_message() -> usize {
    MAX_MESSAGE.with(std::cell::Cell::get)
}

/// Ends this thread's child, if it has one.
pub(crate) fn end_child() {
    let child = SLOT
        .try_with(|slot| slot.borrow_mut().take())
        .ok()
        .flatten();
    if let Some(child) = child {
        child.end();
    }
}

/// The user's factory, preceded by starting this worker's child.
pub(crate) fn wrap_factory<S: 'static>(
    user: StateFactory<S>,
    spec: Arc<ChildSpec>,
) -> StateFactory<S> {
    Arc::new(move || {
        IS_PROCESS_WORKER.with(|w| w.set(true));
        MAX_MESSAGE.with(|m| m.set(spec.max_message));
        if super::super::child::serve::in_child() {
            return Err(
                "a process-backend worker child cannot start worker processes of its own"
                    .to_owned(),
            );
        }
        // A rebuild replaces the child: the old one ends first.
        end_child();
        // A worker whose manager run has ended will get no job: no child for it.
        if let Some(why) = leasepool_actors::plumbing::job_stop_reason() {
            return Err(format!("no worker child started: {why}"));
        }
        let child = Child::spawn(&spec)?;
        SLOT.with(|slot| *slot.borrow_mut() = Some(child));
        match catch_unwind(AssertUnwindSafe(|| user())) {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(e)) => {
                end_child();
                Err(e)
            }
            Err(payload) => {
                end_child();
                resume_unwind(payload)
            }
        }
    })
}

/// How many jobs the next call of this thread may send to its child before the child is
/// replaced (`None`: no limit, or no child).
pub(crate) fn jobs_left() -> Option<usize> {
    SLOT.with(|slot| slot.borrow().as_ref().and_then(Child::jobs_left))
}

/// Runs job `name` (or `count` of them) in this thread's child: `encode` appends the input(s)
/// to the frame it is given, `decode` reads the output(s) from the reply. The one place that
/// replaces a child within a job, and that tells the engine the worker needs a new one: a
/// child found dead, or that died before it took the job (so it cannot have started), is
/// replaced and the job sent again — once; then it is `NeverRan`. A spent child
/// (`max_jobs_per_child`, within one engine job: a grinder part of several frames) is replaced
/// first.
pub(crate) fn call(
    name: &str,
    count: Option<u32>,
    encode: &mut dyn FnMut(Vec<u8>, usize) -> postcard::Result<Vec<u8>>,
    decode: &mut dyn FnMut(&[u8]) -> Result<usize, &'static str>,
) -> Result<(), LeaseError> {
    SLOT.with(|slot| {
        let mut slot = slot.borrow_mut();
        let Some(child) = slot.as_mut() else {
            leasepool_actors::plumbing::request_state_rebuild("its worker child had ended");
            // The job has not reached any child.
            return Err(LeaseError::NeverRan);
        };
        for _ in 0..2 {
            if child.is_dead() {
                child.reap_dead();
                if !replace(child) {
                    leasepool_actors::plumbing::request_state_rebuild("its worker child had ended");
                    // The job has not reached any child.
                    return Err(LeaseError::NeverRan);
                }
            } else if child.is_spent() && !replace(child) {
                return Err(LeaseError::NeverRan);
            }
            match child.exchange(name, count, encode, decode) {
                Exchange::Answered { answer, rebuild } => {
                    if let Some(why) = rebuild {
                        leasepool_actors::plumbing::request_state_rebuild(why);
                    }
                    return answer;
                }
                Exchange::Undelivered => {}
            }
        }
        leasepool_actors::plumbing::request_state_rebuild(
            "its worker children died before taking a job",
        );
        Err(LeaseError::NeverRan)
    })
}

/// Puts a new child in `child`'s place (the old one ends); whether one started.
fn replace(child: &mut Child) -> bool {
    match Child::spawn(child.spec()) {
        Ok(fresh) => {
            std::mem::replace(child, fresh).end();
            true
        }
        Err(why) => {
            let l = child.labels();
            tracing::warn!(target: "leasepool::process", manager = %l.manager, pool = %l.pool, worker = %l.worker, error = %why, "cannot replace a worker child");
            false
        }
    }
}
