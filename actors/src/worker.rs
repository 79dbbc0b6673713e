//! `Worker<S>`: the sync actor on each pool thread.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::{Actor, Message, Recipient, SyncContext};
use crossbeam_channel::Receiver;

use crate::config::{StateFactory, WorkerHook};
use crate::current::take_rebuild_request;
use crate::job::{drop_quietly, panic_message, Job, JobOutcome};
use crate::metrics::Replacement;
use crate::stats::{CounterCells, PoolId};

/// A worker thread of a pool ended before the pool retired it. Sent by the worker's exit
/// notice as its thread unwinds; handled by the pool actor, which replaces it with backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerExited {
    /// Which of the pool's thread groups the thread belonged to.
    pub(crate) group: u64,
    /// Why it ended.
    pub(crate) cause: WorkerExit,
}

/// Why a worker thread ended early.
#[derive(Debug, Clone)]
pub(crate) enum WorkerExit {
    /// Its state factory returned this error or panicked (the text says which).
    StateFailed(String),
    /// It unwound for another reason (a `kill_worker` fault, or a bug).
    Crashed,
}

/// A worker built its state and is serving. Sent from the worker thread; handled by the pool
/// actor, which declares the pool serving only on this proof.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct WorkerReady;

/// One worker of a pool: owns the thread's state `S` and serves the pool's job queue.
///
/// Jobs do not travel through the `SyncArbiter`'s actix mailbox: that path forwards every
/// message through a task on the host System before it reaches a worker — a third thread
/// wake-up per job, which measured as about half of a job's round trip (see
/// `docs/performance.md`). Instead each pool has a crossbeam queue that its workers serve
/// directly from `started()`; the `SyncArbiter` still owns the threads, names them, and stops
/// them when its last address is dropped.
///
/// actix does not catch panics in sync actors — a panicking job would kill its thread for good
/// — so every job runs inside `catch_unwind` (see `job.rs`), and after a panic the worker
/// rebuilds its state from the factory on the same thread. If the factory fails (returns `Err`
/// or panics), the thread ends; its exit notice tells the pool why, and the pool replaces it.
pub(crate) struct Worker<S> {
    /// The manager's name (`name_prefix`), for log fields.
    manager: Arc<str>,
    state: S,
    queue: Receiver<Job<S>>,
    factory: StateFactory<S>,
    pool: PoolId,
    counters: Arc<CounterCells>,
    exit: ExitNotice,
    on_exit: Option<WorkerHook>,
}

/// Tells the pool when its worker thread ends before its pool retires it: either explicitly
/// ([`ExitNotice::report`], when the state factory failed) or, if the thread unwinds for any
/// other reason (a `kill_worker` fault, a bug), from `Drop`. It exists before the factory first
/// runs, so a factory that fails on the very first call is reported too.
pub(crate) struct ExitNotice {
    pub(crate) pool: Recipient<WorkerExited>,
    pub(crate) group: u64,
    pub(crate) reported: bool,
}

impl ExitNotice {
    /// Reports the thread's end with its cause; the thread then unwinds.
    fn report(&mut self, cause: WorkerExit) {
        self.reported = true;
        self.pool.do_send(WorkerExited {
            group: self.group,
            cause,
        });
    }
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.reported {
            self.pool.do_send(WorkerExited {
                group: self.group,
                cause: WorkerExit::Crashed,
            });
        }
    }
}

// `S` is only ever touched on the worker thread and is never pinned.
impl<S> Unpin for Worker<S> {}

impl<S> Worker<S> {
    pub(crate) fn new(
        manager: Arc<str>,
        mut exit: ExitNotice,
        queue: Receiver<Job<S>>,
        factory: StateFactory<S>,
        pool: PoolId,
        counters: Arc<CounterCells>,
        on_exit: Option<WorkerHook>,
    ) -> Self {
        let state = build_state_or_exit(&factory, pool, &manager, &mut exit);
        Self {
            manager,
            state,
            queue,
            factory,
            pool,
            counters,
            exit,
            on_exit,
        }
    }

    /// Runs jobs until the pool's queue is closed and drained.
    fn serve(&mut self) {
        while let Ok(job) = self.queue.recv() {
            let job = match job {
                Job::Run(job) => job,
                Job::KillWorker => panic!("worker of {} killed by fault injection", self.pool),
            };
            // A job contains its own panics; this net catches anything that still escapes, so
            // that nothing a job does can end the thread.
            let outcome = match catch_unwind(AssertUnwindSafe(|| {
                job.run(&mut self.state, &self.counters, &self.manager)
            })) {
                Ok(outcome) => outcome,
                Err(payload) => {
                    tracing::error!(manager = %self.manager, pool = %self.pool, panic = %panic_message(payload.as_ref()), "a panic escaped a job's own handling; rebuilding the worker's state");
                    drop_quietly(payload, &self.manager);
                    JobOutcome::Panicked
                }
            };
            let asked = take_rebuild_request();
            if outcome == JobOutcome::Panicked {
                tracing::warn!(manager = %self.manager, pool = %self.pool, "job panicked; rebuilding the worker's state");
                CounterCells::bump(&self.counters.worker_states_rebuilt);
                self.counters.metrics.replaced(Replacement::StateRebuilt);
            } else if let Some(why) = asked {
                // (A worker child replaced: counted by the process backend's own counters.)
                tracing::debug!(manager = %self.manager, pool = %self.pool, why, "rebuilding the worker's state, as its job asked");
            } else {
                continue;
            }
            let fresh =
                build_state_or_exit(&self.factory, self.pool, &self.manager, &mut self.exit);
            drop_quietly(std::mem::replace(&mut self.state, fresh), &self.manager);
        }
    }
}

/// Runs the state factory. If it fails — returns `Err` or panics — the worker reports why and
/// its thread ends: by unwinding through `resume_unwind`, which skips the panic hook (an
/// expected failure is logged here once, not printed again as a crash).
fn build_state_or_exit<S>(
    factory: &StateFactory<S>,
    pool: PoolId,
    manager: &str,
    exit: &mut ExitNotice,
) -> S {
    let error = match catch_unwind(AssertUnwindSafe(|| factory())) {
        Ok(Ok(state)) => return state,
        Ok(Err(error)) => {
            if crate::current::job_stop_reason().is_some() {
                // Its manager run ended while it built its state: nothing to replace.
                tracing::debug!(manager, pool = %pool, error = %error, "worker state factory gave up: the manager stopped");
            } else {
                tracing::warn!(manager, pool = %pool, error = %error, "worker state factory returned an error; the worker will be replaced");
            }
            format!("worker state factory failed: {error}")
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            drop_quietly(payload, manager);
            tracing::warn!(manager, pool = %pool, panic = %message, "worker state factory panicked; the worker will be replaced");
            format!("worker state factory panicked: {message}")
        }
    };
    exit.report(WorkerExit::StateFailed(error.clone()));
    std::panic::resume_unwind(Box::new(error))
}

impl<S> Drop for Worker<S> {
    fn drop(&mut self) {
        if let Some(hook) = self.on_exit.take() {
            // May run while the thread unwinds: a panic escaping here would abort the process.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| hook())) {
                drop_quietly(payload, &self.manager);
            }
        }
    }
}

impl<S: 'static> Actor for Worker<S> {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut SyncContext<Self>) {
        // Returns once the pool retires its queue; the thread then waits on the actix mailbox
        // until the SyncArbiter's address is dropped too, and exits.
        self.serve();
    }
}
