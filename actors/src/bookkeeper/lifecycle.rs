//! What the supervisor tells the books: runs that begin and end, leases revoked or swept,
//! pools spawned, ready, unhealthy or dead, new sizing targets — and the fault injection tests
//! use.

use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::{Arc, Weak};

use super::{Bookkeeper, PoolHandle, Run};
use crate::lease_state::{LeaseEnds, LeaseShared, Revocation};
use crate::stats::{LeaseId, PoolId};

impl<S: 'static> Bookkeeper<S> {
    // ---- runs -----------------------------------------------------------------------------

    pub(crate) fn current_run(&self) -> Option<Run> {
        self.lock().run.clone()
    }

    /// `stop` of run `generation` waited `shutdown_timeout` and jobs still run: tells them to
    /// stop now (see `current::job_stop_reason`).
    pub(crate) fn mark_overdue(&self, generation: u64) {
        self.overdue_run.fetch_max(generation, SeqCst);
    }

    /// A worker thread of run `generation` records the run it serves (for
    /// `current::job_stop_reason` outside a job).
    pub(crate) fn enter_run_on_this_thread(&self, generation: u64) {
        let ends: Weak<dyn LeaseEnds> = self.me.clone();
        crate::current::enter_run(ends, generation);
    }

    pub(crate) fn current_generation(&self) -> Option<u64> {
        self.lock().books.run()
    }

    /// Records a freshly started host; pools come from the first sizing decision.
    pub(crate) fn begin_run(&self, run: Run) {
        let mut ledger = self.lock();
        ledger.books.begin_run(run.generation);
        ledger.sweep_pending = None;
        self.live_run.store(run.generation, SeqCst);
        ledger.run = Some(run);
    }

    /// Closes the books of the current run — or only of run `generation`, if given (its
    /// supervisor died) — answering waiters and revoking leases with `Stopped`. Returns the run
    /// closed, if any.
    pub(crate) fn end_run(&self, generation: Option<u64>) -> Option<Run> {
        let (run, deferred) = {
            let mut ledger = self.lock();
            if generation.is_some() && ledger.books.run() != generation {
                return None;
            }
            let mut fx = ledger.take_fx();
            if !ledger.books.end_run(&mut fx) {
                return None;
            }
            let run = ledger.run.take();
            self.live_run.store(0, SeqCst);
            let mut deferred = self.apply(&mut ledger, fx);
            // The supervisor is stopping everything itself: nothing to ask of it.
            deferred.tasks.clear();
            (run, deferred)
        };
        deferred.run(self);
        self.settled.notify_waiters();
        self.flush_metrics();
        run
    }

    // ---- leases -----------------------------------------------------------------------------

    /// Revokes a live lease and retires its pool. False if it had already ended.
    pub(crate) fn revoke(&self, lease: LeaseId, why: Revocation) -> bool {
        self.transition(|books, fx| books.revoke(lease, why, fx))
    }

    /// The shared state of the leases whose actors should start now.
    pub(crate) fn take_unswept(&self) -> Vec<Arc<LeaseShared>> {
        let mut ledger = self.lock();
        ledger.sweep_pending = None;
        let swept = ledger.books.take_unswept();
        swept
            .into_iter()
            .filter_map(|lease| ledger.books.payload(lease).cloned())
            .collect()
    }

    // ---- pools ------------------------------------------------------------------------------

    /// A pool the supervisor spawned: it starts. False if its run ended (stop it).
    pub(crate) fn pool_spawned(&self, pool: PoolId, generation: u64, queue: PoolHandle<S>) -> bool {
        self.lock().books.pool_spawned(pool, generation, queue)
    }

    /// A worker of the pool built its state.
    pub(crate) fn pool_ready(&self, pool: PoolId) {
        self.transition(|books, fx| books.pool_ready(pool, fx));
        self.settled.notify_waiters();
    }

    /// The pool has no live worker; `failure` says why.
    pub(crate) fn pool_unhealthy(&self, pool: PoolId, failure: String) {
        self.transition(|books, fx| books.pool_unhealthy(pool, failure, fx));
        self.settled.notify_waiters();
    }

    /// The pool's actor died.
    pub(crate) fn pool_died(&self, pool: PoolId) {
        self.transition(|books, fx| books.pool_died(pool, fx));
        self.settled.notify_waiters();
    }

    /// A new sizing target.
    pub(crate) fn set_desired(&self, desired: usize) {
        self.transition(|books, fx| books.set_desired(desired, fx));
    }

    // ---- fault injection ----------------------------------------------------------------------

    /// The next `n` worker-thread spawns fail.
    pub(crate) fn inject_spawn_failures(&self, n: usize) {
        self.injected_spawn_failures.store(n, Relaxed);
    }

    /// Whether this spawn is to fail (consumes one injected failure).
    pub(crate) fn take_injected_spawn_failure(&self) -> bool {
        self.injected_spawn_failures
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }
}
