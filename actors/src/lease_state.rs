//! A lease's state, shared by its handle, its in-flight jobs, its actor and the bookkeeper:
//! atomics and plain data, so that the job path checks it without a message.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::error::LeaseError;
use crate::stats::{Backend, LeaseId, PoolId};

const ACTIVE: u8 = 0;
const RELEASED: u8 = 1;
const EXPIRED: u8 = 2;
const STOPPED: u8 = 3;
const LOST: u8 = 4;

/// Why a lease was taken away from its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// Passed its hard expiry.
    Expired,
    /// The manager stopped.
    Stopped,
    /// Its lease actor or pool died.
    Lost,
}

/// Ends a released lease once its last job is done. Implemented by the bookkeeper (a layer
/// above this one, hence the trait).
pub(crate) trait LeaseEnds: Send + Sync {
    /// `lease` was released and its last in-flight job finished.
    fn drained(&self, lease: LeaseId);
    /// Whether `stop` of run `generation` has waited `shutdown_timeout` and still has jobs
    /// running: they should stop now if they can (see `current::job_stop_reason`).
    fn overdue(&self, generation: u64) -> bool;
    /// Whether run `generation` has ended (or another began).
    fn run_over(&self, generation: u64) -> bool;
}

/// The shared state of one lease.
pub(crate) struct LeaseShared {
    pub(crate) facts: LeaseFacts,
    /// The manager run that granted it.
    generation: u64,
    state: AtomicU8,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    ends: Weak<dyn LeaseEnds>,
}

/// What a lease is, for its whole life: everything but its changing state.
#[derive(Debug)]
pub struct LeaseFacts {
    /// The manager's name (`name_prefix`), for log fields.
    pub manager: Arc<str>,
    /// The lease.
    pub id: LeaseId,
    /// The pool it holds.
    pub pool: PoolId,
    /// The label given at acquire.
    pub owner: Option<String>,
    /// When it was granted.
    pub granted_at: Instant,
    /// When `lease_for` runs out.
    pub soft_expires_at: Instant,
    /// When the lease is revoked.
    pub hard_expires_at: Instant,
    /// Where its jobs run.
    pub backend: Backend,
}

impl LeaseShared {
    pub(crate) fn new(facts: LeaseFacts, generation: u64, ends: Weak<dyn LeaseEnds>) -> Self {
        Self {
            facts,
            generation,
            state: AtomicU8::new(ACTIVE),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            ends,
        }
    }

    /// The error a new job gets, or `None` while the lease is active.
    pub(crate) fn refusal(&self) -> Option<LeaseError> {
        match self.state.load(SeqCst) {
            ACTIVE => None,
            RELEASED => Some(LeaseError::Released),
            EXPIRED => Some(LeaseError::Expired),
            STOPPED => Some(LeaseError::Stopped),
            // The lease's pool was lost: a new job cannot start.
            _ => Some(LeaseError::NeverRan),
        }
    }

    /// Why a job running on this lease should stop now, if it should (see
    /// `current::job_stop_reason`).
    pub(crate) fn stop_reason(&self) -> Option<LeaseError> {
        match self.state.load(SeqCst) {
            EXPIRED => return Some(LeaseError::Expired),
            LOST => return Some(LeaseError::WorkerLost),
            _ => {}
        }
        let overdue = self
            .ends
            .upgrade()
            .is_some_and(|ends| ends.overdue(self.generation));
        overdue.then_some(LeaseError::Stopped)
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.state.load(SeqCst) >= EXPIRED
    }

    pub(crate) fn is_released(&self) -> bool {
        self.state.load(SeqCst) == RELEASED
    }

    /// Active → released; false if it was already released or revoked.
    pub(crate) fn mark_released(&self) -> bool {
        self.state
            .compare_exchange(ACTIVE, RELEASED, SeqCst, SeqCst)
            .is_ok()
    }

    /// Active or released → revoked; false if it was already revoked.
    pub(crate) fn revoke(&self, why: Revocation) -> bool {
        let to = match why {
            Revocation::Expired => EXPIRED,
            Revocation::Stopped => STOPPED,
            Revocation::Lost => LOST,
        };
        let mut current = self.state.load(SeqCst);
        while current < EXPIRED {
            match self.state.compare_exchange(current, to, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
        false
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(SeqCst)
    }

    /// The holder released the lease (already marked released): it ends now if nothing is in
    /// flight; otherwise it drains, and the last job to finish ends it. Returns whether it
    /// ended now. Either way it ends exactly once: the bookkeeper ignores a second end.
    pub(crate) fn finish_or_drain(&self) -> bool {
        if self.in_flight() == 0 {
            self.end();
            return true;
        }
        self.draining.store(true, SeqCst);
        // A job may have finished between the look and the flag: look again.
        if self.in_flight() == 0 {
            self.end();
            return true;
        }
        false
    }

    pub(crate) fn raise_in_flight(&self) {
        self.in_flight.fetch_add(1, SeqCst);
    }

    pub(crate) fn lower_in_flight(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1 && self.is_released() {
            self.end();
        }
    }

    fn end(&self) {
        if let Some(ends) = self.ends.upgrade() {
            ends.drained(self.facts.id);
        }
    }
}
