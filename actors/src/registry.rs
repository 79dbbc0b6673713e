//! The supervisor's books: pools in service, the idle set, the FIFO waiter queue and the lease
//! table, behind one mutex.
//!
//! The `ManagerActor` owns this state, but lease handles read and write it directly so that an
//! acquire that finds an idle pool never waits for a round trip to the host thread; the host
//! learns of the new lease asynchronously (`SpawnLease`). Every decision about a pool — hand it
//! to the first waiter, park it as idle, or retire it — is taken under this lock, which is what
//! keeps waiters first-come first-served and `available + leased == total <= max_pools`.
//!
//! Nothing that can take the lock again (dropping a lease handle, answering a waiter) happens
//! while it is held: such work is collected in [`Effects`] and applied after unlocking.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::dev::channel;
use actix::Addr;
use tokio::sync::oneshot;

use crate::config::EngineConfig;
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::lease::{LeaseActor, LeaseShared, Revocation};
use crate::manager::ManagerActor;
use crate::messages::{CreatePools, RetirePool, SpawnLease};
use crate::pool::PoolQueue;
use crate::stats::{Backend, CounterCells, LeaseId, LeaseInfo, PoolId, Stats};
use crate::threads::WorkerThreads;

/// What an acquirer asks for.
#[derive(Debug, Clone)]
pub struct LeaseParams {
    /// Label for logs and stats.
    pub owner: Option<String>,
    /// Soft lifetime.
    pub lease_for: Duration,
}

/// How long an acquirer is willing to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Queue until served (or until the manager stops).
    Forever,
    /// Queue at most this long.
    Timeout(Duration),
    /// Take a free pool (or one that can be created without waiting for a release), or fail.
    NoWait,
}

/// One pool as the books know it. Plain data: dropping it does nothing.
pub(crate) struct PoolSlot<S: 'static> {
    pub(crate) id: PoolId,
    pub(crate) generation: u64,
    pub(crate) queue: Weak<PoolQueue<S>>,
}

enum PoolUse {
    Idle,
    Leased(LeaseId),
}

/// A live lease as the books know it: its shared state and the pool it holds. Removing the
/// entry (under the lock) is what ends the lease, so it ends exactly once whoever ends it.
struct LeaseEntry<S: 'static> {
    shared: Arc<LeaseShared>,
    slot: PoolSlot<S>,
    actor: actix::WeakAddr<LeaseActor<S>>,
}

type WaiterReply<S> = oneshot::Sender<Result<LeaseCore<S>, LeaseError>>;

struct Waiter<S: 'static> {
    params: LeaseParams,
    reply: WaiterReply<S>,
}

/// The host of one manager run, as the books see it.
pub(crate) struct Run<S: 'static> {
    pub(crate) generation: u64,
    pub(crate) manager: Addr<ManagerActor<S>>,
    pub(crate) timers: tokio::runtime::Handle,
    pub(crate) system: actix_rt::System,
    pub(crate) threads: Arc<WorkerThreads>,
}

impl<S: 'static> Clone for Run<S> {
    fn clone(&self) -> Self {
        Self {
            generation: self.generation,
            manager: self.manager.clone(),
            timers: self.timers.clone(),
            system: self.system.clone(),
            threads: Arc::clone(&self.threads),
        }
    }
}

struct Books<S: 'static> {
    run: Option<Run<S>>,
    next_lease: u64,
    next_pool: u64,
    next_waiter: u64,
    pools: HashMap<PoolId, PoolUse>,
    idle: VecDeque<PoolSlot<S>>,
    creating: usize,
    /// Keyed by arrival number: first entry = longest waiting. O(log n) removal on cancel.
    waiters: BTreeMap<u64, Waiter<S>>,
    leases: BTreeMap<LeaseId, LeaseEntry<S>>,
    /// Pools spawned whose first worker has not built its state yet. Never handed out.
    starting: Vec<PoolSlot<S>>,
    /// Pools with no live worker (their pool actor is rebuilding them). Never handed out.
    unhealthy: HashSet<PoolId>,
    /// Unhealthy pools that are not leased: out of `pools`, waiting to be healthy again.
    parked: Vec<PoolSlot<S>>,
    /// Why the last pool went unhealthy: what acquirers are told when no pool can serve.
    last_failure: Option<String>,
    desired: usize,
}

/// The shared books of one manager (across stop/start).
pub struct Registry<S: 'static> {
    books: Mutex<Books<S>>,
    pub(crate) config: Arc<EngineConfig<S>>,
    /// The manager's name (`name_prefix`), shared by every lease for its log fields.
    pub(crate) name: Arc<str>,
    pub(crate) counters: Arc<CounterCells>,
    /// A starting pool became ready or failed, or the run ended (what `start` waits for).
    pub(crate) settled: tokio::sync::Notify,
    /// Fault injection: this many coming worker-thread spawns fail.
    injected_spawn_failures: AtomicUsize,
}

/// Where the pools of a starting run stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartOutcome {
    /// Some pool is still starting.
    Pending,
    /// A pool serves, or no pool was asked for.
    Serving,
    /// Every pool failed to build a worker; the last failure.
    Failed(String),
    /// The run ended while starting.
    Ended,
}

/// Work decided under the lock and done after it is released.
pub struct Effects<S: 'static> {
    manager: Option<Addr<ManagerActor<S>>>,
    spawn: Vec<SpawnLease<S>>,
    deliver: Vec<(WaiterReply<S>, LeaseCore<S>)>,
    fail: Vec<(WaiterReply<S>, LeaseError)>,
    create: usize,
    retire: Vec<PoolId>,
}

impl<S: 'static> Effects<S> {
    fn new(manager: Option<Addr<ManagerActor<S>>>) -> Self {
        Self {
            manager,
            spawn: Vec::new(),
            deliver: Vec::new(),
            fail: Vec::new(),
            create: 0,
            retire: Vec::new(),
        }
    }

    /// Pools the manager must create; the manager takes these itself instead of messaging.
    pub(crate) fn take_create(&mut self) -> usize {
        std::mem::take(&mut self.create)
    }

    pub(crate) fn take_retire(&mut self) -> Vec<PoolId> {
        std::mem::take(&mut self.retire)
    }

    /// Carries out what was decided under the lock.
    pub fn apply(self) {
        if let Some(manager) = &self.manager {
            for spawn in self.spawn {
                manager.do_send(spawn);
            }
            if self.create > 0 {
                manager.do_send(CreatePools(self.create));
            }
            for id in self.retire {
                manager.do_send(RetirePool(id));
            }
        }
        for (reply, lease) in self.deliver {
            // A waiter that vanished after being picked gets nothing; dropping the lease
            // releases it, and its pool goes to the next waiter.
            let _ = reply.send(Ok(lease));
        }
        for (reply, error) in self.fail {
            let _ = reply.send(Err(error));
        }
    }
}

/// The outcome of the synchronous part of an acquire.
pub enum Attempt<S: 'static> {
    Ready(LeaseCore<S>, Effects<S>),
    Queued(WaitTicket<S>, Effects<S>),
}

impl<S: 'static> Registry<S> {
    pub(crate) fn new(config: Arc<EngineConfig<S>>) -> Arc<Self> {
        let desired = config.min_pools;
        let name = Arc::from(config.name_prefix.as_str());
        Arc::new(Self {
            books: Mutex::new(Books {
                run: None,
                next_lease: 1,
                next_pool: 0,
                next_waiter: 0,
                pools: HashMap::new(),
                idle: VecDeque::new(),
                creating: 0,
                waiters: BTreeMap::new(),
                leases: BTreeMap::new(),
                starting: Vec::new(),
                unhealthy: HashSet::new(),
                parked: Vec::new(),
                last_failure: None,
                desired,
            }),
            config,
            name,
            counters: Arc::new(CounterCells::default()),
            settled: tokio::sync::Notify::new(),
            injected_spawn_failures: AtomicUsize::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Books<S>> {
        // Nothing under this lock calls user code, so a poisoned lock still holds sane books.
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn current_run(&self) -> Option<Run<S>> {
        self.lock().run.clone()
    }

    pub(crate) fn current_generation(&self) -> Option<u64> {
        self.lock().run.as_ref().map(|r| r.generation)
    }

    /// Records a freshly started host. Pools come after, through `pool_spawned`.
    pub(crate) fn begin_run(&self, run: Run<S>) {
        let mut books = self.lock();
        books.run = Some(run);
        books.pools.clear();
        books.idle.clear();
        books.starting.clear();
        books.parked.clear();
        books.unhealthy.clear();
        books.last_failure = None;
        books.creating = 0;
        books.desired = self.config.min_pools;
    }

    /// Closes the books for `stop`: revokes every lease, hands back the waiters to be answered
    /// with `Stopped`, and returns the run to shut down (None if not running).
    pub(crate) fn begin_stop(&self) -> Option<(Run<S>, Vec<WaiterReply<S>>)> {
        let closed = {
            let mut books = self.lock();
            let run = books.run.take()?;
            self.close(&mut books, run)
        };
        self.settled.notify_waiters();
        closed
    }

    /// Closes the books of run `generation` if it is still the current one (the supervisor of
    /// that run died): like `begin_stop`, and the waiters are answered here.
    pub(crate) fn close_run(&self, generation: u64) -> bool {
        let closed = {
            let mut books = self.lock();
            let Some(run) = books.run.take_if(|r| r.generation == generation) else {
                return false;
            };
            self.close(&mut books, run)
        };
        if let Some((_, waiters)) = closed {
            for waiter in waiters {
                let _ = waiter.send(Err(LeaseError::Stopped));
            }
        }
        self.settled.notify_waiters();
        true
    }

    fn close(&self, books: &mut Books<S>, run: Run<S>) -> Option<(Run<S>, Vec<WaiterReply<S>>)> {
        let waiters = std::mem::take(&mut books.waiters)
            .into_values()
            .map(|w| w.reply)
            .collect();
        for entry in books.leases.values() {
            if entry.shared.revoke(Revocation::Stopped) {
                CounterCells::bump(&self.counters.revoked);
            }
        }
        books.leases.clear();
        books.pools.clear();
        books.idle.clear();
        books.starting.clear();
        books.unhealthy.clear();
        books.parked.clear();
        books.creating = 0;
        Some((run, waiters))
    }

    pub(crate) fn next_pool_id(&self) -> PoolId {
        let mut books = self.lock();
        let id = PoolId(books.next_pool);
        books.next_pool += 1;
        id
    }

    /// The synchronous part of an acquire: take an idle pool when no one is queued ahead,
    /// otherwise queue (growing capacity if `max_pools` allows), or refuse.
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        params: LeaseParams,
        mode: WaitMode,
    ) -> Result<Attempt<S>, LeaseError> {
        let mut books = self.lock();
        let Some(run) = books.run.clone() else {
            return Err(LeaseError::NotStarted);
        };
        let mut effects = Effects::new(Some(run.manager.clone()));
        if books.waiters.is_empty() {
            if let Some(slot) = books.idle.pop_front() {
                let (lease, spawn) = self.make_lease(&mut books, slot, params);
                CounterCells::bump(&self.counters.acquired);
                effects.spawn.push(spawn);
                return Ok(Attempt::Ready(lease, effects));
            }
        }
        if let Some(failure) = unservable(&books) {
            // Waiting would be waiting for a factory that keeps failing: say why, like a
            // connection pool whose connect fails.
            tracing::debug!(manager = %self.name, owner = params.owner.as_deref().unwrap_or(""), reason = %failure, "acquire refused: no pool can serve");
            return Err(LeaseError::NoHealthyPool(failure));
        }
        // Pools that will exist without anyone releasing: those being created or starting, plus
        // the room left under max_pools. Waiters ahead of us are served from those first.
        let coming = books.creating + books.starting.len();
        let growth = coming
            + self
                .config
                .max_pools
                .saturating_sub(books.pools.len() + books.parked.len() + coming);
        let served_by_growth = books.waiters.len() < growth;
        let refuse = match mode {
            WaitMode::NoWait => !served_by_growth,
            _ => !served_by_growth && books.waiters.len() >= self.config.max_waiters,
        };
        if refuse {
            CounterCells::bump(&self.counters.rejected);
            let reason = if mode == WaitMode::NoWait {
                "no_wait and no pool free"
            } else {
                "no pool free and the waiter queue is full (max_waiters)"
            };
            tracing::debug!(manager = %self.name, owner = params.owner.as_deref().unwrap_or(""), reason, "acquire refused: unavailable");
            return Err(LeaseError::Unavailable);
        }
        let id = books.next_waiter;
        books.next_waiter += 1;
        let (reply, answer) = oneshot::channel();
        books.waiters.insert(id, Waiter { params, reply });
        self.replenish(&mut books, &mut effects);
        let limit = match mode {
            WaitMode::Timeout(d) => Some(d),
            WaitMode::Forever | WaitMode::NoWait => None,
        };
        let ticket = WaitTicket {
            id,
            answered: false,
            answer,
            registry: Arc::clone(self),
            timers: run.timers,
            limit,
            sleep: None,
            expired: false,
        };
        Ok(Attempt::Queued(ticket, effects))
    }

    /// Removes a waiter that gave up; `None` if it was already served or answered.
    fn cancel_waiter(&self, id: u64) -> Option<Waiter<S>> {
        self.lock().waiters.remove(&id)
    }

    /// A pool the manager just spawned: it is starting until a worker is ready. False if the
    /// pool belongs to a run that has ended (the manager then stops it at once).
    pub(crate) fn pool_spawned(&self, slot: PoolSlot<S>) -> bool {
        let mut books = self.lock();
        books.creating = books.creating.saturating_sub(1);
        if books.run.as_ref().map(|r| r.generation) != Some(slot.generation) {
            return false;
        }
        books.starting.push(slot);
        true
    }

    /// Ends a lease: gives its pool to the next waiter, parks it, or — if the lease was
    /// revoked or the pool is above target — retires it. Idempotent: only the first call for a
    /// lease finds it in the table.
    pub(crate) fn finish_lease(self: &Arc<Self>, id: LeaseId) {
        let effects = {
            let mut books = self.lock();
            let Some(entry) = books.leases.remove(&id) else {
                return;
            };
            let mut effects = Effects::new(books.run.as_ref().map(|r| r.manager.clone()));
            if entry.shared.is_revoked() {
                retire(&mut books, entry.slot.id, &mut effects);
                self.replenish(&mut books, &mut effects);
            } else {
                CounterCells::bump(&self.counters.released);
                self.route_pool(&mut books, entry.slot, &mut effects);
            }
            effects
        };
        effects.apply();
    }

    /// Revokes a live lease and retires its pool, in one step under the lock (so that no
    /// snapshot shows the revocation counted but the lease still in the table). False if the
    /// lease had already ended.
    pub(crate) fn revoke_lease(self: &Arc<Self>, id: LeaseId, why: Revocation) -> bool {
        let effects = {
            let mut books = self.lock();
            let Some(entry) = books.leases.remove(&id) else {
                return false;
            };
            if entry.shared.revoke(why) {
                CounterCells::bump(&self.counters.revoked);
            }
            let mut effects = Effects::new(books.run.as_ref().map(|r| r.manager.clone()));
            retire(&mut books, entry.slot.id, &mut effects);
            self.replenish(&mut books, &mut effects);
            effects
        };
        effects.apply();
        true
    }

    /// The pool has no live worker: take it out of service until it is healthy again, and
    /// remember why. If then no pool at all can serve, the waiters are told why instead of
    /// waiting for a factory that keeps failing.
    pub(crate) fn pool_unhealthy(self: &Arc<Self>, id: PoolId, failure: String) -> Effects<S> {
        let mut books = self.lock();
        let mut effects = Effects::new(books.run.as_ref().map(|r| r.manager.clone()));
        if books.run.is_none() {
            return effects;
        }
        if let Some(at) = books.starting.iter().position(|s| s.id == id) {
            let slot = books.starting.swap_remove(at);
            books.parked.push(slot);
        } else if let Some(at) = books.idle.iter().position(|s| s.id == id) {
            if let Some(slot) = books.idle.remove(at) {
                books.pools.remove(&id);
                books.parked.push(slot);
            }
        } else if !books.pools.contains_key(&id) && !books.parked.iter().any(|s| s.id == id) {
            return effects; // retired or unknown: nothing to track
        }
        books.unhealthy.insert(id);
        books.last_failure = Some(failure);
        if let Some(failure) = unservable(&books) {
            for (_, waiter) in std::mem::take(&mut books.waiters) {
                effects
                    .fail
                    .push((waiter.reply, LeaseError::NoHealthyPool(failure.clone())));
            }
        }
        drop(books);
        self.settled.notify_waiters();
        effects
    }

    /// A worker of the pool built its state: a starting or parked pool goes to the first waiter
    /// or the idle set.
    pub(crate) fn pool_ready(self: &Arc<Self>, id: PoolId) -> Effects<S> {
        let mut books = self.lock();
        let mut effects = Effects::new(books.run.as_ref().map(|r| r.manager.clone()));
        books.unhealthy.remove(&id);
        let slot = if let Some(at) = books.starting.iter().position(|s| s.id == id) {
            Some(books.starting.swap_remove(at))
        } else {
            let at = books.parked.iter().position(|s| s.id == id);
            at.map(|at| books.parked.swap_remove(at))
        };
        if let Some(slot) = slot {
            books.pools.insert(slot.id, PoolUse::Idle);
            self.route_pool(&mut books, slot, &mut effects);
        }
        drop(books);
        self.settled.notify_waiters();
        effects
    }

    /// Where the pools of the current run stand, for `start`.
    pub(crate) fn start_outcome(&self) -> StartOutcome {
        let books = self.lock();
        if books.run.is_none() {
            StartOutcome::Ended
        } else if !books.starting.is_empty() || books.creating > 0 {
            StartOutcome::Pending
        } else {
            match unservable(&books) {
                Some(failure) => StartOutcome::Failed(failure),
                None => StartOutcome::Serving,
            }
        }
    }

    /// Entries in every collection of the books (for leak tests): bounded by `max_pools`, the
    /// live leases and the queued waiters, whatever ran before.
    pub(crate) fn entries(&self) -> usize {
        let b = self.lock();
        b.pools.len()
            + b.idle.len()
            + b.starting.len()
            + b.parked.len()
            + b.unhealthy.len()
            + b.waiters.len()
            + b.leases.len()
    }

    /// Fault injection: the next `n` worker-thread spawns fail.
    pub(crate) fn inject_spawn_failures(&self, n: usize) {
        self.injected_spawn_failures.store(n, Relaxed);
    }

    /// Whether this spawn is to fail (consumes one injected failure).
    pub(crate) fn take_injected_spawn_failure(&self) -> bool {
        self.injected_spawn_failures
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The pool's actor crashed: take the pool out of the books (revoking the lease holding it,
    /// whose jobs then fail with `WorkerLost`) and build capacity back.
    pub(crate) fn pool_died(self: &Arc<Self>, id: PoolId) -> Effects<S> {
        let mut books = self.lock();
        let mut effects = Effects::new(books.run.as_ref().map(|r| r.manager.clone()));
        if books.run.is_none() {
            return effects;
        }
        books.unhealthy.remove(&id);
        books.parked.retain(|s| s.id != id);
        books.starting.retain(|s| s.id != id);
        books.idle.retain(|s| s.id != id);
        if let Some(PoolUse::Leased(lease)) = books.pools.remove(&id) {
            if let Some(entry) = books.leases.remove(&lease) {
                if entry.shared.revoke(Revocation::Lost) {
                    CounterCells::bump(&self.counters.revoked);
                }
                tracing::warn!(manager = %self.config.name_prefix, lease_id = %lease, pool = %id, "pool died under its lease; lease revoked");
            }
        }
        self.replenish(&mut books, &mut effects);
        drop(books);
        self.settled.notify_waiters();
        effects
    }

    /// The lease's actor, for fault injection.
    pub(crate) fn lease_actor(&self, id: LeaseId) -> Option<actix::WeakAddr<LeaseActor<S>>> {
        self.lock().leases.get(&id).map(|e| e.actor.clone())
    }

    /// Whether the lease is still in the table (not yet finished).
    pub(crate) fn is_live(&self, id: LeaseId) -> bool {
        self.lock().leases.contains_key(&id)
    }

    /// Sets the sizing target; grows toward it and retires idle pools above it.
    pub(crate) fn set_desired(self: &Arc<Self>, desired: usize) -> Effects<S> {
        let mut books = self.lock();
        let mut effects = Effects::new(books.run.as_ref().map(|r| r.manager.clone()));
        if books.run.is_none() {
            return effects;
        }
        books.desired = desired;
        while books.pools.len() > desired {
            let Some(slot) = books.idle.pop_back() else {
                break;
            };
            retire(&mut books, slot.id, &mut effects);
        }
        self.replenish(&mut books, &mut effects);
        effects
    }

    fn route_pool(self: &Arc<Self>, books: &mut Books<S>, slot: PoolSlot<S>, fx: &mut Effects<S>) {
        if books.unhealthy.contains(&slot.id) {
            books.pools.remove(&slot.id);
            books.parked.push(slot);
            self.replenish(books, fx);
        } else if let Some((_, waiter)) = books.waiters.pop_first() {
            let (lease, spawn) = self.make_lease(books, slot, waiter.params);
            CounterCells::bump(&self.counters.acquired);
            CounterCells::bump(&self.counters.acquired_after_wait);
            fx.spawn.push(spawn);
            fx.deliver.push((waiter.reply, lease));
        } else if books.pools.len() > books.desired {
            tracing::debug!(manager = %self.config.name_prefix, pool = %slot.id, "pool above the sizing target; retiring it");
            retire(books, slot.id, fx);
        } else {
            books.pools.insert(slot.id, PoolUse::Idle);
            books.idle.push_back(slot);
        }
    }

    /// Asks for pools so that every waiter and the sizing target are covered, within max_pools
    /// (unhealthy parked pools count against max_pools: they come back when rebuilt).
    fn replenish(&self, books: &mut Books<S>, fx: &mut Effects<S>) {
        let leased = books.pools.len() - books.idle.len();
        let need = (leased + books.waiters.len())
            .max(books.desired)
            .min(self.config.max_pools);
        let have = books.pools.len() + books.parked.len() + books.starting.len() + books.creating;
        let room = self.config.max_pools.saturating_sub(have);
        let want = need.saturating_sub(have).min(room);
        books.creating += want;
        fx.create += want;
    }

    fn make_lease(
        self: &Arc<Self>,
        books: &mut Books<S>,
        slot: PoolSlot<S>,
        params: LeaseParams,
    ) -> (LeaseCore<S>, SpawnLease<S>) {
        let id = LeaseId(books.next_lease);
        books.next_lease += 1;
        let now = Instant::now();
        let soft = later(now, params.lease_for);
        let hard = later(soft, self.config.lease_grace);
        let (sender, mailbox) = channel::channel::<LeaseActor<S>>(16);
        let actor = Addr::new(sender);
        let actor_weak = actor.downgrade();
        let shared = Arc::new(LeaseShared::new(
            Arc::clone(&self.name),
            id,
            slot.id,
            params.owner,
            soft,
            hard,
            actor.downgrade().recipient(),
        ));
        books.pools.insert(slot.id, PoolUse::Leased(id));
        tracing::debug!(manager = %self.config.name_prefix,
            lease_id = %id,
            owner = shared.owner.as_deref().unwrap_or(""),
            pool = %slot.id,
            "lease granted"
        );
        let core = LeaseCore::new(
            Arc::clone(&shared),
            actor,
            slot.queue.clone(),
            Arc::clone(self),
        );
        books.leases.insert(
            id,
            LeaseEntry {
                shared: Arc::clone(&shared),
                slot,
                actor: actor_weak,
            },
        );
        (
            core,
            SpawnLease {
                mailbox,
                lease: shared,
            },
        )
    }

    /// A consistent snapshot, taken under the lock.
    pub(crate) fn stats(&self, backend: Backend) -> Stats {
        let books = self.lock();
        // Retiring = pools out of the books whose threads still run; derived, so that nothing
        // has to prune a list of retired pools.
        let retiring = books.run.as_ref().map_or(0, |run| {
            run.threads
                .pools_with_threads()
                .into_iter()
                .filter(|id| {
                    !books.pools.contains_key(id)
                        && !books.parked.iter().any(|s| s.id == *id)
                        && !books.starting.iter().any(|s| s.id == *id)
                })
                .count()
        });
        debug_assert!(
            books.pools.values().all(|u| match u {
                PoolUse::Idle => true,
                PoolUse::Leased(id) => books.leases.contains_key(id),
            }),
            "a leased pool has no lease in the table"
        );
        let now = Instant::now();
        let leases = books
            .leases
            .values()
            .map(|e| &e.shared)
            .map(|l| LeaseInfo {
                id: l.id,
                owner: l.owner.clone(),
                until_soft_expiry: l.soft_expires_at.saturating_duration_since(now),
                until_hard_expiry: l.hard_expires_at.saturating_duration_since(now),
                in_flight: l.in_flight(),
                draining: l.is_draining(),
                pool: l.pool,
            })
            .collect();
        Stats {
            backend,
            desired: books.desired,
            max_pools: self.config.max_pools,
            min_pools: self.config.min_pools,
            available: books.idle.len(),
            leased: books.leases.len(),
            total: books.pools.len(),
            workers_per_pool: self.config.workers_per_pool,
            waiting: books.waiters.len(),
            retiring,
            unhealthy: books.unhealthy.len(),
            starting: books.starting.len(),
            leases,
            counters: self.counters.snapshot(),
        }
    }

    /// Worker threads alive in the current run (0 when stopped).
    pub(crate) fn live_threads(&self) -> usize {
        self.lock().run.as_ref().map_or(0, |r| r.threads.live())
    }
}

/// Takes a pool out of service: out of every set of the books (it counts as retiring while its
/// threads run), and its actor told to stop.
fn retire<S: 'static>(books: &mut Books<S>, id: PoolId, fx: &mut Effects<S>) {
    books.pools.remove(&id);
    books.unhealthy.remove(&id);
    books.parked.retain(|s| s.id != id);
    books.starting.retain(|s| s.id != id);
    fx.retire.push(id);
}

/// The last failure, when no pool can serve: none in service is healthy, none is starting or
/// being created, and at least one is unhealthy. `None` otherwise.
fn unservable<S: 'static>(books: &Books<S>) -> Option<String> {
    let serving = books.pools.keys().any(|id| !books.unhealthy.contains(id));
    if serving || !books.starting.is_empty() || books.creating > 0 || books.unhealthy.is_empty() {
        return None;
    }
    books.last_failure.clone()
}

fn later(from: Instant, by: Duration) -> Instant {
    // A lifetime too long to represent is as good as forever (a century); never panic on user
    // input. (A clock that cannot add a century either cannot happen; `from` keeps it total.)
    const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    from.checked_add(by)
        .or_else(|| from.checked_add(FOREVER))
        .unwrap_or(from)
}

/// A queued acquirer's place in line: poll it until it yields a lease or an error. Dropping it
/// leaves the queue. It is polled in place (no boxed future), so a waiter costs little memory.
pub struct WaitTicket<S: 'static> {
    id: u64,
    /// Set once an answer was taken, so Drop need not look for us in the queue.
    answered: bool,
    answer: oneshot::Receiver<Result<LeaseCore<S>, LeaseError>>,
    registry: Arc<Registry<S>>,
    timers: tokio::runtime::Handle,
    limit: Option<Duration>,
    /// Created on first poll of a timed wait; boxed so untimed waiters do not carry it.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer fired but a pool was handed to us at that moment: only the answer is awaited.
    expired: bool,
}

impl<S: 'static> WaitTicket<S> {
    /// Polls for the answer, enforcing the wait limit.
    pub fn poll_wait(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<LeaseCore<S>, LeaseError>> {
        if self.answered {
            return Poll::Ready(Err(LeaseError::Stopped));
        }
        // The receiver is polled first: an answer that raced with the timer wins.
        if let Poll::Ready(answer) = Pin::new(&mut self.answer).poll(cx) {
            self.answered = true;
            return Poll::Ready(answer.unwrap_or(Err(LeaseError::Stopped)));
        }
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        if self.expired {
            return Poll::Pending;
        }
        let timers = &self.timers;
        let sleep = self.sleep.get_or_insert_with(|| {
            // The timer lives on the host runtime, so waiting works from any executor or thread.
            let _guard = timers.enter();
            Box::pin(tokio::time::sleep(limit))
        });
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if let Some(waiter) = self.registry.cancel_waiter(self.id) {
            self.answered = true;
            self.registry.counters.timed_out.fetch_add(1, Relaxed);
            tracing::debug!(manager = %self.registry.name, owner = waiter.params.owner.as_deref().unwrap_or(""), waited = ?limit, "acquire refused: timed out waiting for a pool");
            return Poll::Ready(Err(LeaseError::Timeout(limit)));
        }
        // Picked at the last moment: the answer is on its way; the receiver is registered.
        self.expired = true;
        Poll::Pending
    }
}

impl<S: 'static> Drop for WaitTicket<S> {
    fn drop(&mut self) {
        // Leave the queue before the receiver goes, so no pool is handed to a dead waiter;
        // a lease already sent to us is dropped with the receiver and so released.
        if !self.answered {
            // (A waiter removed here is dropped here, outside the lock.)
            drop(self.registry.cancel_waiter(self.id));
        }
    }
}
