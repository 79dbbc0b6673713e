//! `ManagerActor`: the supervisor. Creates and retires pools, starts lease actors, keeps the
//! sizing target, and runs the bounded shutdown.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use actix::dev::channel::AddressReceiver;
use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, ResponseActFuture, System, WrapFuture,
};

use crate::lease::LeaseActor;
use crate::messages::{Crash, KillWorkers, RunOnHost};
use crate::messages::{
    CreatePools, InjectFault, PoolDied, RetirePool, ScaleChanged, Shutdown, SpawnLease, StopPool,
};
use crate::pool::{PoolActor, PoolSpec};
use crate::registry::{Effects, PoolSlot};
use crate::stats::CounterCells;

/// The supervisor of one manager run. Lives on the host System.
pub struct ManagerActor<S: 'static> {
    spec: PoolSpec<S>,
    generation: u64,
    pools: HashMap<crate::stats::PoolId, actix::Addr<PoolActor<S>>>,
    size_provider_failing: bool,
}

impl<S: 'static> ManagerActor<S> {
    pub(crate) fn new(spec: PoolSpec<S>, generation: u64) -> Self {
        Self {
            spec,
            generation,
            pools: HashMap::new(),
            size_provider_failing: false,
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
                        tracing::warn!(
                            "size_provider panicked; counting 0 units until it recovers"
                        );
                    }
                    self.size_provider_failing = true;
                    0
                }
            },
        };
        units
            .div_ceil(config.units_per_pool)
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
            let id = self.spec.registry.next_pool_id();
            let (addr, queue) = PoolActor::spawn(&self.spec, id);
            self.pools.insert(id, addr);
            let slot = PoolSlot {
                id,
                generation: self.generation,
                queue,
            };
            let effects = self.spec.registry.add_pool(slot);
            self.act_on(effects);
        }
    }

    fn retire(&mut self, id: crate::stats::PoolId) {
        if let Some(pool) = self.pools.remove(&id) {
            pool.do_send(StopPool);
        }
    }

    fn start_lease(&mut self, mailbox: AddressReceiver<LeaseActor<S>>, actor: LeaseActor<S>) {
        Context::with_receiver(mailbox).run(actor);
    }
}

impl<S: 'static> Actor for ManagerActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = self.spec.config().check_interval;
        ctx.run_interval(every, |act, _| act.reconcile());
    }
}

impl<S: 'static> Handler<CreatePools> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: CreatePools, _: &mut Context<Self>) {
        self.create_pools(msg.0);
    }
}

impl<S: 'static> Handler<SpawnLease<S>> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: SpawnLease<S>, _: &mut Context<Self>) {
        if !self.spec.registry.is_live(msg.lease.id) {
            return;
        }
        let actor = LeaseActor::new(msg.lease, Arc::clone(&self.spec.registry));
        self.start_lease(msg.mailbox, actor);
    }
}

impl<S: 'static> Handler<RetirePool> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: RetirePool, _: &mut Context<Self>) {
        self.retire(msg.0);
    }
}

impl<S: 'static> Handler<ScaleChanged> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, _: ScaleChanged, _: &mut Context<Self>) {
        self.reconcile();
    }
}

impl<S: 'static> Handler<Shutdown> for ManagerActor<S> {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Context<Self>) -> Self::Result {
        for (_, pool) in self.pools.drain() {
            pool.do_send(StopPool);
        }
        let threads = Arc::clone(&self.spec.threads);
        let timeout: Duration = msg.timeout;
        Box::pin(
            async move { threads.wait_all_exited(timeout).await }
                .into_actor(self)
                .map(move |stuck, _, _| {
                    if !stuck.is_empty() {
                        tracing::warn!(
                            threads = ?stuck,
                            timeout = ?timeout,
                            "worker threads still busy after shutdown_timeout; leaving them detached"
                        );
                    }
                    System::current().stop();
                }),
        )
    }
}

impl<S: 'static> Handler<PoolDied> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: PoolDied, _: &mut Context<Self>) {
        self.pools.remove(&msg.0);
        CounterCells::bump(&self.spec.counters().pools_restarted);
        let effects = self.spec.registry.pool_died(msg.0);
        self.act_on(effects);
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

impl<S: 'static> Handler<RunOnHost> for ManagerActor<S> {
    type Result = ();

    fn handle(&mut self, msg: RunOnHost, _: &mut Context<Self>) {
        (msg.0)();
    }
}
