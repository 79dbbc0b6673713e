//! The bookkeeper: the one interpreter of the [books](crate::books).
//!
//! It keeps the books behind the engine's one short mutex, together with what the pure books
//! leave out — each live lease's shared state, each waiter's reply channel, each pool's job
//! queue (as the books' opaque payloads) — and carries out the books' effects: under the lock
//! what must be seen atomically with the books (a lease's shared state is made or revoked in the
//! same step that the books record it, so no snapshot disagrees with itself), after the lock
//! what answers or wakes someone (a waiter's reply, one `HostWork` message to the supervisor).
//!
//! The fast paths keep their property: an acquire that finds an idle pool and a release with
//! nothing in flight run here, on the caller's thread, and wake no one — new leases' actors are
//! started by a sweep at most once per [`sweep::ACTOR_DELAY`] (see `sweep.rs`), and a lease that
//! ends before its sweep never has one.

use std::sync::atomic::{
    AtomicBool, AtomicU64, AtomicUsize,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use actix::{Message, Recipient};
use tokio::sync::oneshot;

use crate::books::{Books, Effect, Limits};
use crate::config::EngineConfig;
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::job::PoolQueue;
use crate::lease_state::{LeaseEnds, LeaseFacts, LeaseShared, Revocation};
use crate::metrics::Metrics;
use crate::stats::{CounterCells, LeaseId, PoolId};
use crate::sync::{lock, IdMap};
use crate::threads::WorkerThreads;

mod acquire;
mod estimate;
mod report;
mod sweep;
pub(crate) mod wait;

/// What an acquirer asks for.
#[derive(Debug, Clone)]
pub struct LeaseParams {
    /// Label for logs and stats.
    pub owner: Option<String>,
    /// Soft lifetime.
    pub lease_for: Duration,
}

/// A queued acquirer's reply channel and request.
pub(crate) struct Waiter<S: 'static> {
    reply: oneshot::Sender<Result<LeaseCore<S>, LeaseError>>,
    params: LeaseParams,
}

type PoolHandle<S> = Weak<PoolQueue<S>>;

/// Work for the supervisor on the host thread, batched per transition. Sent by the
/// bookkeeper; handled by the `ManagerActor`.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct HostWork(pub(crate) Vec<HostTask>);

/// One piece of [`HostWork`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostTask {
    /// Spawn this pool.
    CreatePool(PoolId),
    /// Stop this pool: it left service.
    RetirePool(PoolId),
    /// Start the actors of the leases made since the last sweep, at `by` (see `sweep.rs`).
    SweepLeases { by: Instant },
    /// This lease ended: stop its actor.
    StopLeaseActor(LeaseId),
    /// Record these hold times (a full batch: see `Ledger::holds`).
    RecordHolds(Vec<Duration>),
}

/// The host of one manager run, as the bookkeeper sees it.
#[derive(Clone)]
pub(crate) struct Run {
    pub(crate) generation: u64,
    pub(crate) host: Recipient<HostWork>,
    pub(crate) timers: tokio::runtime::Handle,
    pub(crate) system: actix_rt::System,
    pub(crate) threads: Arc<WorkerThreads>,
}

type Fx<S> = Vec<Effect<PoolHandle<S>, Waiter<S>>>;

struct Ledger<S: 'static> {
    books: Books<PoolHandle<S>, Waiter<S>>,
    leases: IdMap<LeaseId, Arc<LeaseShared>>,
    run: Option<Run>,
    /// The effects buffer, kept between transitions so that the fast paths do not allocate.
    fx: Fx<S>,
    /// The earliest sweep asked of the supervisor and not done yet.
    sweep_pending: Option<Instant>,
    /// A sweep to ask for once the transition's effects are applied.
    sweep_ask: Option<Instant>,
    /// The running mean of hold times, kept once an estimate was asked for (see `estimate.rs`).
    hold_mean: Option<Duration>,
    /// Hold times not recorded yet (with metrics on): recorded in batches by the host thread,
    /// at each flush, or by the caller after the lock if there is no host — so a lease's end
    /// costs its caller a clock read and a push, and never waits on a recorder.
    holds: Vec<Duration>,
}

impl<S: 'static> Ledger<S> {
    /// The (empty) effects buffer, taken for one transition; `apply` drains it and puts it back.
    fn take_fx(&mut self) -> Fx<S> {
        std::mem::take(&mut self.fx)
    }
}

/// A waiter and its answer.
type Reply<S> = (Waiter<S>, Result<LeaseCore<S>, LeaseError>);

/// The replies of one transition: most have none or one (a release hands its pool to the next
/// waiter), so the first is kept inline and only more allocate.
struct Replies<S: 'static> {
    first: Option<Reply<S>>,
    more: Vec<Reply<S>>,
}

impl<S: 'static> Replies<S> {
    fn push(&mut self, reply: Reply<S>) {
        if self.first.is_none() {
            self.first = Some(reply);
        } else {
            self.more.push(reply);
        }
    }
}

/// What must happen once the lock is released.
struct Deferred<S: 'static> {
    host: Option<Recipient<HostWork>>,
    tasks: Vec<HostTask>,
    replies: Replies<S>,
    /// Hold times to record after the lock (a full batch when there is no host).
    held: Vec<Duration>,
}

impl<S: 'static> Deferred<S> {
    fn run(self, keeper: &Bookkeeper<S>) {
        // (Both are empty on the fast paths: look before iterating.) Waiters first: a waiter's
        // wake-up is on the path of a hand-off, the host's work is not. The host's work is sent
        // when `_host` drops — after the replies, or while unwinding if one of them panics (a
        // tracing subscriber is user code): a lost `CreatePool` would leave the books waiting
        // for a pool forever.
        let _host = HostSend(self.host, self.tasks);
        if let Some(first) = self.replies.first {
            for (waiter, answer) in std::iter::once(first).chain(self.replies.more) {
                if let Ok(core) = &answer {
                    keeper.granted(core);
                }
                // A waiter that vanished after being picked gets nothing; its lease, dropped
                // here, releases itself and the pool goes to the next waiter.
                let _ = waiter.reply.send(answer);
            }
        }
        // Last: a recorder is user code, and a waiter's answer must not wait on it.
        keeper.counters.metrics.lease_held(&self.held);
    }
}

/// Sends its tasks to the host when dropped.
struct HostSend(Option<Recipient<HostWork>>, Vec<HostTask>);

impl Drop for HostSend {
    fn drop(&mut self) {
        if !self.1.is_empty() {
            if let Some(host) = &self.0 {
                host.do_send(HostWork(std::mem::take(&mut self.1)));
            }
        }
    }
}

/// The books of one manager, and the interpreter of their effects.
pub(crate) struct Bookkeeper<S: 'static> {
    ledger: Mutex<Ledger<S>>,
    pub(crate) config: EngineConfig<S>,
    /// The manager's name (`name_prefix`), for every log event's `manager` field.
    pub(crate) name: Arc<str>,
    pub(crate) counters: Arc<CounterCells>,
    /// A starting pool became ready or failed, or the run ended (what `start` waits for).
    pub(crate) settled: tokio::sync::Notify,
    injected_spawn_failures: AtomicUsize,
    /// The latest run whose `stop` waited `shutdown_timeout` with jobs still running (0: none).
    overdue_run: AtomicU64,
    /// The run in progress (0: none), readable without the lock.
    live_run: AtomicU64,
    /// Hold times are measured (a clock read per lease end) once someone asked for an
    /// estimate of the wait (`until_free`): until then the release path reads no clock.
    track_holds: AtomicBool,
    me: Weak<Bookkeeper<S>>,
}

impl<S: 'static> LeaseEnds for Bookkeeper<S> {
    fn drained(&self, lease: LeaseId) {
        self.transition(|books, fx| {
            books.release(lease, fx);
        });
    }

    fn overdue(&self, generation: u64) -> bool {
        self.overdue_run.load(SeqCst) >= generation
    }

    fn run_over(&self, generation: u64) -> bool {
        self.live_run.load(SeqCst) != generation
    }
}

impl<S: 'static> Bookkeeper<S> {
    pub(crate) fn new(config: EngineConfig<S>) -> Arc<Self> {
        let s = &config.settings;
        let limits = Limits {
            max_pools: s.max_pools,
            min_pools: s.min_pools,
            max_waiters: s.max_waiters,
        };
        let name = Arc::from(s.name_prefix.as_str());
        Arc::new_cyclic(|me| Self {
            ledger: Mutex::new(Ledger {
                books: Books::new(limits),
                leases: IdMap::default(),
                run: None,
                fx: Vec::new(),
                sweep_pending: None,
                sweep_ask: None,
                hold_mean: None,
                holds: Vec::new(),
            }),
            counters: Arc::new(CounterCells::with_metrics(Metrics::register(
                &name,
                &config.settings.backend.to_string(),
            ))),
            config,
            name,
            settled: tokio::sync::Notify::new(),
            injected_spawn_failures: AtomicUsize::new(0),
            overdue_run: AtomicU64::new(0),
            live_run: AtomicU64::new(0),
            track_holds: AtomicBool::new(false),
            me: me.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Ledger<S>> {
        lock(&self.ledger)
    }

    /// Runs one transition of the books and carries out its effects.
    fn transition<T>(
        &self,
        step: impl FnOnce(
            &mut Books<PoolHandle<S>, Waiter<S>>,
            &mut Vec<Effect<PoolHandle<S>, Waiter<S>>>,
        ) -> T,
    ) -> T {
        let (out, deferred) = {
            let mut ledger = self.lock();
            let mut fx = ledger.take_fx();
            let out = step(&mut ledger.books, &mut fx);
            (out, self.apply(&mut ledger, fx))
        };
        deferred.run(self);
        out
    }

    /// Carries out effects: under the lock what the books' readers must see at once, the rest
    /// collected for after it.
    fn apply(&self, ledger: &mut Ledger<S>, mut fx: Fx<S>) -> Deferred<S> {
        let mut deferred = Deferred {
            host: None,
            tasks: Vec::new(),
            replies: Replies {
                first: None,
                more: Vec::new(),
            },
            held: Vec::new(),
        };
        for effect in fx.drain(..) {
            match effect {
                Effect::CreatePool(pool) => deferred.tasks.push(HostTask::CreatePool(pool)),
                Effect::RetirePool(pool) => deferred.tasks.push(HostTask::RetirePool(pool)),
                Effect::Grant {
                    waiter,
                    lease,
                    pool,
                    handle,
                } => {
                    let core = self.make_lease(ledger, lease, pool, handle, waiter.params.clone());
                    deferred.replies.push((waiter, Ok(core)));
                }
                Effect::Refuse { waiter, error } => deferred.replies.push((waiter, Err(error))),
                Effect::Revoke { lease, why } => {
                    if let Some(shared) = ledger.leases.get(&lease) {
                        shared.revoke(why);
                    }
                }
                Effect::LeaseEnded { lease, had_actor } => {
                    let ended = ledger.leases.remove(&lease);
                    let full = ended.and_then(|l| self.hold_ended(ledger, l.facts.granted_at));
                    if let Some(batch) = full {
                        match ledger.run {
                            Some(_) => deferred.tasks.push(HostTask::RecordHolds(batch)),
                            None => deferred.held = batch,
                        }
                    }
                    if had_actor {
                        deferred.tasks.push(HostTask::StopLeaseActor(lease));
                    }
                }
            }
        }
        ledger.fx = fx;
        if let Some(by) = ledger.sweep_ask.take() {
            deferred.tasks.push(HostTask::SweepLeases { by });
        }
        if !deferred.tasks.is_empty() {
            deferred.host = ledger.run.as_ref().map(|r| r.host.clone());
        }
        deferred
    }

    /// Makes a granted lease's shared state and handle, and records them.
    fn make_lease(
        &self,
        ledger: &mut Ledger<S>,
        lease: LeaseId,
        pool: PoolId,
        queue: PoolHandle<S>,
        params: LeaseParams,
    ) -> LeaseCore<S> {
        let now = Instant::now();
        let soft_expires_at = sweep::later(now, params.lease_for);
        let facts = LeaseFacts {
            granted_at: now,
            manager: Arc::clone(&self.name),
            id: lease,
            pool,
            owner: params.owner,
            soft_expires_at,
            hard_expires_at: sweep::later(soft_expires_at, self.config.settings.lease_grace),
            backend: self.config.settings.backend,
        };
        let ends: Weak<dyn LeaseEnds> = self.me.clone();
        let due = sweep::due(now, facts.hard_expires_at);
        if sweep::must_ask(ledger.sweep_pending, due, now) {
            ledger.sweep_pending = Some(due);
            ledger.sweep_ask = Some(due);
        }
        let generation = ledger.books.run().unwrap_or(0);
        let shared = Arc::new(LeaseShared::new(facts, generation, ends));
        ledger.leases.insert(lease, Arc::clone(&shared));
        LeaseCore::new(shared, queue)
    }

    /// Logs a lease handed out (after the lock: a tracing subscriber is user code).
    fn granted(&self, core: &LeaseCore<S>) {
        let facts = core.facts();
        tracing::debug!(manager = %self.name, lease_id = %facts.id, owner = facts.owner.as_deref().unwrap_or(""), pool = %facts.pool, "lease granted");
    }

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
            .filter_map(|lease| ledger.leases.get(&lease).cloned())
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
