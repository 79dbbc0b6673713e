//! `LeaseActor`: one per lease that lives long enough, on the host System. It owns the lease's
//! hard-expiry timer; the supervisor starts it (by a sweep, see `bookkeeper/sweep.rs`),
//! holds its address, stops it when the lease ends, and learns when it dies.
//!
//! Release and draining do not go through it: the handle and the last in-flight job end the
//! lease through the bookkeeper directly (`lease_state.rs`), so no message is needed for them.

use std::sync::Arc;
use std::time::Instant;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, Message, Recipient};

use crate::bookkeeper::Bookkeeper;
use crate::lease_state::{LeaseShared, Revocation};
use crate::stats::LeaseId;

/// The lease ended (released or revoked elsewhere): stop. Sent by the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct StopLease;

/// Fault injection (feature `testing`): panic in a handler, as a bug would. Sent by the
/// supervisor (`kill_lease_actor`).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct CrashLease;

/// A lease actor stopped without being told to (it panicked). Sent from its `stopped()` hook,
/// which actix runs even after a handler panic; handled by the supervisor, which revokes the
/// lease: nobody would revoke it at its hard expiry any more.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct LeaseActorDied(pub(crate) LeaseId);

/// The hard-expiry timer of one lease.
pub(crate) struct LeaseActor<S: 'static> {
    shared: Arc<LeaseShared>,
    keeper: Arc<Bookkeeper<S>>,
    supervisor: Recipient<LeaseActorDied>,
    /// Ended as planned (expired, or told to stop).
    finished: bool,
}

impl<S: 'static> LeaseActor<S> {
    pub(crate) fn new(
        shared: Arc<LeaseShared>,
        keeper: Arc<Bookkeeper<S>>,
        supervisor: Recipient<LeaseActorDied>,
    ) -> Self {
        Self {
            shared,
            keeper,
            supervisor,
            finished: false,
        }
    }
}

impl<S: 'static> Actor for LeaseActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let facts = &self.shared.facts;
        let until_hard = facts
            .hard_expires_at
            .saturating_duration_since(Instant::now());
        // A lifetime too long for the timer to add to `now` never expires.
        if Instant::now().checked_add(until_hard).is_none() {
            return;
        }
        ctx.run_later(until_hard, |act, ctx| {
            let facts = &act.shared.facts;
            if act.keeper.revoke(facts.id, Revocation::Expired) {
                tracing::warn!(
                    manager = %facts.manager,
                    lease_id = %facts.id,
                    owner = facts.owner.as_deref().unwrap_or(""),
                    pool = %facts.pool,
                    in_flight = act.shared.in_flight(),
                    "lease passed its hard expiry; revoked, its pool is retired"
                );
            }
            act.finished = true;
            ctx.stop();
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if !self.finished {
            self.supervisor
                .do_send(LeaseActorDied(self.shared.facts.id));
        }
    }
}

impl<S: 'static> Handler<StopLease> for LeaseActor<S> {
    type Result = ();

    fn handle(&mut self, _: StopLease, ctx: &mut Context<Self>) {
        self.finished = true;
        ctx.stop();
    }
}

impl<S: 'static> Handler<CrashLease> for LeaseActor<S> {
    type Result = ();

    fn handle(&mut self, _: CrashLease, _: &mut Context<Self>) {
        panic!(
            "lease actor {} crashed by fault injection",
            self.shared.facts.id
        );
    }
}
