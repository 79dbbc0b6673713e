//! The bookkeeper: the one interpreter of the [books](crate::books).
//!
//! It keeps the books behind the engine's one short mutex, together with what the pure books
//! leave out — each live lease's shared state, each waiter's waker, each pool's job queue (as
//! the books' opaque payloads: the books' table of live leases is the only one), the answers
//! waiting for their waiters — and carries out the books' effects: under the lock what must be
//! seen atomically with the books (a lease's shared state is made or revoked, a waiter's answer
//! left for it, in the same step that the books record it, so no snapshot disagrees with
//! itself), after the lock what wakes someone (a waiter, one `HostWork` message to the
//! supervisor).
//!
//! The fast paths keep their property: an acquire that finds an idle pool and a release with
//! nothing in flight run here, on the caller's thread, and wake no one — new leases' actors are
//! started by a sweep at most once per [`sweep::ACTOR_DELAY`] (see `sweep.rs`), and a lease that
//! ends before its sweep never has one.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

use actix::{Message, Recipient};

use crate::books::{Books, Effect, Limits, WaiterId};
use crate::config::EngineConfig;
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::job::PoolQueue;
use crate::lease_state::{LeaseEnds, LeaseFacts, LeaseShared};
use crate::metrics::Metrics;
use crate::stats::{CounterCells, LeaseId, PoolId};
use crate::sync::{lock, IdMap, Padded};
use crate::threads::WorkerThreads;

mod acquire;
mod estimate;
mod lifecycle;
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

/// A queued acquirer: whom to wake once it is answered, and its request. Its answer is left in
/// the ledger (`Ledger::answers`, by the id the books gave it) for its ticket to take, so
/// queueing allocates nothing.
pub(crate) struct Waiter {
    /// `None` until its ticket is first polled, if it was queued outside a poll.
    waker: Option<Waker>,
    params: LeaseParams,
}

impl Waiter {
    fn new(waker: Option<&Waker>, params: LeaseParams) -> Self {
        Self {
            waker: waker.cloned(),
            params,
        }
    }

    /// The waker to wake now, and the old one (to drop after the lock: a waker is user code).
    fn register(&mut self, waker: &Waker) -> Option<Waker> {
        match &self.waker {
            Some(current) if current.will_wake(waker) => None,
            _ => self.waker.replace(waker.clone()),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Dropped with its waker still in it, it was never answered (the paths that answer or
        // cancel take the waker out): only a panic does that. Its ticket wakes, finds neither
        // an answer nor its place in the queue, and answers `Stopped` — the engine fails
        // closed, never leaving an acquirer waiting for ever.
        if let Some(waker) = self.waker.take() {
            wake_contained(waker);
        }
    }
}

/// Wakes `waker`, containing a panic (a waker is user code): returns its message. A panicking
/// waker must neither keep the wakes after it from happening — their answers would wait unseen —
/// nor escape into whoever released a pool or stopped the manager.
fn wake_contained(waker: Waker) -> Option<String> {
    let payload = catch_unwind(AssertUnwindSafe(move || waker.wake())).err()?;
    let message = crate::job::panic_message(payload.as_ref());
    crate::job::drop_payload(payload);
    Some(message)
}

type PoolHandle<S> = Weak<PoolQueue<S>>;

/// The books as the bookkeeper keeps them.
type LedgerBooks<S> = Books<PoolHandle<S>, Waiter, Arc<LeaseShared>>;

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

type Fx<S> = Vec<Effect<PoolHandle<S>, Waiter, Arc<LeaseShared>>>;

/// An answer waiting for its waiter.
type Answer<S> = Result<LeaseCore<S>, LeaseError>;

/// Answers an emptied table may keep room for (a stop answering 10 000 waiters at once must
/// not hold their table for good).
const KEEP_ANSWERS: usize = 64;

struct Ledger<S: 'static> {
    books: LedgerBooks<S>,
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
    /// Answers given to waiters and not taken yet: each is left here in the step that picks
    /// its waiter, and taken by the waiter's ticket (when polled, or when dropped).
    answers: IdMap<WaiterId, Answer<S>>,
}

impl<S: 'static> Ledger<S> {
    /// The (empty) effects buffer, taken for one transition; `apply` drains it and puts it back.
    fn take_fx(&mut self) -> Fx<S> {
        std::mem::take(&mut self.fx)
    }

    /// Waiter `id`'s answer, if one was left for it.
    fn take_answer(&mut self, id: WaiterId) -> Option<Answer<S>> {
        let answer = self.answers.remove(&id)?;
        if self.answers.is_empty() && self.answers.capacity() > KEEP_ANSWERS {
            self.answers = IdMap::default();
        }
        Some(answer)
    }
}

/// The waiters one transition answered, to wake: most have none or one (a release hands its
/// pool to the next waiter), so the first is kept inline and only more allocate.
#[derive(Default)]
struct Wakes {
    first: Option<Waker>,
    more: Vec<Waker>,
}

/// What must happen once the lock is released.
struct Deferred {
    host: Option<Recipient<HostWork>>,
    tasks: Vec<HostTask>,
    wakes: Wakes,
    /// Hold times to record after the lock (a full batch when there is no host).
    held: Vec<Duration>,
}

impl Deferred {
    /// Leaves `answer` for waiter `id` (under the lock) and wakes it after.
    fn answer<S>(
        &mut self,
        ledger: &mut Ledger<S>,
        id: WaiterId,
        mut waiter: Waiter,
        answer: Answer<S>,
    ) {
        ledger.answers.insert(id, answer);
        if let Some(waker) = waiter.waker.take() {
            match self.wakes.first {
                None => self.wakes.first = Some(waker),
                Some(_) => self.wakes.more.push(waker),
            }
        }
    }

    fn run<S>(self, keeper: &Bookkeeper<S>) {
        // Waiters first: a waiter's wake-up is on the path of a hand-off, the host's work is
        // not. The host's work is sent when `_host` drops — after the wakes, or while unwinding
        // if one of them panics (a waker is user code): a lost `CreatePool` would leave the
        // books waiting for a pool forever. A woken waiter takes its answer from the ledger; one
        // that is gone took it when its ticket dropped (a lease then releases itself).
        let _host = HostSend(self.host, self.tasks);
        if let Some(first) = self.wakes.first {
            for waker in std::iter::once(first).chain(self.wakes.more) {
                if let Some(panic) = wake_contained(waker) {
                    tracing::error!(manager = %keeper.name, panic = %panic, "a waiter's waker panicked; the panic was contained");
                }
            }
        }
        // Last: a recorder is user code, and a waiter's wake-up must not wait on it.
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
    ledger: Padded<Mutex<Ledger<S>>>,
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
            ledger: Padded(Mutex::new(Ledger {
                books: Books::new(limits),
                run: None,
                fx: Vec::new(),
                sweep_pending: None,
                sweep_ask: None,
                hold_mean: None,
                holds: Vec::new(),
                answers: IdMap::default(),
            })),
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
        lock(&self.ledger.0)
    }

    /// Runs one transition of the books and carries out its effects.
    fn transition<T>(&self, step: impl FnOnce(&mut LedgerBooks<S>, &mut Fx<S>) -> T) -> T {
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
    fn apply(&self, ledger: &mut Ledger<S>, mut fx: Fx<S>) -> Deferred {
        let mut deferred = Deferred {
            host: None,
            tasks: Vec::new(),
            wakes: Wakes::default(),
            held: Vec::new(),
        };
        for effect in fx.drain(..) {
            match effect {
                Effect::CreatePool(pool) => deferred.tasks.push(HostTask::CreatePool(pool)),
                Effect::RetirePool(pool) => deferred.tasks.push(HostTask::RetirePool(pool)),
                Effect::Grant {
                    waiter_id,
                    mut waiter,
                    lease,
                    pool,
                    handle,
                } => {
                    let params = LeaseParams {
                        owner: waiter.params.owner.take(),
                        lease_for: waiter.params.lease_for,
                    };
                    let core = self.make_lease(ledger, (lease, pool), handle, params);
                    deferred.answer(ledger, waiter_id, waiter, Ok(core));
                }
                Effect::Refuse {
                    waiter_id,
                    waiter,
                    error,
                } => deferred.answer(ledger, waiter_id, waiter, Err(error)),
                Effect::Revoke { why, payload, .. } => {
                    if let Some(shared) = payload {
                        shared.revoke(why);
                    }
                }
                Effect::LeaseEnded {
                    lease,
                    had_actor,
                    payload,
                } => {
                    let full = payload.and_then(|l| self.hold_ended(ledger, l.facts.granted_at));
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

    /// Makes a granted lease's shared state and handle, and attaches the state to the lease in
    /// the books.
    fn make_lease(
        &self,
        ledger: &mut Ledger<S>,
        (lease, pool): (LeaseId, PoolId),
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
        ledger.books.attach(lease, Arc::clone(&shared));
        LeaseCore::new(shared, queue)
    }

    /// Logs a lease handed out (after the lock: a tracing subscriber is user code).
    fn granted(&self, core: &LeaseCore<S>) {
        let facts = core.facts();
        tracing::debug!(manager = %self.name, lease_id = %facts.id, owner = facts.owner.as_deref().unwrap_or(""), pool = %facts.pool, "lease granted");
    }
}
