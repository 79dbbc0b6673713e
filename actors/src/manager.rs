//! `ManagerActor`: the supervisor. Creates and retires pools, starts lease actors, keeps the
//! sizing target, and begins the shutdown.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use actix::dev::channel::AddressReceiver;
use actix::{Actor, ActorContext, AsyncContext, Context, Handler};
use tokio::sync::oneshot;

use crate::job::panic_message;
use crate::lease::LeaseActor;
use crate::messages::{
    Crash, CrashSupervisor, CreatePools, InjectFault, KillWorkers, PoolDied, RetirePool, RunOnHost,
    ScaleChanged, Shutdown, SpawnLease, StopPool,
};
use crate::pool::{PoolActor, PoolSpec};
use crate::registry::{Effects, PoolSlot};
use crate::stats::{CounterCells, PoolId};

/// The supervisor of one manager run. Lives on the host System.
///
/// Its end — a `Shutdown`, or a crash — is what ends the run: dropping it drops `ended`, and
/// the host's watchdog (see `host.rs`) then waits for the worker threads and stops the System.
/// If it ends without a `Shutdown` (a panic in a handler), it fails closed first: the books are
/// closed (waiters and leases answered `Stopped`) and every pool is told to stop.
pub struct ManagerActor<S: 'static> {
    spec: PoolSpec<S>,
    generation: u64,
    pools: HashMap<PoolId, actix::Addr<PoolActor<S>>>,
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
            size_provider_failing: false,
            stopping: false,
            _ended: ended,
        }
    }

    /// desired = min(max_pools, max(min_pools, ceil(units / units_per_pool))); a panicking
    /// size provider counts as 0 and is logged once per streak of failures.
    pub(crate) fn desired(&mut self) -> usize {
        let config = self.spec.config();
        let units = match &config.size_provider {
            None => 0,
            Some(provider) => match catch_unwind(AssertUnwindSafe(|| provider())) {
                Ok(units) => {
                    self.size_provider_failing = false;
                    units
                }
                Err(_) => {
                    if !self.size_provider_failing {
                        tracing::warn!(manager = %self.spec.config().name_prefix,
                            "size_provider panicked; counting 0 units until it recovers"
                        );
                    }
                    self.size_provider_failing = true;
                    0
                }
            },
        };
        units
            .div_ceil(config.units_per_pool.max(1))
            .max(config.min_pools)
            .min(config.max_pools)
    }

    /// Re-evaluates the target and acts on it. Runs on the host (at start, on every tick, on
    /// `ScaleChanged`).
    pub(crate) fn reconcile(&mut self) {
        let desired = self.desired();
        let effects = self.spec.registry.set_desired(desired);
        self.act_on(effects);
    }

    fn act_on(&mut self, mut effects: Effects<S>) {
        let create = effects.take_create();
        for id in effects.take_retire() {
            self.retire(id);
        }
        effects.apply();
        self.create_pools(create);
    }

    fn create_pools(&mut self, n: usize) {
        for _ in 0..n {
            if self.stopping {
                // A request that raced with `stop`: a pool made now would never be stopped.
                return;
            }
            let id = self.spec.registry.next_pool_id();
            let (addr, queue) = PoolActor::spawn(&self.spec, id);
            let slot = PoolSlot {
                id,
                generation: self.generation,
                queue,
            };
            if self.spec.registry.pool_spawned(slot) {
                self.pools.insert(id, addr);
            } else {
                addr.do_send(StopPool);
            }
        }
    }

    fn retire(&mut self, id: PoolId) {
        if let Some(pool) = self.pools.remove(&id) {
            pool.do_send(StopPool);
        }
    }

    fn start_lease(&mut self, mailbox: AddressReceiver<LeaseActor<S>>, actor: LeaseActor<S>) {
        Context::with_receiver(mailbox).run(actor);
    }

    /// Runs a handler's body, containing a panic (a bug) so that the supervisor survives it.
    fn guarded(&mut self, what: &str, body: impl FnOnce(&mut Self)) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| body(self))) {
            tracing::error!(manager = %self.spec.config().name_prefix, handler = what, panic = %panic_message(payload.as_ref()), "a supervisor handler panicked; the supervisor carries on");
        }
    }
}

impl<S: 'static> Actor for ManagerActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.spec.config().check_interval;
        // actix's interval adds the period to `Instant::now()`; a period too long to add is as
        // good as never.
        if std::time::Instant::now().checked_add(every).is_some() {
            ctx.run_interval(every, |act, _| act.guarded("tick", Self::reconcile));
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
        tracing::error!(manager = %self.spec.config().name_prefix,
            generation = self.generation,
            "the supervisor died; failing closed (waiters and leases answered Stopped, pools stopped)"
        );
        self.spec.registry.close_run(self.generation);
        for (_, pool) in self.pools.drain() {
            pool.do_send(StopPool);
        }
    }
}

impl<S: 'static> Handler<CreatePools> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: CreatePools, _: &mut Context<Self>) {
        self.guarded("CreatePools", |act| act.create_pools(msg.0));
    }
}

impl<S: 'static> Handler<SpawnLease<S>> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: SpawnLease<S>, _: &mut Context<Self>) {
        self.guarded("SpawnLease", |act| {
            if !act.spec.registry.is_live(msg.lease.id) {
                return;
            }
            let actor = LeaseActor::new(msg.lease, Arc::clone(&act.spec.registry));
            act.start_lease(msg.mailbox, actor);
        });
    }
}

impl<S: 'static> Handler<RetirePool> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: RetirePool, _: &mut Context<Self>) {
        self.guarded("RetirePool", |act| act.retire(msg.0));
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
        // The books are already closed (`Registry::begin_stop`); stop every pool and end the
        // supervisor. The watchdog waits for the threads and stops the System.
        self.stopping = true;
        for (_, pool) in self.pools.drain() {
            pool.do_send(StopPool);
        }
        ctx.stop();
    }
}

impl<S: 'static> Handler<PoolDied> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: PoolDied, _: &mut Context<Self>) {
        self.guarded("PoolDied", |act| {
            act.pools.remove(&msg.0);
            CounterCells::bump(&act.spec.counters().pools_restarted);
            let effects = act.spec.registry.pool_died(msg.0);
            act.act_on(effects);
        });
    }
}

impl<S: 'static> Handler<InjectFault> for ManagerActor<S> {
    type Result = bool;

    fn handle(&mut self, msg: InjectFault, _: &mut Context<Self>) -> bool {
        match msg {
            InjectFault::CrashPool(id) => self.pools.get(&id).map(|p| p.do_send(Crash)).is_some(),
            InjectFault::KillWorkers(id, n) => self
                .pools
                .get(&id)
                .map(|p| p.do_send(KillWorkers(n)))
                .is_some(),
            InjectFault::CrashLease(id) => match self.spec.registry.lease_actor(id) {
                Some(actor) => actor.upgrade().map(|a| a.do_send(Crash)).is_some(),
                None => false,
            },
        }
    }
}

impl<S: 'static> Handler<CrashSupervisor> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, _: CrashSupervisor, _: &mut Context<Self>) {
        panic!("the supervisor crashed by fault injection");
    }
}

impl<S: 'static> Handler<RunOnHost> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: RunOnHost, _: &mut Context<Self>) {
        self.guarded("RunOnHost", |_| (msg.0)());
    }
}
