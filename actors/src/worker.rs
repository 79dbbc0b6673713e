//! `Worker<S>`: the sync actor on each pool thread.

use std::sync::Arc;

use actix::{Actor, Handler, SyncContext};

use crate::job::JobOutcome;
use crate::messages::Job;
use crate::stats::{CounterCells, PoolId};

/// One worker of a pool: owns the thread's state `S` and runs jobs on it.
///
/// actix does not catch panics in sync handlers — a panicking handler kills its thread for
/// good — so every job runs inside `catch_unwind` (see `job.rs`), and after a panic the worker
/// calls `ctx.stop()`, which makes `SyncContext` build a fresh worker (fresh `S`) on the same
/// thread.
pub struct Worker<S> {
    state: S,
    pool: PoolId,
    counters: Arc<CounterCells>,
}

// `S` is only ever touched on the worker thread and is never pinned.
impl<S> Unpin for Worker<S> {}

impl<S> Worker<S> {
    pub(crate) fn new(state: S, pool: PoolId, counters: Arc<CounterCells>) -> Self {
        Self {
            state,
            pool,
            counters,
        }
    }
}

impl<S: 'static> Actor for Worker<S> {
    type Context = SyncContext<Self>;
}

impl<S: 'static> Handler<Job<S>> for Worker<S> {
    type Result = ();

    fn handle(&mut self, job: Job<S>, ctx: &mut SyncContext<Self>) {
        if job.0.run(&mut self.state, &self.counters) == JobOutcome::Panicked {
            CounterCells::bump(&self.counters.workers_restarted);
            tracing::warn!(pool = %self.pool, "job panicked; rebuilding the worker with fresh state");
            actix::ActorContext::stop(ctx);
        }
    }
}
