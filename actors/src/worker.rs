//! `Worker<S>`: the sync actor on each pool thread.

use std::sync::Arc;

use actix::{Actor, SyncContext};
use crossbeam_channel::Receiver;

use crate::config::StateFactory;
use crate::job::JobOutcome;
use crate::messages::Job;
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
/// rebuilds its state from the factory on the same thread.
pub struct Worker<S> {
    state: S,
    queue: Receiver<Job<S>>,
    factory: StateFactory<S>,
    pool: PoolId,
    counters: Arc<CounterCells>,
}

// `S` is only ever touched on the worker thread and is never pinned.
impl<S> Unpin for Worker<S> {}

impl<S> Worker<S> {
    pub(crate) fn new(
        queue: Receiver<Job<S>>,
        factory: StateFactory<S>,
        pool: PoolId,
        counters: Arc<CounterCells>,
    ) -> Self {
        Self {
            state: factory(),
            queue,
            factory,
            pool,
            counters,
        }
    }

    /// Runs jobs until the pool's queue is closed and drained.
    fn serve(&mut self) {
        while let Ok(job) = self.queue.recv() {
            if job.0.run(&mut self.state, &self.counters) == JobOutcome::Panicked {
                CounterCells::bump(&self.counters.workers_restarted);
                tracing::warn!(pool = %self.pool, "job panicked; rebuilding the worker's state");
                self.state = (self.factory)();
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
