//! What the books tell: the start outcome, snapshots, their size, and their invariants —
//! checked in one place (by the tests, and by the engine's test hook).

use std::collections::BTreeSet;

use super::{BookStats, Books, PoolState, StartOutcome, IDLE};

impl<P: Clone, W, L: Clone> Books<P, W, L> {
    /// For `start`: whether the pools asked for so far serve, fail, or are still coming.
    pub(crate) fn start_outcome(&self) -> StartOutcome {
        if self.run.is_none() {
            return StartOutcome::Ended;
        }
        if self.coming() > 0 {
            return StartOutcome::Pending;
        }
        match self.unservable() {
            Some(failure) => StartOutcome::Failed(failure),
            None => StartOutcome::Serving,
        }
    }

    /// The counts of [`stats`](Self::stats), nothing that allocates: `(available, leased,
    /// unhealthy, starting, waiting)`.
    pub(crate) fn capacity(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.idle.len(),
            self.leases.len(),
            self.unhealthy,
            self.coming(),
            self.waiters.len(),
        )
    }

    pub(crate) fn stats(&self) -> BookStats {
        BookStats {
            desired: self.desired,
            available: self.idle.len(),
            leased: self.leases.len(),
            waiting: self.waiters.len(),
            starting: self.coming(),
            unhealthy: self.unhealthy,
            leases: {
                let mut leases: Vec<_> = self.leases.iter().map(|(id, l)| (*id, l.pool)).collect();
                leases.sort_unstable();
                leases
            },
            pools: self
                .creating
                .iter()
                .chain(self.pools.keys())
                .copied()
                .collect(),
            counts: self.counts,
        }
    }

    /// Entries in every collection (for leak tests).
    pub(crate) fn entries(&self) -> usize {
        self.creating.len()
            + self.pools.len()
            + self.idle.len()
            + self.waiters.storage()
            + self.leases.len()
            + self.unswept.len()
            + self.growth_only.len()
    }

    /// Checks every invariant; the message names the first one broken.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut by_state = [0; 4];
        let mut unhealthy = 0;
        for (id, pool) in &self.pools {
            by_state[pool.state.slot()] += 1;
            if pool.state == PoolState::Parked || pool.broken_under_lease {
                unhealthy += 1;
            }
            if pool.broken_under_lease && !matches!(pool.state, PoolState::Leased(_)) {
                return Err(format!("{id} is broken under a lease it does not have"));
            }
            if let PoolState::Leased(lease) = pool.state {
                if self.leases.get(&lease).map(|l| l.pool) != Some(*id) {
                    return Err(format!("{id} is leased to {lease}, which does not hold it"));
                }
            }
            if self.creating.contains(id) {
                return Err(format!("{id} is both creating and spawned"));
            }
        }
        if by_state != self.by_state {
            return Err(format!(
                "per-state counts {:?} != {by_state:?}",
                self.by_state
            ));
        }
        if unhealthy != self.unhealthy {
            return Err(format!("unhealthy {} != {unhealthy}", self.unhealthy));
        }
        if self.idle.len() != by_state[IDLE] {
            return Err(format!(
                "idle queue {:?} disagrees with the pools",
                self.idle
            ));
        }
        let mut seen = BTreeSet::new();
        for pool in &self.idle {
            if !seen.insert(*pool) || self.pools.get(pool).map(|p| p.state) != Some(PoolState::Idle)
            {
                return Err(format!(
                    "{pool} is in the idle queue but not idle (or twice)"
                ));
            }
        }
        for (lease, entry) in &self.leases {
            if self.pools.get(&entry.pool).map(|p| p.state) != Some(PoolState::Leased(*lease)) {
                return Err(format!(
                    "{lease} holds {}, which is not leased to it",
                    entry.pool
                ));
            }
        }
        if let Some(id) = self
            .growth_only
            .iter()
            .find(|id| !self.waiters.contains(**id))
        {
            return Err(format!("growth-only waiter {id} is not waiting"));
        }
        if self.unswept.len() > 2 * self.limits.max_pools + 17 {
            return Err(format!(
                "{} unswept leases for at most {} live ones",
                self.unswept.len(),
                self.limits.max_pools
            ));
        }
        if !self.waiters.is_empty() && !self.idle.is_empty() {
            return Err("a waiter waits while a pool is idle".to_owned());
        }
        if self.total() > self.limits.max_pools {
            return Err(format!(
                "{} pools > max_pools {}",
                self.total(),
                self.limits.max_pools
            ));
        }
        if self.run.is_none() && self.entries() > 0 {
            return Err("a stopped run still has entries".to_owned());
        }
        Ok(())
    }
}
