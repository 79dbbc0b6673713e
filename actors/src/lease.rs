//! `LeaseActor`: one per lease, owning its lifecycle (release, draining, hard expiry). The job
//! path never goes through it: handles send jobs straight to the pool's workers and consult the
//! atomic state in [`LeaseShared`].

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, WeakRecipient};

use crate::error::LeaseError;
use crate::messages::{Crash, Drained, Release};
use crate::registry::Registry;
use crate::stats::{LeaseId, PoolId};

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

/// State shared by a lease's handle, its actor, its in-flight jobs and the registry.
pub(crate) struct LeaseShared {
    /// The manager's name (`name_prefix`), for log fields.
    pub(crate) manager: Arc<str>,
    pub(crate) id: LeaseId,
    pub(crate) pool: PoolId,
    pub(crate) owner: Option<String>,
    pub(crate) soft_expires_at: Instant,
    pub(crate) hard_expires_at: Instant,
    state: AtomicU8,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    actor: WeakRecipient<Drained>,
}

impl LeaseShared {
    pub(crate) fn new(
        manager: Arc<str>,
        id: LeaseId,
        pool: PoolId,
        owner: Option<String>,
        soft_expires_at: Instant,
        hard_expires_at: Instant,
        actor: WeakRecipient<Drained>,
    ) -> Self {
        Self {
            manager,
            id,
            pool,
            owner,
            soft_expires_at,
            hard_expires_at,
            state: AtomicU8::new(ACTIVE),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            actor,
        }
    }

    /// The error a new job gets, or `None` while the lease is active.
    pub(crate) fn refusal(&self) -> Option<LeaseError> {
        match self.state.load(SeqCst) {
            ACTIVE => None,
            RELEASED => Some(LeaseError::Released),
            EXPIRED => Some(LeaseError::Expired),
            STOPPED => Some(LeaseError::Stopped),
            _ => Some(LeaseError::WorkerLost),
        }
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

    pub(crate) fn raise_in_flight(&self) {
        self.in_flight.fetch_add(1, SeqCst);
    }

    pub(crate) fn lower_in_flight(&self) {
        if self.in_flight.fetch_sub(1, SeqCst) == 1 && self.is_released() {
            if let Some(actor) = self.actor.upgrade() {
                actor.do_send(Drained);
            }
        }
    }
}

/// The lifecycle of one lease, running on the host System.
pub struct LeaseActor<S: 'static> {
    shared: Arc<LeaseShared>,
    registry: Arc<Registry<S>>,
    finished: bool,
}

impl<S: 'static> LeaseActor<S> {
    pub(crate) fn new(shared: Arc<LeaseShared>, registry: Arc<Registry<S>>) -> Self {
        Self {
            shared,
            registry,
            finished: false,
        }
    }

    /// Gives the pool back (or retires it, if the lease was revoked) and stops the actor.
    /// The books make this a no-op if the handle already gave the pool back.
    fn finish(&mut self, ctx: &mut Context<Self>) {
        self.finished = true;
        self.registry.finish_lease(self.shared.id);
        ctx.stop();
    }

    fn try_finish_released(&mut self, ctx: &mut Context<Self>) {
        if self.shared.is_released() && self.shared.in_flight() == 0 {
            self.finish(ctx);
        }
    }
}

impl<S: 'static> Actor for LeaseActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let until_hard = self
            .shared
            .hard_expires_at
            .saturating_duration_since(Instant::now());
        ctx.run_later(until_hard, |act, ctx| {
            if act
                .registry
                .revoke_lease(act.shared.id, Revocation::Expired)
            {
                tracing::warn!(manager = %act.registry.config.name_prefix,
                    lease_id = %act.shared.id,
                    owner = act.shared.owner.as_deref().unwrap_or(""),
                    pool = %act.shared.pool,
                    in_flight = act.shared.in_flight(),
                    "lease passed its hard expiry; revoked, its pool is retired"
                );
            }
            act.finished = true;
            ctx.stop();
        });
    }
}

impl<S: 'static> Drop for LeaseActor<S> {
    fn drop(&mut self) {
        // Dropped without `finish` only if the actor died (a panic in a handler drops the actor
        // without running `stopped`) or the host is shutting down. The holder must not keep
        // using a pool nobody tracks: revoke the lease (its jobs then fail with `WorkerLost`)
        // and retire the pool. During shutdown the books are already closed and this is a no-op.
        if !self.finished && self.registry.revoke_lease(self.shared.id, Revocation::Lost) {
            tracing::warn!(manager = %self.registry.config.name_prefix, lease_id = %self.shared.id, pool = %self.shared.pool, "lease actor died; lease revoked");
        }
    }
}

impl<S: 'static> Handler<Crash> for LeaseActor<S> {
    type Result = ();

    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("lease actor {} crashed by fault injection", self.shared.id);
    }
}

impl<S: 'static> Handler<Release> for LeaseActor<S> {
    type Result = ();

    fn handle(&mut self, _: Release, ctx: &mut Context<Self>) {
        // The handle marked the lease released before sending; revocation may have won the race.
        if self.shared.is_revoked() {
            return;
        }
        if self.shared.in_flight() == 0 {
            tracing::debug!(manager = %self.registry.config.name_prefix, lease_id = %self.shared.id, pool = %self.shared.pool, "lease released");
            self.finish(ctx);
        } else {
            self.shared.draining.store(true, SeqCst);
            tracing::debug!(manager = %self.registry.config.name_prefix,
                lease_id = %self.shared.id,
                pool = %self.shared.pool,
                in_flight = self.shared.in_flight(),
                "lease released while jobs run; draining"
            );
            // A job may have finished between the check and the flag; re-check.
            self.try_finish_released(ctx);
        }
    }
}

impl<S: 'static> Handler<Drained> for LeaseActor<S> {
    type Result = ();

    fn handle(&mut self, _: Drained, ctx: &mut Context<Self>) {
        self.try_finish_released(ctx);
    }
}
