//! `PoolActor`: owns one `SyncArbiter<Worker<S>>`.

use std::sync::{Arc, Weak};
use std::thread;

use actix::{Actor, ActorContext, Addr, Context, Handler, SyncArbiter};
use crossbeam_channel::Sender;

use crate::config::EngineConfig;
use crate::messages::{Job, StopPool};
use crate::stats::{CounterCells, PoolId};
use crate::threads::WorkerThreads;
use crate::worker::Worker;

/// What every pool of one manager run is built from.
pub(crate) struct PoolSpec<S> {
    pub(crate) config: Arc<EngineConfig<S>>,
    pub(crate) counters: Arc<CounterCells>,
    pub(crate) threads: Arc<WorkerThreads>,
}

/// The sending side of a pool's job queue. The pool actor owns the only `Arc`; lease handles
/// hold `Weak`s, so a handle kept after its lease ended cannot keep the pool's threads alive.
pub struct PoolQueue<S> {
    pub(crate) jobs: Sender<Job<S>>,
}

/// One pool of `workers_per_pool` threads.
///
/// It holds the job queue's sender and the only address of its `SyncArbiter`. Workers leave
/// their serving loop when the queue closes (after running or refusing what is queued), and the
/// `SyncArbiter` stops its threads when its last address is gone, so stopping this actor is
/// what retires the pool.
pub struct PoolActor<S: 'static> {
    id: PoolId,
    queue: Option<Arc<PoolQueue<S>>>,
    workers: Option<Addr<Worker<S>>>,
}

impl<S: 'static> PoolActor<S> {
    /// Starts the worker threads and the actor; returns the actor and a weak handle to the job
    /// queue. Must run on the host System.
    pub(crate) fn spawn(spec: &PoolSpec<S>, id: PoolId) -> (Addr<Self>, Weak<PoolQueue<S>>) {
        let (jobs, receiver) = crossbeam_channel::unbounded();
        let workers = start_workers(spec, id, receiver);
        let queue = Arc::new(PoolQueue { jobs });
        let weak = Arc::downgrade(&queue);
        tracing::info!(pool = %id, workers = spec.config.workers_per_pool, "pool started");
        let addr = PoolActor {
            id,
            queue: Some(queue),
            workers: Some(workers),
        }
        .start();
        (addr, weak)
    }

    fn retire(&mut self) {
        self.queue = None;
        self.workers = None;
    }
}

fn start_workers<S: 'static>(
    spec: &PoolSpec<S>,
    id: PoolId,
    queue: crossbeam_channel::Receiver<Job<S>>,
) -> Addr<Worker<S>> {
    let prefix = spec.config.name_prefix.clone();
    let builder_threads = Arc::clone(&spec.threads);
    let mut index = 0usize;
    let thread_builder = move || {
        let name = format!("{prefix}-{}-{index}", id.get());
        index += 1;
        builder_threads.expect(id, &name);
        thread::Builder::new().name(name)
    };
    let factory = Arc::clone(&spec.config.state_factory);
    let counters = Arc::clone(&spec.counters);
    let threads = Arc::clone(&spec.threads);
    let make_worker = move || {
        threads.adopt_current_thread(id);
        Worker::new(
            queue.clone(),
            Arc::clone(&factory),
            id,
            Arc::clone(&counters),
        )
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
        self.retire();
        tracing::info!(pool = %self.id, "pool retired; its threads exit after their queued jobs");
    }
}

impl<S: 'static> Handler<StopPool> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: StopPool, ctx: &mut Context<Self>) {
        self.retire();
        ctx.stop();
    }
}
