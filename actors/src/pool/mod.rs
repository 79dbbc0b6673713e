//! `PoolActor`: owns one pool's worker threads (actix `SyncArbiter`s) and its job queue, and
//! keeps the pool at `workers_per_pool` live workers.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, Handler, Message, Recipient};
use crossbeam_channel::Receiver;

use crate::bookkeeper::Bookkeeper;
use crate::config::Settings;
use crate::job::{Job, PoolQueue};
use crate::metrics::Replacement;
use crate::stats::{CounterCells, PoolId};
use crate::threads::WorkerThreads;
use crate::worker::{Worker, WorkerExit, WorkerExited, WorkerReady};

mod spawn;

/// Take this pool out of service: drop the workers' address so the `SyncArbiter` stops and its
/// threads exit after the jobs already queued. Sent by the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopPool;

/// Start replacement workers for those that died. Scheduled by the pool actor itself.
#[derive(Message)]
#[rtype(result = "()")]
struct ReplaceWorkers;

/// Fault injection (feature `testing`): kill this many workers of the pool, as crashes would.
/// Sent by the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct KillWorkers(pub(crate) usize);

/// Fault injection (feature `testing`): panic in a handler, as a bug would. Sent by the
/// supervisor (`kill_pool`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CrashPool;

/// A pool actor stopped without being retired (a panic in one of its handlers). Sent from its
/// `stopped()` hook; handled by the supervisor, which takes the pool out of the books (revoking
/// its lease, if any) and builds capacity back.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct PoolDied(pub(crate) PoolId);

/// First delay before replacing dead workers; doubled on each failure up to [`BACKOFF_CAP`].
pub(crate) const BACKOFF_START: Duration = Duration::from_millis(10);
/// Longest delay between replacement attempts.
pub(crate) const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// A pool that lost no worker for this long starts over at [`BACKOFF_START`].
pub(crate) const HEALTHY_PERIOD: Duration = Duration::from_secs(30);

/// What every pool of one manager run is built from: the bookkeeper (which owns the settings
/// and counters), this run's worker-thread tracker, and the supervisor to report a crash to.
pub(crate) struct PoolSpec<S: 'static> {
    pub(crate) keeper: Arc<Bookkeeper<S>>,
    pub(crate) threads: Arc<WorkerThreads>,
    pub(crate) supervisor: Recipient<PoolDied>,
}

impl<S: 'static> PoolSpec<S> {
    pub(crate) fn settings(&self) -> &Settings<S> {
        &self.keeper.config.settings
    }

    pub(crate) fn counters(&self) -> &Arc<CounterCells> {
        &self.keeper.counters
    }
}

impl<S: 'static> Clone for PoolSpec<S> {
    fn clone(&self) -> Self {
        Self {
            keeper: Arc::clone(&self.keeper),
            threads: Arc::clone(&self.threads),
            supervisor: self.supervisor.clone(),
        }
    }
}

/// One group of worker threads started together: a `SyncArbiter`, or — when a spawn failed
/// part-way — the threads that did start, whose arbiter address actix never returned. (Its
/// worker threads are started in `spawn.rs`.)
struct ThreadGroup<S: 'static> {
    number: u64,
    /// Dropping it stops the `SyncArbiter` (its threads exit once the job queue is closed).
    _arbiter: Option<Addr<Worker<S>>>,
    live: usize,
}

/// One pool of `workers_per_pool` threads.
///
/// It holds the job queue's sender, a receiver (so the queue outlives any one generation of
/// workers) and the addresses of its `SyncArbiter`s. Workers leave their serving loop when the
/// queue closes, and a `SyncArbiter` stops its threads when its last address is gone, so
/// dropping these is what retires the pool.
///
/// A new pool is *starting* until its first worker has built its state; only then do the books
/// hand it out. Supervision: a worker thread that ends early (its state factory failed, or it
/// crashed) reports `WorkerExited`, and a thread that cannot be spawned counts the same way.
/// While no worker is alive the pool is *unhealthy*: queued jobs are answered `NeverRan`, the
/// books never hand the pool out, and they learn the last failure (what acquirers are told when
/// no pool can serve). Dead workers are replaced after a backoff of 10 ms doubling to 5 s,
/// reset after 30 s without a failure.
pub(crate) struct PoolActor<S: 'static> {
    id: PoolId,
    spec: PoolSpec<S>,
    queue: Option<Arc<PoolQueue<S>>>,
    receiver: Receiver<Job<S>>,
    groups: Vec<ThreadGroup<S>>,
    next_group: u64,
    live: usize,
    /// A worker has built its state since the pool started or last went unhealthy.
    serving: bool,
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
            backlog: receiver.clone(),
            dead: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&queue);
        let actor = PoolActor {
            id,
            spec: spec.clone(),
            queue: Some(queue),
            receiver,
            groups: Vec::new(),
            next_group: 0,
            live: 0,
            serving: false,
            next_index: 0,
            backoff: BACKOFF_START,
            last_failure: None,
            replacing: false,
            retired: false,
        };
        tracing::info!(manager = %spec.settings().name_prefix, pool = %id, workers = spec.settings().workers_per_pool, "pool starting");
        // The workers start in `started()`, after the supervisor has entered the pool in the
        // books as starting: a failure to start them then always finds the pool there.
        (actor.start(), weak)
    }

    /// Drops the queue's sender and the arbiters' addresses: the threads exit after what is
    /// queued.
    fn release_threads(&mut self) {
        self.queue = None;
        self.groups.clear();
    }

    /// A worker is gone or could not start: tell the books if the pool can no longer serve, and
    /// schedule replacements with backoff.
    fn worker_failed(&mut self, error: String, ctx: &mut Context<Self>) {
        if self.retired {
            return;
        }
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.saturating_duration_since(t) >= HEALTHY_PERIOD)
        {
            self.backoff = BACKOFF_START;
        }
        self.last_failure = Some(now);
        if self.live == 0 {
            // The books first, in one step with the death: from here on a release parks the
            // pool and no waiter is handed it. (Marking the queue dead and answering its jobs
            // first left a window in which the release of the job that just failed handed the
            // "healthy" pool to the next waiter, whose job then failed at once, and so on down
            // the queue.) Also when already unhealthy: the books keep the latest failure.
            self.spec.keeper.pool_unhealthy(self.id, error);
            if let Some(queue) = &self.queue {
                queue.dead.store(true, SeqCst);
            }
            // Nobody can run what is queued: answer it now (`NeverRan`) instead of letting
            // callers hang.
            let mut lost = 0usize;
            while let Ok(job) = self.receiver.try_recv() {
                drop(job);
                lost += 1;
            }
            if self.serving {
                tracing::warn!(manager = %self.spec.settings().name_prefix, pool = %self.id, lost, "pool has no live worker; it is unhealthy until rebuilt");
            }
            self.serving = false;
        }
        if !self.replacing {
            self.replacing = true;
            ctx.notify_later(ReplaceWorkers, self.backoff);
            self.backoff = self.backoff.saturating_mul(2).min(BACKOFF_CAP);
        }
    }

    /// Reports a stop that nobody asked for (a panic in a handler) to the supervisor, once.
    fn report_unexpected_stop(&mut self) {
        if !self.retired {
            self.retired = true;
            // The books first, in one step with the death and before the queue goes (as for
            // a pool whose last worker died): a lease released from here on does not hand the
            // dead pool to the next waiter while the supervisor's message is on its way.
            self.spec.keeper.pool_died(self.id);
            tracing::warn!(manager = %self.spec.settings().name_prefix, pool = %self.id, "pool actor stopped unexpectedly");
            self.spec.supervisor.do_send(PoolDied(self.id));
        }
    }
}

impl<S: 'static> Actor for PoolActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_workers(self.spec.settings().workers_per_pool, ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // After a panic in a handler, actix drops the context, which stops the actor and runs
        // this hook: a stop the supervisor did not ask for is a crash to report.
        self.report_unexpected_stop();
        self.release_threads();
        tracing::info!(manager = %self.spec.settings().name_prefix, pool = %self.id, "pool stopped; its threads exit after their queued jobs");
    }
}

impl<S: 'static> Drop for PoolActor<S> {
    fn drop(&mut self) {
        // In case the actor is dropped without `stopped` running.
        self.report_unexpected_stop();
    }
}

impl<S: 'static> Handler<KillWorkers> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, msg: KillWorkers, _: &mut Context<Self>) {
        if let Some(queue) = &self.queue {
            for _ in 0..msg.0 {
                let _ = queue.jobs.send(Job::KillWorker);
            }
        }
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
        if let Some(at) = self.groups.iter().position(|g| g.number == msg.group) {
            self.groups[at].live = self.groups[at].live.saturating_sub(1);
            if self.groups[at].live == 0 {
                // Every thread of that SyncArbiter is gone; dropping its address stops it.
                self.groups.swap_remove(at);
            }
        }
        if self.retired {
            return;
        }
        let error = match msg.cause {
            WorkerExit::StateFailed(error) => {
                CounterCells::bump(&self.spec.counters().worker_state_failures);
                tracing::warn!(manager = %self.spec.settings().name_prefix, pool = %self.id, live = self.live, error = %error, "a worker could not build its state");
                error
            }
            WorkerExit::Crashed => {
                tracing::warn!(manager = %self.spec.settings().name_prefix, pool = %self.id, live = self.live, "a worker thread crashed");
                "a worker thread crashed".to_owned()
            }
        };
        self.worker_failed(error, ctx);
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
            .settings()
            .workers_per_pool
            .saturating_sub(self.live);
        if missing == 0 {
            return;
        }
        CounterCells::bump(&self.spec.counters().workers_replaced);
        self.spec
            .counters()
            .metrics
            .replaced(Replacement::ThreadDied);
        tracing::info!(manager = %self.spec.settings().name_prefix, pool = %self.id, starting = missing, "starting replacement workers");
        self.start_workers(missing, ctx);
    }
}

impl<S: 'static> Handler<WorkerReady> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: WorkerReady, _: &mut Context<Self>) {
        // Only a worker that built its state proves the pool can serve.
        if !self.serving && !self.retired {
            self.serving = true;
            if let Some(queue) = &self.queue {
                queue.dead.store(false, SeqCst);
            }
            tracing::info!(manager = %self.spec.settings().name_prefix, pool = %self.id, "pool is serving");
            self.spec.keeper.pool_ready(self.id);
        }
    }
}

impl<S: 'static> Handler<CrashPool> for PoolActor<S> {
    type Result = ();

    fn handle(&mut self, _: CrashPool, _: &mut Context<Self>) {
        panic!("pool actor {} crashed by fault injection", self.id);
    }
}
