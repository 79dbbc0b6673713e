//! `Worker<S>`: the sync actor on each pool thread.

use std::sync::Arc;

use actix::{Actor, Recipient, SyncContext};
use crossbeam_channel::Receiver;

use crate::config::StateFactory;
use crate::job::JobOutcome;
use crate::messages::{Job, JobKind, WorkerExited};
use crate::stats::{CounterCells, PoolId};

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
/// rebuilds its state from the factory on the same thread. If the factory itself panics, the
/// thread dies; its [`ExitNotice`] tells the pool, which replaces it.
pub struct Worker<S> {
    state: S,
    queue: Receiver<Job<S>>,
    factory: StateFactory<S>,
    pool: PoolId,
    counters: Arc<CounterCells>,
    _exit: ExitNotice,
}

/// Tells the pool when its worker thread dies: dropped while the thread unwinds (the state
/// factory panicked, or a `kill_worker` fault), it sends `WorkerExited`. It is created before
/// the factory runs, so a factory that fails on the very first call is noticed too.
pub(crate) struct ExitNotice {
    pub(crate) pool: Recipient<WorkerExited>,
    pub(crate) arbiter: u64,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.pool.do_send(WorkerExited {
                arbiter: self.arbiter,
            });
        }
    }
}

// `S` is only ever touched on the worker thread and is never pinned.
impl<S> Unpin for Worker<S> {}

impl<S> Worker<S> {
    pub(crate) fn new(
        exit: ExitNotice,
        queue: Receiver<Job<S>>,
        factory: StateFactory<S>,
        pool: PoolId,
        counters: Arc<CounterCells>,
    ) -> Self {
        Self {
            state: build_state(&factory, pool),
            queue,
            factory,
            pool,
            counters,
            _exit: exit,
        }
    }

    /// Runs jobs until the pool's queue is closed and drained.
    fn serve(&mut self) {
        while let Ok(Job(job)) = self.queue.recv() {
            let job = match job {
                JobKind::Run(job) => job,
                JobKind::KillWorker => panic!("worker of {} killed by fault injection", self.pool),
            };
            if job.run(&mut self.state, &self.counters) == JobOutcome::Panicked {
                CounterCells::bump(&self.counters.workers_restarted);
                tracing::warn!(pool = %self.pool, "job panicked; rebuilding the worker's state");
                self.state = build_state(&self.factory, self.pool);
            }
        }
    }
}

/// Runs the state factory. On `Err` the thread ends the way a panicking factory ends it —
/// unwinding, so the exit notice reports it — but through `resume_unwind`, which skips the
/// panic hook: an expected failure is logged here once, not printed as a crash.
fn build_state<S>(factory: &StateFactory<S>, pool: PoolId) -> S {
    match factory() {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(pool = %pool, error = %error, "worker state factory failed; the worker will be replaced");
            std::panic::resume_unwind(Box::new(error))
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
