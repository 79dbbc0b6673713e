//! The books: who holds which pool, who waits for one, and what should happen next — as a pure
//! state machine.
//!
//! Plain data and transitions, no actix, no channels, no timers: each transition takes an event
//! (an acquire, a release, a pool that became ready or died, a new sizing target, a stop) and
//! pushes the [`Effect`]s that must follow (create a pool, retire one, hand a lease to a waiter,
//! refuse one, revoke a lease). The bookkeeper (`bookkeeper/`) is the one interpreter that
//! carries them out. The books are generic over what the interpreter attaches to a pool (`P`, its
//! job queue) and to a waiter (`W`, its reply channel), so their unit tests use plain values.
//!
//! Every invariant of the engine lives here and is checked by [`Books::check`]:
//! `available + leased == total <= max_pools` (pools out of service — creating, starting,
//! unhealthy — counted apart and within `max_pools` too), waiters are served first come first
//! served, no waiter waits while a pool is idle, a retired pool is never handed out again.

use std::collections::{BTreeSet, VecDeque};

use crate::sync::IdMap;

mod check;
mod decide;
#[cfg(test)]
mod properties;
mod queue;
#[cfg(test)]
mod tests;
mod types;

use crate::error::LeaseError;
use crate::lease_state::Revocation;
use crate::stats::{LeaseId, PoolId};
use queue::WaitQueue;

pub use types::WaitMode;
pub(crate) use types::{Acquired, BookCounts, BookStats, Effect, Limits, StartOutcome, WaiterId};

/// A spawned pool's state. (Pools asked for but not spawned yet are in `Books::creating`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PoolState {
    /// No worker has built its state yet.
    Starting,
    Idle,
    Leased(LeaseId),
    /// Unhealthy and not leased: waits for a worker to build its state again.
    Parked,
}

const STARTING: usize = 0;
const IDLE: usize = 1;
const LEASED: usize = 2;
const PARKED: usize = 3;

impl PoolState {
    /// Its index in `Books::by_state`.
    fn slot(self) -> usize {
        match self {
            PoolState::Starting => STARTING,
            PoolState::Idle => IDLE,
            PoolState::Leased(_) => LEASED,
            PoolState::Parked => PARKED,
        }
    }
}

#[derive(Debug)]
struct Pool<P> {
    state: PoolState,
    /// Only for `Leased`: the pool lost every worker while leased.
    broken_under_lease: bool,
    handle: P,
}

#[derive(Debug)]
struct Lease<L> {
    pool: PoolId,
    actor_started: bool,
    /// What the interpreter keeps for the lease (its shared state), attached right after the
    /// transition that made it: one table of live leases, not one here and one there.
    payload: Option<L>,
}

/// The books of one manager (across stop/start: ids and counts carry on). `L` is what the
/// interpreter attaches to a live lease (see [`Books::attach`]).
#[derive(Debug)]
pub(crate) struct Books<P, W, L = ()> {
    limits: Limits,
    run: Option<u64>,
    desired: usize,
    next_pool: u64,
    next_lease: u64,
    next_waiter: WaiterId,
    /// Pools asked of the supervisor, not spawned yet.
    creating: BTreeSet<PoolId>,
    pools: IdMap<PoolId, Pool<P>>,
    /// How many pools are in each state (indexed by `PoolState::slot`).
    by_state: [usize; 4],
    /// Idle pools, first to be handed out first.
    idle: VecDeque<PoolId>,
    waiters: WaitQueue<W>,
    /// Waiters admitted only because a pool being created could serve them (`no_wait`, or
    /// beyond `max_waiters`): they may not wait for a release, so they are refused if that
    /// pool fails.
    growth_only: BTreeSet<WaiterId>,
    leases: IdMap<LeaseId, Lease<L>>,
    /// Pools that are `Parked` or broken under a lease.
    unhealthy: usize,
    last_failure: Option<String>,
    /// Leases whose actor has not been started yet (when the supervisor sweeps them is the
    /// bookkeeper's choice: see `bookkeeper::sweep`).
    unswept: Vec<LeaseId>,
    counts: BookCounts,
}

type Effects<P, W, L> = Vec<Effect<P, W, L>>;

impl<P: Clone, W, L: Clone> Books<P, W, L> {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            run: None,
            desired: limits.min_pools,
            next_pool: 0,
            next_lease: 1,
            next_waiter: 0,
            creating: BTreeSet::new(),
            pools: IdMap::default(),
            by_state: [0; 4],
            idle: VecDeque::new(),
            waiters: WaitQueue::default(),
            growth_only: BTreeSet::new(),
            leases: IdMap::default(),
            unhealthy: 0,
            last_failure: None,
            unswept: Vec::new(),
            counts: BookCounts::default(),
        }
    }

    /// The current run, while started.
    pub(crate) fn run(&self) -> Option<u64> {
        self.run
    }

    /// A run begins: the books open empty; pools come from [`set_desired`](Self::set_desired).
    pub(crate) fn begin_run(&mut self, generation: u64) {
        self.run = Some(generation);
        self.desired = self.limits.min_pools;
        self.last_failure = None;
    }

    /// The run ends (stop, or its supervisor died): every waiter is refused `Stopped`, every
    /// lease revoked `Stopped`; the pools are forgotten (the supervisor stops them all).
    pub(crate) fn end_run(&mut self, fx: &mut Effects<P, W, L>) -> bool {
        if self.run.take().is_none() {
            return false;
        }
        for (waiter_id, waiter) in self.waiters.take_all() {
            fx.push(Effect::Refuse {
                waiter_id,
                waiter,
                error: LeaseError::Stopped,
            });
        }
        self.growth_only.clear();
        for (lease, entry) in std::mem::take(&mut self.leases) {
            self.revoked(lease, entry, Revocation::Stopped, fx);
        }
        self.creating.clear();
        self.pools.clear();
        self.by_state = [0; 4];
        self.idle.clear();
        self.unswept.clear();
        self.unhealthy = 0;
        true
    }

    /// An acquire: an idle pool at once when nobody is queued ahead; otherwise a place in the
    /// queue (growing capacity if `max_pools` allows) — unless `mode` or `max_waiters` forbids
    /// waiting, or no pool can serve at all. `waiter` is called only to queue.
    pub(crate) fn acquire(
        &mut self,
        mode: WaitMode,
        waiter: impl FnOnce() -> W,
        fx: &mut Effects<P, W, L>,
    ) -> Result<Acquired<P>, LeaseError> {
        if self.run.is_none() {
            return Err(LeaseError::NotStarted);
        }
        if self.waiters.is_empty() {
            if let Some((pool, (lease, handle))) = self
                .idle
                .pop_front()
                .and_then(|pool| Some((pool, self.lease_pool(pool)?)))
            {
                self.counts.acquired += 1;
                return Ok(Acquired::Now {
                    lease,
                    pool,
                    handle,
                });
            }
        }
        if let Some(failure) = self.unservable() {
            return Err(LeaseError::NoHealthyPool(failure));
        }
        // Pools that will exist without anyone releasing: those coming, plus the room left
        // under max_pools. Waiters ahead are served from those first.
        let coming = self.coming();
        let growth = coming + self.limits.max_pools.saturating_sub(self.total());
        let served_by_growth = self.waiters.len() < growth;
        let refuse = match mode {
            WaitMode::NoWait => !served_by_growth,
            _ => !served_by_growth && self.waiters.len() >= self.limits.max_waiters,
        };
        if refuse {
            self.counts.rejected += 1;
            return Err(LeaseError::Unavailable);
        }
        // Made before anything changes: the books stay whole if making it fails.
        let payload = waiter();
        let id = self.next_waiter;
        self.next_waiter += 1;
        if mode == WaitMode::NoWait || self.waiters.len() >= self.limits.max_waiters {
            self.growth_only.insert(id);
        }
        self.waiters.push(id, payload);
        self.replenish(fx);
        Ok(Acquired::Queued(id))
    }

    /// Queued waiter `id`'s payload, to update in place.
    pub(crate) fn waiter_mut(&mut self, id: WaiterId) -> Option<&mut W> {
        self.waiters.get_mut(id)
    }

    /// A waiter gave up (dropped, or `timed_out`): its payload, if it was still queued.
    pub(crate) fn cancel_waiter(&mut self, id: WaiterId, timed_out: bool) -> Option<W> {
        let waiter = self.waiters.remove(id)?;
        self.growth_only.remove(&id);
        if timed_out {
            self.counts.timed_out += 1;
        }
        Some(waiter)
    }

    /// The holder is done with `lease`: its pool goes to the first waiter, back to the idle
    /// set, to the parked set (if it broke under the lease), or into retirement (above target).
    /// False if the lease had already ended.
    pub(crate) fn release(&mut self, lease: LeaseId, fx: &mut Effects<P, W, L>) -> bool {
        let Some(entry) = self.leases.remove(&lease) else {
            return false;
        };
        self.counts.released += 1;
        fx.push(Effect::LeaseEnded {
            lease,
            had_actor: entry.actor_started,
            payload: entry.payload,
        });
        let broken = self
            .pools
            .get(&entry.pool)
            .is_some_and(|p| p.broken_under_lease);
        if broken {
            self.set_state(entry.pool, PoolState::Parked);
            self.replenish(fx);
        } else {
            self.route(entry.pool, fx);
        }
        true
    }

    /// Takes `lease` away: its pool is retired (never reused) and capacity rebuilt. False if
    /// the lease had already ended.
    pub(crate) fn revoke(
        &mut self,
        lease: LeaseId,
        why: Revocation,
        fx: &mut Effects<P, W, L>,
    ) -> bool {
        let Some(entry) = self.leases.remove(&lease) else {
            return false;
        };
        let pool = entry.pool;
        self.revoked(lease, entry, why, fx);
        self.retire(pool, fx);
        self.replenish(fx);
        true
    }

    /// The supervisor spawned a pool it was asked for: it starts. False if the pool is not
    /// expected (its run ended; the supervisor then stops it).
    pub(crate) fn pool_spawned(&mut self, pool: PoolId, generation: u64, handle: P) -> bool {
        if self.run != Some(generation) {
            return false;
        }
        if !self.creating.remove(&pool) {
            return false;
        }
        self.pools.insert(
            pool,
            Pool {
                state: PoolState::Starting,
                broken_under_lease: false,
                handle,
            },
        );
        self.by_state[PoolState::Starting.slot()] += 1;
        true
    }

    /// A worker of `pool` built its state: a starting or parked pool enters service, a pool
    /// broken under its lease is whole again.
    pub(crate) fn pool_ready(&mut self, pool: PoolId, fx: &mut Effects<P, W, L>) {
        let Some(entry) = self.pools.get_mut(&pool) else {
            return;
        };
        match entry.state {
            PoolState::Starting | PoolState::Parked => self.route(pool, fx),
            PoolState::Leased(_) if entry.broken_under_lease => {
                entry.broken_under_lease = false;
                decrement(&mut self.unhealthy);
            }
            _ => {}
        }
    }

    /// `pool` has no live worker. It leaves service until a worker builds its state again;
    /// `failure` is remembered. If then no pool at all can serve, every waiter is refused with
    /// it instead of waiting for a factory that keeps failing.
    pub(crate) fn pool_unhealthy(
        &mut self,
        pool: PoolId,
        failure: String,
        fx: &mut Effects<P, W, L>,
    ) {
        let Some(entry) = self.pools.get_mut(&pool) else {
            return; // retired, or a past run's
        };
        match entry.state {
            PoolState::Starting => self.set_state(pool, PoolState::Parked),
            PoolState::Idle => {
                self.idle.retain(|p| *p != pool);
                self.set_state(pool, PoolState::Parked);
            }
            PoolState::Leased(_) if !entry.broken_under_lease => {
                entry.broken_under_lease = true;
                self.unhealthy += 1;
            }
            _ => {}
        }
        self.last_failure = Some(failure);
        if let Some(failure) = self.unservable() {
            self.growth_only.clear();
            for (waiter_id, waiter) in self.waiters.take_all() {
                fx.push(Effect::Refuse {
                    waiter_id,
                    waiter,
                    error: LeaseError::NoHealthyPool(failure.clone()),
                });
            }
        } else {
            self.refuse_stranded(fx);
        }
    }

    /// `pool`'s actor died: out of the books (its lease, if any, revoked `Lost`), and capacity
    /// rebuilt.
    pub(crate) fn pool_died(&mut self, pool: PoolId, fx: &mut Effects<P, W, L>) {
        if !self.pools.contains_key(&pool) && !self.creating.contains(&pool) {
            return;
        }
        if let Some(PoolState::Leased(lease)) = self.pools.get(&pool).map(|p| p.state) {
            if let Some(entry) = self.leases.remove(&lease) {
                self.revoked(lease, entry, Revocation::Lost, fx);
            }
        }
        self.forget(pool);
        self.replenish(fx);
        self.refuse_stranded(fx);
    }

    /// A new sizing target: grow toward it, retire idle pools above it (never a leased one).
    pub(crate) fn set_desired(&mut self, desired: usize, fx: &mut Effects<P, W, L>) {
        if self.run.is_none() {
            return;
        }
        self.desired = desired.min(self.limits.max_pools);
        while self.in_service(None) > self.desired {
            let Some(pool) = self.idle.pop_back() else {
                break;
            };
            self.retire(pool, fx);
        }
        self.replenish(fx);
    }

    /// Attaches the interpreter's `payload` to live lease `lease` (made by the transition just
    /// run); it comes back in the lease's `Revoke` and `LeaseEnded` effects. False if the lease
    /// is not live.
    pub(crate) fn attach(&mut self, lease: LeaseId, payload: L) -> bool {
        match self.leases.get_mut(&lease) {
            Some(entry) => {
                entry.payload = Some(payload);
                true
            }
            None => false,
        }
    }

    /// The payload attached to live lease `lease`.
    pub(crate) fn payload(&self, lease: LeaseId) -> Option<&L> {
        self.leases.get(&lease)?.payload.as_ref()
    }

    /// The payloads of the live leases (in no particular order).
    pub(crate) fn payloads(&self) -> impl Iterator<Item = &L> {
        self.leases.values().filter_map(|l| l.payload.as_ref())
    }

    /// The leases made since the last sweep that are still live: their actors start now.
    pub(crate) fn take_unswept(&mut self) -> Vec<LeaseId> {
        let mut swept = Vec::new();
        for lease in std::mem::take(&mut self.unswept) {
            if let Some(entry) = self.leases.get_mut(&lease) {
                entry.actor_started = true;
                swept.push(lease);
            }
        }
        swept
    }
}

/// `n - 1`, and never a panic: the books run on the host thread too.
fn decrement(n: &mut usize) {
    *n = n.saturating_sub(1);
}
