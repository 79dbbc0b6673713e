//! `ManagerActor`: the supervisor. Creates and retires pools and lease actors as the books
//! decide, watches both, keeps the sizing target, and begins the shutdown.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message};
use tokio::sync::oneshot;

use crate::bookkeeper::{Bookkeeper, HostTask, HostWork};
use crate::job::{drop_quietly, panic_message};
use crate::lease::{CrashLease, LeaseActor, LeaseActorDied, StopLease};
use crate::metrics::{Replacement, FLUSH_EVERY};
use crate::pool::{CrashPool, KillWorkers, PoolActor, PoolDied, PoolSpec, StopPool};
use crate::stats::{CounterCells, LeaseId, PoolId};

/// Stop every pool and lease actor and end the supervisor; the host's watchdog then waits up to
/// `shutdown_timeout` for the worker threads and stops the System. Sent by `stop` after it has
/// closed the books.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Shutdown;

/// Re-evaluate `desired` now. Sent by `notify_scale_changed`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ScaleChanged;

/// Fault injection (feature `testing`), sent by `LeaseManager`'s testing methods; forwarded
/// to its target. Answers whether the target exists.
#[derive(Message)]
#[rtype(result = "bool")]
pub enum InjectFault {
    /// Make a pool actor panic in a handler.
    CrashPool(PoolId),
    /// Kill `n` worker threads of a pool.
    KillWorkers(PoolId, usize),
    /// Make a lease actor panic in a handler.
    CrashLease(LeaseId),
}

/// Fault injection (feature `testing`): make the supervisor itself panic, outside the guard
/// that contains its other handlers' failures.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CrashSupervisor;

/// The supervisor of one manager run. Lives on the host System.
///
/// Its end — a `Shutdown`, or a crash — ends the run: dropping it drops `ended`, and the host's
/// watchdog (see `host.rs`) then waits for the worker threads and stops the System. If it ends
/// without a `Shutdown` (a panic in a handler), it fails closed first: the books are closed
/// (waiters and leases answered `Stopped`) and every pool and lease actor is told to stop.
pub(crate) struct ManagerActor<S: 'static> {
    spec: PoolSpec<S>,
    generation: u64,
    pools: HashMap<PoolId, Addr<PoolActor<S>>>,
    leases: HashMap<LeaseId, Addr<LeaseActor<S>>>,
    size_provider_failing: bool,
    /// Set by `Shutdown`: no pool is created any more, and the end is not a crash.
    stopping: bool,
    _ended: oneshot::Sender<()>,
}

impl<S: 'static> ManagerActor<S> {
    pub(crate) fn new(spec: PoolSpec<S>, generation: u64, ended: oneshot::Sender<()>) -> Self {
        Self {
            spec,
            generation,
            pools: HashMap::new(),
            leases: HashMap::new(),
            size_provider_failing: false,
            stopping: false,
            _ended: ended,
        }
    }

    fn keeper(&self) -> &Arc<Bookkeeper<S>> {
        &self.spec.keeper
    }

    /// desired = min(max_pools, max(min_pools, ceil(units / units_per_pool))); a panicking
    /// size provider counts as 0 and is logged once per streak of failures.
    pub(crate) fn desired(&mut self) -> usize {
        let settings = self.spec.settings();
        let units = match &settings.size_provider {
            None => 0,
            Some(provider) => match catch_unwind(AssertUnwindSafe(|| provider())) {
                Ok(units) => {
                    self.size_provider_failing = false;
                    units
                }
                Err(payload) => {
                    // A payload whose destructor panics must not take the host down either.
                    drop_quietly(payload, &self.spec.keeper.name);
                    if !self.size_provider_failing {
                        tracing::warn!(manager = %self.spec.keeper.name, "size_provider panicked; counting 0 units until it recovers");
                    }
                    self.size_provider_failing = true;
                    0
                }
            },
        };
        let settings = self.spec.settings();
        // `units_per_pool` is at least 1 (`EngineConfig::new` checks it).
        units
            .div_ceil(settings.units_per_pool.max(1))
            .max(settings.min_pools)
            .min(settings.max_pools)
    }

    /// Re-evaluates the target and acts on it (at start, on every tick, on `ScaleChanged`).
    pub(crate) fn reconcile(&mut self) {
        let desired = self.desired();
        self.keeper().set_desired(desired);
    }

    fn create_pool(&mut self, id: PoolId) {
        if self.stopping {
            // A request that raced with `stop`: a pool made now would never be stopped.
            return;
        }
        let (addr, queue) = PoolActor::spawn(&self.spec, id);
        if self.keeper().pool_spawned(id, self.generation, queue) {
            self.pools.insert(id, addr);
        } else {
            addr.do_send(StopPool);
        }
    }

    fn spawn_lease_actors(&mut self, me: &Addr<Self>) {
        for shared in self.keeper().take_unswept() {
            let id = shared.facts.id;
            let actor = LeaseActor::new(shared, Arc::clone(self.keeper()), me.clone().recipient());
            self.leases.insert(id, actor.start());
        }
    }

    fn stop_everything(&mut self) {
        for (_, pool) in self.pools.drain() {
            pool.do_send(StopPool);
        }
        for (_, lease) in self.leases.drain() {
            lease.do_send(StopLease);
        }
    }

    /// Runs a handler's body, containing a panic (a bug) so that the supervisor survives it.
    pub(crate) fn guarded(&mut self, what: &str, body: impl FnOnce(&mut Self)) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| body(self))) {
            tracing::error!(manager = %self.spec.keeper.name, handler = what, panic = %panic_message(payload.as_ref()), "a supervisor handler panicked; the supervisor carries on");
        }
    }
}

impl<S: 'static> Actor for ManagerActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.spec.settings().check_interval;
        // actix's interval adds the period to `Instant::now()`; a period too long to add is as
        // good as never.
        if std::time::Instant::now().checked_add(every).is_some() {
            ctx.run_interval(every, |act, _| act.guarded("tick", Self::reconcile));
        }
        // Metrics: counters the books keep and gauges, brought up to date (one wake-up per
        // second, only with the `metrics` feature).
        if self.keeper().counters.metrics.enabled() {
            ctx.run_interval(FLUSH_EVERY, |act, _| {
                act.guarded("metrics", |act| act.keeper().flush_metrics());
            });
        }
    }
}

impl<S: 'static> Drop for ManagerActor<S> {
    fn drop(&mut self) {
        if self.stopping {
            return;
        }
        // Dropped without a `Shutdown`: the supervisor died. Fail closed so that no waiter,
        // job or `stop()` is left hanging; the host's watchdog then stops the System.
        tracing::error!(
            manager = %self.spec.keeper.name,
            generation = self.generation,
            "the supervisor died; failing closed (waiters and leases answered Stopped, pools stopped)"
        );
        self.spec.keeper.end_run(Some(self.generation));
        self.stop_everything();
    }
}

impl<S: 'static> Handler<HostWork> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: HostWork, ctx: &mut Context<Self>) {
        let me = ctx.address();
        let mut sweep_at = None;
        self.guarded("HostWork", |act| {
            for task in msg.0 {
                match task {
                    HostTask::CreatePool(id) => act.create_pool(id),
                    HostTask::RetirePool(id) => {
                        if let Some(pool) = act.pools.remove(&id) {
                            pool.do_send(StopPool);
                        }
                    }
                    HostTask::SweepLeases { by } => sweep_at = Some(by),
                    HostTask::StopLeaseActor(id) => {
                        if let Some(lease) = act.leases.remove(&id) {
                            lease.do_send(StopLease);
                        }
                    }
                    HostTask::RecordHolds(held) => act.keeper().counters.metrics.lease_held(&held),
                }
            }
        });
        if let Some(by) = sweep_at {
            let wait = by.saturating_duration_since(std::time::Instant::now());
            if wait.is_zero() {
                self.guarded("sweep", |act| act.spawn_lease_actors(&me));
            } else {
                ctx.run_later(wait, |act, ctx| {
                    let me = ctx.address();
                    act.guarded("sweep", |act| act.spawn_lease_actors(&me));
                });
            }
        }
    }
}

impl<S: 'static> Handler<ScaleChanged> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, _: ScaleChanged, _: &mut Context<Self>) {
        self.guarded("ScaleChanged", Self::reconcile);
    }
}

impl<S: 'static> Handler<Shutdown> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        // The books are already closed (`Bookkeeper::end_run`); stop everything and end. The
        // watchdog waits for the threads and stops the System.
        self.stopping = true;
        self.stop_everything();
        ctx.stop();
    }
}

impl<S: 'static> Handler<PoolDied> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: PoolDied, _: &mut Context<Self>) {
        self.guarded("PoolDied", |act| {
            act.pools.remove(&msg.0);
            CounterCells::bump(&act.spec.counters().pools_replaced);
            act.spec.counters().metrics.replaced(Replacement::PoolDied);
            act.keeper().pool_died(msg.0);
        });
    }
}

impl<S: 'static> Handler<LeaseActorDied> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: LeaseActorDied, _: &mut Context<Self>) {
        self.guarded("LeaseActorDied", |act| {
            act.leases.remove(&msg.0);
            // Nobody would revoke it at its hard expiry any more: revoke it now.
            if act.keeper().revoke(msg.0, crate::lease_state::Revocation::Lost) {
                tracing::warn!(manager = %act.spec.keeper.name, lease_id = %msg.0, "lease actor died; lease revoked");
            }
        });
    }
}

impl<S: 'static> Handler<InjectFault> for ManagerActor<S> {
    type Result = bool;

    fn handle(&mut self, msg: InjectFault, ctx: &mut Context<Self>) -> bool {
        if let InjectFault::CrashLease(_) = msg {
            // A lease not swept yet gets its actor now, as it would by its sweep.
            let me = ctx.address();
            self.guarded("sweep", |act| act.spawn_lease_actors(&me));
        }
        match msg {
            InjectFault::CrashPool(id) => {
                self.pools.get(&id).map(|p| p.do_send(CrashPool)).is_some()
            }
            InjectFault::KillWorkers(id, n) => self
                .pools
                .get(&id)
                .map(|p| p.do_send(KillWorkers(n)))
                .is_some(),
            InjectFault::CrashLease(id) => self
                .leases
                .get(&id)
                .map(|a| a.do_send(CrashLease))
                .is_some(),
        }
    }
}

impl<S: 'static> Handler<CrashSupervisor> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, _: CrashSupervisor, _: &mut Context<Self>) {
        panic!("the supervisor crashed by fault injection");
    }
}
