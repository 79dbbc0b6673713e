//! `PoolActor`: owns one `SyncArbiter<Worker<S>>`.

use std::sync::Arc;
use std::thread;

use actix::{Actor, ActorContext, Addr, Context, Handler, SyncArbiter, WeakAddr};

use crate::config::EngineConfig;
use crate::messages::StopPool;
use crate::stats::{CounterCells, PoolId};
use crate::threads::WorkerThreads;
use crate::worker::Worker;

/// What every pool of one manager run is built from.
pub(crate) struct PoolSpec<S> {
    pub(crate) config: Arc<EngineConfig<S>>,
    pub(crate) counters: Arc<CounterCells>,
    pub(crate) threads: Arc<WorkerThreads>,
}

/// One pool of `workers_per_pool` threads.
///
/// It holds the only strong address of its `SyncArbiter`; lease handles hold weak ones. A
/// `SyncArbiter` stops only when every strong address is gone (its workers then drain the queue
/// and exit), so stopping this actor is what retires the pool.
pub struct PoolActor<S: 'static> {
    id: PoolId,
    workers: Option<Addr<Worker<S>>>,
}

impl<S: 'static> PoolActor<S> {
    /// Starts the worker threads and the actor; returns the actor and the workers' weak address.
    /// Must run on the host System.
    pub(crate) fn spawn(spec: &PoolSpec<S>, id: PoolId) -> (Addr<Self>, WeakAddr<Worker<S>>) {
        let workers = start_workers(spec, id);
        let weak = workers.downgrade();
        tracing::info!(pool = %id, workers = spec.config.workers_per_pool, "pool started");
        let addr = PoolActor {
            id,
            workers: Some(workers),
        }
        .start();
        (addr, weak)
    }
}

fn start_workers<S: 'static>(spec: &PoolSpec<S>, id: PoolId) -> Addr<Worker<S>> {
    let prefix = spec.config.name_prefix.clone();
    let builder_threads = Arc::clone(&spec.threads);
    let mut index = 0usize;
    let thread_builder = move || {
        let name = format!("{prefix}-{}-{index}", id.get());
        index += 1;
        builder_threads.expect(&name);
        thread::Builder::new().name(name)
    };
    let factory = Arc::clone(&spec.config.state_factory);
    let counters = Arc::clone(&spec.counters);
    let threads = Arc::clone(&spec.threads);
    let make_worker = move || {
        threads.adopt_current_thread();
        Worker::new(factory(), id, Arc::clone(&counters))
    };
    SyncArbiter::start_with_thread_builder(
        spec.config.workers_per_pool,
        thread_builder,
        make_worker,
    )
}

impl<S: 'static> Actor for PoolActor<S> {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.workers = None;
        tracing::info!(pool = %self.id, "pool retired; its threads exit after their queued jobs");
    }
}

impl<S: 'static> Handler<StopPool> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: StopPool, ctx: &mut Context<Self>) {
        self.workers = None;
        ctx.stop();
    }
}
