//! The grinder's actor: forms batches on the host System, keeps the one `max_wait` timer, and
//! starts each batch's lease wait; and `Grinder::start`, which makes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use actix::{Actor, ActorContext, AsyncContext, Context, Handler, SpawnHandle};
use tokio::sync::oneshot;

use super::backlog::{Kick, State, StopGrinder};
use super::{ActorHandle, BatchToken, Grinder};
use crate::bookkeeper::LeaseParams;
use crate::books::WaitMode;
use crate::error::LeaseError;

impl<S: 'static> Grinder<S> {
    /// Starts the grinder's actor on the manager's host. Idempotent; needs a started manager.
    /// Waits for a `stop` in progress to finish first.
    pub async fn start(self: &Arc<Self>) -> Result<(), LeaseError> {
        let _lifecycle = self.lifecycle.lock().await;
        {
            let books = self.lock();
            let live = books.actor.as_ref().is_some_and(|a| a.kick.connected());
            if books.state == State::Running && live {
                return Ok(());
            }
        }
        // The number is taken now, before the actor exists: an actor of a start that is dropped
        // meanwhile then never shares a number with a later one (its `Drop` must not stop it).
        let incarnation = {
            let mut books = self.lock();
            books.incarnation += 1;
            books.incarnation
        };
        let (tx, rx) = oneshot::channel();
        let grinder = Arc::clone(self);
        self.engine.spawn_on_host(move || {
            let actor = GrinderActor {
                grinder,
                incarnation,
                timer: None,
            };
            let addr = actor.start();
            let _ = tx.send(ActorHandle {
                kick: addr.clone().recipient(),
                stop: addr.recipient(),
            });
        })?;
        let actor = rx.await.map_err(|_| LeaseError::NotStarted)?;
        let mut books = self.lock();
        if books.incarnation != incarnation || !actor.kick.connected() {
            // Its host stopped while it started (the actor is gone): nothing runs it.
            return Err(LeaseError::NotStarted);
        }
        if let Some(old) = books.actor.replace(actor) {
            old.stop.do_send(StopGrinder);
        }
        books.state = State::Running;
        books.kick_queued = false;
        drop(books);
        tracing::info!(manager = %self.engine.name(), owner_prefix = %self.config.owner_prefix, "work grinder started");
        Ok(())
    }
}

/// Forms batches for one grinder and starts each on a lease. Lives on the manager's host System.
pub(crate) struct GrinderActor<S: 'static> {
    grinder: Arc<Grinder<S>>,
    incarnation: u64,
    /// The one `max_wait` timer: when it fires, and its handle.
    timer: Option<(Instant, SpawnHandle)>,
}

impl<S: 'static> GrinderActor<S> {
    fn form_batches(&mut self, ctx: &mut Context<Self>) {
        let (due, next_deadline) = self.grinder.due_batches();
        for (n, cancelled) in due {
            self.start_batch(n, cancelled);
        }
        match next_deadline {
            Some(at) if self.timer.as_ref().is_some_and(|(t, _)| *t == at) => {}
            Some(at) => {
                if let Some((_, old)) = self.timer.take() {
                    ctx.cancel_future(old);
                }
                let handle =
                    ctx.run_later(at.saturating_duration_since(Instant::now()), |act, ctx| {
                        act.timer = None;
                        act.form_batches(ctx);
                    });
                self.timer = Some((at, handle));
            }
            None => {
                if let Some((_, old)) = self.timer.take() {
                    ctx.cancel_future(old);
                }
            }
        }
    }

    /// Acquires the batch's lease on the host, then launches its items on it. The wait for the
    /// lease ends early when a stop cancels the batch (it drops the batch's cancel sender).
    fn start_batch(&self, n: u64, mut cancelled: oneshot::Receiver<()>) {
        let grinder = Arc::clone(&self.grinder);
        let owner = format!("{}-batch-{n}", grinder.config.owner_prefix);
        tracing::debug!(manager = %grinder.engine.name(), batch = n, owner = %owner, "batch waiting for a lease");
        actix_rt::spawn(async move {
            let params = LeaseParams {
                owner: Some(owner),
                lease_for: grinder.config.lease_for,
            };
            let lease = match grinder.engine.begin_acquire(params, WaitMode::Forever) {
                Ok(Ok(lease)) => Ok(lease),
                Ok(Err(mut ticket)) => {
                    let outcome = std::future::poll_fn(|cx| {
                        if Pin::new(&mut cancelled).poll(cx).is_ready() {
                            return Poll::Ready(None);
                        }
                        ticket.poll_wait(cx).map(Some)
                    })
                    .await;
                    match outcome {
                        Some(lease) => lease,
                        // Cancelled: dropping the ticket leaves the queue; the stop that
                        // cancelled us answered the items.
                        None => return,
                    }
                }
                Err(e) => Err(e),
            };
            let Some(items) = grinder.batch_launching(n, lease.is_ok()) else {
                return; // a stop took the items meanwhile; a lease we got is released on drop
            };
            let lease = match lease {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::warn!(manager = %grinder.engine.name(), batch = n, error = %e, "batch could not get a lease; its items fail");
                    let count = items.len() as u64;
                    for item in items {
                        item.fail(e.clone());
                    }
                    grinder.batch_finished(n, count);
                    return;
                }
            };
            tracing::debug!(manager = %grinder.engine.name(), batch = n, size = items.len(), lease_id = %lease.facts().id, "batch running");
            let token = Arc::new(BatchToken {
                items: items.len() as u64,
                lease: Some(lease),
                batch: n,
                grinder,
                groups: Mutex::new(Vec::new()),
            });
            for item in items {
                (item.launch)(Ok(&token));
            }
            token.flush_groups();
        });
    }
}

impl<S: 'static> Actor for GrinderActor<S> {
    type Context = Context<Self>;
}

impl<S: 'static> Drop for GrinderActor<S> {
    fn drop(&mut self) {
        // Stopped by `stop` (then this is a no-op), or dropped with its host's System.
        self.grinder.actor_gone(self.incarnation);
    }
}

impl<S: 'static> Handler<Kick> for GrinderActor<S> {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.form_batches(ctx);
    }
}

impl<S: 'static> Handler<StopGrinder> for GrinderActor<S> {
    type Result = ();

    fn handle(&mut self, _: StopGrinder, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
