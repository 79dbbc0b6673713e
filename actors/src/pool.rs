//! `PoolActor`: owns one pool's worker threads (actix `SyncArbiter`s) and its job queue, and
//! keeps the pool at `workers_per_pool` live workers.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, SyncArbiter};
use crossbeam_channel::{Receiver, Sender};

use crate::config::EngineConfig;
use crate::messages::{
    Crash, Job, JobKind, KillWorkers, PoolDied, ReplaceWorkers, StopPool, WorkerExited, WorkerReady,
};
use crate::registry::Registry;
use crate::stats::{CounterCells, PoolId};
use crate::threads::WorkerThreads;
use crate::worker::{ExitNotice, Worker};

/// First delay before replacing dead workers; doubled on each failure up to [`BACKOFF_CAP`].
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest delay between replacement attempts.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A pool that lost no worker for this long starts over at [`BACKOFF_START`].
pub(crate) const HEALTHY_PERIOD: Duration = Duration::from_secs(30);

/// What every pool of one manager run is built from: the manager's books (which own the
/// settings and counters) and this run's worker-thread tracker.
pub(crate) struct PoolSpec<S: 'static> {
    pub(crate) registry: Arc<Registry<S>>,
    pub(crate) threads: Arc<WorkerThreads>,
}

impl<S: 'static> PoolSpec<S> {
    pub(crate) fn config(&self) -> &EngineConfig<S> {
        &self.registry.config
    }

    pub(crate) fn counters(&self) -> &Arc<CounterCells> {
        &self.registry.counters
    }
}

impl<S: 'static> Clone for PoolSpec<S> {
    fn clone(&self) -> Self {
        Self {
            registry: Arc::clone(&self.registry),
            threads: Arc::clone(&self.threads),
        }
    }
}

/// The sending side of a pool's job queue. The pool actor owns the only `Arc`; lease handles
/// hold `Weak`s, so a handle kept after its lease ended cannot keep the pool's threads alive.
pub struct PoolQueue<S> {
    pub(crate) jobs: Sender<Job<S>>,
    /// Set while the pool has no live worker: new jobs fail at once with `WorkerLost`.
    pub(crate) dead: AtomicBool,
}

/// One pool of `workers_per_pool` threads.
///
/// It holds the job queue's sender, a receiver (so the queue outlives any one generation of
/// workers) and the addresses of its `SyncArbiter`s. Workers leave their serving loop when the
/// queue closes, and a `SyncArbiter` stops its threads when its last address is gone, so
/// dropping these is what retires the pool.
///
/// Supervision: a worker thread that dies (its state factory panicked) reports `WorkerExited`.
/// While no worker is alive the pool is *unhealthy*: queued jobs are answered `WorkerLost` and
/// the books never hand the pool out. Dead workers are replaced by a fresh `SyncArbiter` after
/// a backoff of 10 ms doubling to 5 s, reset after 30 s without a failure.
pub struct PoolActor<S: 'static> {
    id: PoolId,
    spec: PoolSpec<S>,
    queue: Option<Arc<PoolQueue<S>>>,
    receiver: Receiver<Job<S>>,
    /// (arbiter number, address, its threads still alive).
    arbiters: Vec<(u64, Addr<Worker<S>>, usize)>,
    next_arbiter: u64,
    live: usize,
    healthy: bool,
    next_index: usize,
    backoff: Duration,
    last_failure: Option<Instant>,
    replacing: bool,
    retired: bool,
}

impl<S: 'static> PoolActor<S> {
    /// Starts the worker threads and the actor; returns the actor and a weak handle to the job
    /// queue. Must run on the host System.
    pub(crate) fn spawn(spec: &PoolSpec<S>, id: PoolId) -> (Addr<Self>, Weak<PoolQueue<S>>) {
        let (jobs, receiver) = crossbeam_channel::unbounded();
        let queue = Arc::new(PoolQueue {
            jobs,
            dead: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&queue);
        // The address exists before the actor runs, so the workers' exit notices can name it.
        let ctx = Context::<Self>::new();
        let mut actor = PoolActor {
            id,
            spec: spec.clone(),
            queue: Some(queue),
            receiver,
            arbiters: Vec::new(),
            next_arbiter: 0,
            live: 0,
            healthy: true,
            next_index: 0,
            backoff: BACKOFF_START,
            last_failure: None,
            replacing: false,
            retired: false,
        };
        actor.start_workers(spec.config().workers_per_pool, &ctx.address());
        tracing::info!(pool = %id, workers = spec.config().workers_per_pool, "pool started");
        (ctx.run(actor), weak)
    }

    fn start_workers(&mut self, n: usize, me: &Addr<Self>) {
        let spec = &self.spec;
        let id = self.id;
        let prefix = spec.config().name_prefix.clone();
        let builder_threads = Arc::clone(&spec.threads);
        let mut index = self.next_index;
        let thread_builder = move || {
            let name = format!("{prefix}-{}-{index}", id.get());
            index += 1;
            builder_threads.expect(id, &name);
            thread::Builder::new().name(name)
        };
        let factory = Arc::clone(&spec.config().state_factory);
        let counters = Arc::clone(spec.counters());
        let threads = Arc::clone(&spec.threads);
        let queue = self.receiver.clone();
        let exits = me.clone().recipient::<WorkerExited>();
        let ready = me.clone().recipient::<WorkerReady>();
        let arbiter = self.next_arbiter;
        let make_worker = move || {
            threads.adopt_current_thread(id);
            let exit = ExitNotice {
                pool: exits.clone(),
                arbiter,
            };
            let worker = Worker::new(
                exit,
                queue.clone(),
                Arc::clone(&factory),
                id,
                Arc::clone(&counters),
            );
            ready.do_send(WorkerReady);
            worker
        };
        let addr = SyncArbiter::start_with_thread_builder(n, thread_builder, make_worker);
        self.arbiters.push((arbiter, addr, n));
        self.next_arbiter += 1;
        self.next_index += n;
        self.live += n;
    }

    /// Drops the queue's sender and the arbiters' addresses: the threads exit after what is
    /// queued.
    fn release_threads(&mut self) {
        self.queue = None;
        self.arbiters.clear();
    }

    /// Reports a stop that nobody asked for (a panic in a handler) to the supervisor, once.
    fn report_unexpected_stop(&mut self) {
        if !self.retired {
            self.retired = true;
            tracing::warn!(pool = %self.id, "pool actor stopped unexpectedly");
            if let Some(run) = self.spec.registry.current_run() {
                run.manager.do_send(PoolDied(self.id));
            }
        }
    }
}

impl<S: 'static> Handler<KillWorkers> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, msg: KillWorkers, _: &mut Context<Self>) {
        if let Some(queue) = &self.queue {
            for _ in 0..msg.0 {
                let _ = queue.jobs.send(Job(JobKind::KillWorker));
            }
        }
    }
}

impl<S: 'static> Actor for PoolActor<S> {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // After a panic in a handler, actix drops the context, which stops the actor and runs
        // this hook: a stop the supervisor did not ask for is a crash to report.
        self.report_unexpected_stop();
        self.release_threads();
        tracing::info!(pool = %self.id, "pool stopped; its threads exit after their queued jobs");
    }
}

impl<S: 'static> Drop for PoolActor<S> {
    fn drop(&mut self) {
        // In case the actor is dropped without `stopped` running.
        self.report_unexpected_stop();
    }
}

impl<S: 'static> Handler<StopPool> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: StopPool, ctx: &mut Context<Self>) {
        self.retired = true;
        self.release_threads();
        ctx.stop();
    }
}

impl<S: 'static> Handler<WorkerExited> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, msg: WorkerExited, ctx: &mut Context<Self>) {
        self.live = self.live.saturating_sub(1);
        CounterCells::bump(&self.spec.counters().worker_state_failures);
        if let Some(at) = self.arbiters.iter().position(|a| a.0 == msg.arbiter) {
            self.arbiters[at].2 = self.arbiters[at].2.saturating_sub(1);
            if self.arbiters[at].2 == 0 {
                // Every thread of that SyncArbiter is gone; dropping its address stops it.
                self.arbiters.swap_remove(at);
            }
        }
        if self.retired {
            return;
        }
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) >= HEALTHY_PERIOD)
        {
            self.backoff = BACKOFF_START;
        }
        self.last_failure = Some(now);
        tracing::warn!(pool = %self.id, live = self.live, "a worker thread died (its state factory panicked)");
        if self.live == 0 {
            if let Some(queue) = &self.queue {
                queue.dead.store(true, Relaxed);
            }
            // Nobody can run what is queued: answer it now instead of letting callers hang.
            let mut lost = 0usize;
            while let Ok(job) = self.receiver.try_recv() {
                drop(job);
                lost += 1;
            }
            tracing::warn!(pool = %self.id, lost, "pool has no live worker; it is unhealthy until rebuilt");
            if self.healthy {
                self.healthy = false;
                self.spec.registry.pool_unhealthy(self.id).apply();
            }
        }
        if !self.replacing {
            self.replacing = true;
            ctx.notify_later(ReplaceWorkers, self.backoff);
            self.backoff = (self.backoff * 2).min(BACKOFF_CAP);
        }
    }
}

impl<S: 'static> Handler<ReplaceWorkers> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: ReplaceWorkers, ctx: &mut Context<Self>) {
        self.replacing = false;
        if self.retired {
            return;
        }
        let missing = self
            .spec
            .config()
            .workers_per_pool
            .saturating_sub(self.live);
        if missing == 0 {
            return;
        }
        self.start_workers(missing, &ctx.address());
        CounterCells::bump(&self.spec.counters().pools_restarted);
        tracing::info!(pool = %self.id, started = missing, "replacement workers started");
    }
}

impl<S: 'static> Handler<WorkerReady> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: WorkerReady, _: &mut Context<Self>) {
        // Only a worker that built its state proves the pool can serve again.
        if !self.healthy && !self.retired {
            self.healthy = true;
            if let Some(queue) = &self.queue {
                queue.dead.store(false, Relaxed);
            }
            tracing::info!(pool = %self.id, "pool is healthy again");
            self.spec.registry.pool_healthy(self.id).apply();
        }
    }
}

impl<S: 'static> Handler<Crash> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("pool actor {} crashed by fault injection", self.id);
    }
}
