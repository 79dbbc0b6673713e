//! The decisions every transition of the books shares: making a lease, routing a pool that
//! can serve, retiring, keeping the per-state counts, asking for capacity.

use super::{
    decrement, Books, Effect, Effects, Lease, PoolState, WaiterId, IDLE, LEASED, PARKED, STARTING,
};
use crate::error::LeaseError;
use crate::stats::{LeaseId, PoolId};

impl<P: Clone, W, L: Clone> Books<P, W, L> {
    /// Makes a lease on `pool` (which must be spawned) and records it, unswept (its actor
    /// starts at the next sweep, if it is still live then).
    pub(super) fn lease_pool(&mut self, pool: PoolId) -> Option<(LeaseId, P)> {
        let handle = self.pools.get(&pool)?.handle.clone();
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        self.set_state(pool, PoolState::Leased(lease));
        self.leases.insert(
            lease,
            Lease {
                pool,
                actor_started: false,
                payload: None,
            },
        );
        // Leases that ended before the supervisor swept need no actor: keep the list within
        // twice the live leases, so a busy host never lets it grow with the acquire rate.
        if self.unswept.len() >= 2 * self.leases.len() + 16 {
            let leases = &self.leases;
            self.unswept.retain(|l| leases.contains_key(l));
        }
        self.unswept.push(lease);
        Some((lease, handle))
    }

    /// A pool that can serve (ready, or released healthy): to the first waiter; into
    /// retirement if the pools in service would exceed the target; else idle.
    pub(super) fn route(&mut self, pool: PoolId, fx: &mut Effects<P, W, L>) {
        if !self.pools.contains_key(&pool) {
            return;
        }
        if let Some((id, waiter)) = self.waiters.pop_first() {
            self.growth_only.remove(&id);
            let Some((lease, handle)) = self.lease_pool(pool) else {
                return;
            };
            self.counts.acquired += 1;
            self.counts.acquired_after_wait += 1;
            fx.push(Effect::Grant {
                waiter_id: id,
                waiter,
                lease,
                pool,
                handle,
            });
        } else if self.in_service(Some(pool)) + 1 > self.desired {
            self.retire(pool, fx);
        } else {
            self.set_state(pool, PoolState::Idle);
            self.idle.push_back(pool);
        }
    }

    /// A lease just taken out of the table was revoked: counted, its holder's state flipped,
    /// its end announced. (Its pool is the caller's to retire or forget.)
    pub(super) fn revoked(
        &mut self,
        lease: LeaseId,
        entry: Lease<L>,
        why: crate::lease_state::Revocation,
        fx: &mut Effects<P, W, L>,
    ) {
        self.counts.revoked += 1;
        fx.push(Effect::Revoke {
            lease,
            why,
            payload: entry.payload.clone(),
        });
        fx.push(Effect::LeaseEnded {
            lease,
            had_actor: entry.actor_started,
            payload: entry.payload,
        });
    }

    /// Refuses (`Unavailable`) the waiters that may wait only for a pool being created, when
    /// the pools still coming can no longer reach them in queue order (one failed).
    pub(super) fn refuse_stranded(&mut self, fx: &mut Effects<P, W, L>) {
        if self.growth_only.is_empty() {
            return;
        }
        let growth = self.coming() + self.limits.max_pools.saturating_sub(self.total());
        let stranded: Vec<WaiterId> = self
            .waiters
            .ids()
            .enumerate()
            .filter(|(place, id)| *place >= growth && self.growth_only.contains(id))
            .map(|(_, id)| id)
            .collect();
        for id in stranded {
            self.growth_only.remove(&id);
            if let Some(waiter) = self.waiters.remove(id) {
                self.counts.rejected += 1;
                fx.push(Effect::Refuse {
                    waiter_id: id,
                    waiter,
                    error: LeaseError::Unavailable,
                });
            }
        }
    }

    /// Takes a pool out of service for good.
    pub(super) fn retire(&mut self, pool: PoolId, fx: &mut Effects<P, W, L>) {
        self.forget(pool);
        fx.push(Effect::RetirePool(pool));
    }

    /// Removes a pool from every set of the books.
    pub(super) fn forget(&mut self, pool: PoolId) {
        self.creating.remove(&pool);
        let Some(entry) = self.pools.remove(&pool) else {
            return;
        };
        decrement(&mut self.by_state[entry.state.slot()]);
        match entry.state {
            PoolState::Idle => self.idle.retain(|p| *p != pool),
            PoolState::Parked => decrement(&mut self.unhealthy),
            PoolState::Leased(_) if entry.broken_under_lease => decrement(&mut self.unhealthy),
            _ => {}
        }
    }

    /// Moves a spawned pool to `to`, keeping the per-state counts and the unhealthy count.
    /// (The idle queue is the caller's: it knows the position.)
    pub(super) fn set_state(&mut self, pool: PoolId, to: PoolState) {
        let Some(entry) = self.pools.get_mut(&pool) else {
            return;
        };
        let from = entry.state;
        decrement(&mut self.by_state[from.slot()]);
        self.by_state[to.slot()] += 1;
        if from == PoolState::Parked {
            decrement(&mut self.unhealthy);
        }
        if matches!(from, PoolState::Leased(_)) && entry.broken_under_lease {
            decrement(&mut self.unhealthy);
        }
        entry.broken_under_lease = false;
        if to == PoolState::Parked {
            self.unhealthy += 1;
        }
        entry.state = to;
    }

    /// Asks for pools so that every lease holder and waiter, and the sizing target, are covered
    /// within `max_pools` (unhealthy pools count: they come back when rebuilt).
    pub(super) fn replenish(&mut self, fx: &mut Effects<P, W, L>) {
        if self.run.is_none() {
            return;
        }
        let need = (self.leases.len() + self.waiters.len())
            .max(self.desired)
            .min(self.limits.max_pools);
        for _ in self.total()..need {
            let pool = PoolId(self.next_pool);
            self.next_pool += 1;
            self.creating.insert(pool);
            fx.push(Effect::CreatePool(pool));
        }
    }

    /// Every pool the books know, whatever its state.
    pub(super) fn total(&self) -> usize {
        self.creating.len() + self.pools.len()
    }

    /// Pools being created or starting.
    pub(super) fn coming(&self) -> usize {
        self.creating.len() + self.by_state[STARTING]
    }

    /// Pools in service (idle or leased), not counting `except`.
    pub(super) fn in_service(&self, except: Option<PoolId>) -> usize {
        let n = self.by_state[IDLE] + self.by_state[LEASED];
        let excepted = except
            .and_then(|p| self.pools.get(&p))
            .is_some_and(|p| matches!(p.state, PoolState::Idle | PoolState::Leased(_)));
        n - usize::from(excepted)
    }

    /// The last failure, when no pool can serve: none in service is healthy, none is coming,
    /// and at least one is unhealthy.
    pub(super) fn unservable(&self) -> Option<String> {
        let broken_under_lease = self.unhealthy.saturating_sub(self.by_state[PARKED]);
        let serving = self.in_service(None) > broken_under_lease;
        if serving || self.coming() > 0 || self.unhealthy == 0 {
            return None;
        }
        Some(
            self.last_failure
                .clone()
                .unwrap_or_else(|| "no worker could start".to_owned()),
        )
    }
}
