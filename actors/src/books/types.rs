//! What goes in and out of the books: limits, wait modes, effects, outcomes, snapshots.

use crate::error::LeaseError;
use crate::lease_state::Revocation;
use crate::stats::{LeaseId, PoolId};

/// A queued acquirer, numbered in arrival order.
pub(crate) type WaiterId = u64;

/// What the books enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) max_pools: usize,
    pub(crate) min_pools: usize,
    pub(crate) max_waiters: usize,
}

/// How long an acquirer is willing to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Queue until served (or until the manager stops).
    Forever,
    /// Queue at most this long (the interpreter's timer cancels the wait).
    Timeout(std::time::Duration),
    /// Take a free pool (or one that can be created without waiting for a release), or fail.
    NoWait,
}

/// What follows from a transition.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Effect<P, W, L = ()> {
    /// Spawn this pool; the books count it as being created until `pool_spawned`.
    CreatePool(PoolId),
    /// Stop this pool: it left service (revoked, above the target, or dead).
    RetirePool(PoolId),
    /// Hand `lease` on `pool` to this waiter.
    Grant {
        waiter_id: WaiterId,
        waiter: W,
        lease: LeaseId,
        pool: PoolId,
        handle: P,
    },
    /// Answer this waiter with an error.
    Refuse {
        waiter_id: WaiterId,
        waiter: W,
        error: LeaseError,
    },
    /// This lease was taken away: its holder's new jobs must fail. `payload`: what was
    /// attached to it.
    Revoke {
        lease: LeaseId,
        why: Revocation,
        payload: Option<L>,
    },
    /// This lease ended (released or revoked); `had_actor` if its lease actor was started.
    /// `payload`: what was attached to it, handed back.
    LeaseEnded {
        lease: LeaseId,
        had_actor: bool,
        payload: Option<L>,
    },
}

/// The outcome of an acquire that was not refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acquired<P> {
    /// An idle pool, at once.
    Now {
        lease: LeaseId,
        pool: PoolId,
        handle: P,
    },
    /// A place in the queue.
    Queued(WaiterId),
}

/// Where the pools of a starting run stand (what `start` waits for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartOutcome {
    /// Some pool is still being created or starting.
    Pending,
    /// A pool serves, or none was asked for.
    Serving,
    /// No pool can serve; the last failure.
    Failed(String),
    /// The run ended.
    Ended,
}

/// Monotonic counts the books keep (so a snapshot and its counts always agree).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BookCounts {
    pub(crate) acquired: u64,
    pub(crate) acquired_after_wait: u64,
    pub(crate) rejected: u64,
    pub(crate) timed_out: u64,
    pub(crate) released: u64,
    pub(crate) revoked: u64,
}

/// A snapshot of the books.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BookStats {
    pub(crate) desired: usize,
    pub(crate) available: usize,
    pub(crate) leased: usize,
    pub(crate) waiting: usize,
    pub(crate) starting: usize,
    pub(crate) unhealthy: usize,
    /// Live leases, oldest first, with their pools.
    pub(crate) leases: Vec<(LeaseId, PoolId)>,
    /// Every pool the books know, whatever its state.
    pub(crate) pools: Vec<PoolId>,
    pub(crate) counts: BookCounts,
}
