//! Stopping a grinder: draining or cancelling, every stop bounded by `stop_timeout`, and the
//! grinder's end when its host stops.

use std::time::Instant;

use super::backlog::{State, StopGrinder, StopMode};
use super::Grinder;
use crate::error::LeaseError;

impl<S: 'static> Grinder<S> {
    /// Stops the grinder (see [`StopMode`]) and waits — at most `stop_timeout` — until nothing
    /// is pending and no batch runs. Items still waiting for a lease at the deadline are
    /// answered `Stopped`; batches still running are left to finish on their own.
    pub async fn stop(&self, mode: StopMode) {
        // One deadline for the whole call, waiting behind another stop included: stops that
        // overlap each return within their own `stop_timeout`, not one after another.
        let deadline = Instant::now().checked_add(self.config.stop_timeout);
        if mode == StopMode::CancelPending {
            // Before waiting for a stop in progress: cancelling must not wait behind a drain.
            self.cancel_waiting();
        }
        let lifecycle = match deadline {
            None => Some(self.lifecycle.lock().await),
            Some(deadline) => tokio::time::timeout_at(deadline.into(), self.lifecycle.lock())
                .await
                .ok(),
        };
        let Some(_lifecycle) = lifecycle else {
            // Another stop (or a start) still holds the grinder: it finishes the job; this
            // call's time is up.
            self.timed_out();
            return;
        };
        {
            let mut books = self.lock();
            match (books.state, mode) {
                (State::NotStarted, _) => return,
                (State::Running | State::Draining, StopMode::Drain) => {
                    books.state = State::Draining;
                    self.kick(&mut books);
                }
                (State::Running | State::Draining, StopMode::CancelPending) => {
                    books.state = State::Stopped;
                }
                (State::Stopped, _) => {}
            }
        }
        if !self.wait_idle(deadline).await {
            self.timed_out();
        }
        let mut books = self.lock();
        books.state = State::Stopped;
        if let Some(actor) = books.actor.take() {
            actor.stop.do_send(StopGrinder);
        }
        drop(books);
        tracing::info!(manager = %self.engine.name(), owner_prefix = %self.config.owner_prefix, "work grinder stopped");
    }

    /// A stop's time ran out: items not yet on a lease are answered `Stopped`; running batches
    /// are left to finish.
    fn timed_out(&self) {
        let cancelled = self.cancel_waiting();
        let running = self.lock().batches();
        tracing::warn!(manager = %self.engine.name(),
            owner_prefix = %self.config.owner_prefix,
            cancelled,
            running_batches = running,
            stop_timeout = ?self.config.stop_timeout,
            "work grinder stop timed out; items not on a lease answered Stopped, running batches left to finish"
        );
    }

    /// Waits until nothing is pending and no batch exists; false if the deadline passed first
    /// (`None`: no deadline).
    async fn wait_idle(&self, deadline: Option<Instant>) -> bool {
        loop {
            let notified = self.progress.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            {
                let books = self.lock();
                if books.idle() {
                    return true;
                }
            }
            match deadline {
                None => notified.await,
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline.into(), notified)
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
            }
        }
    }

    /// Stops accepting items and answers `Stopped` to every item not yet on a lease (pending,
    /// or in a batch waiting for one, whose wait is cancelled). Returns how many.
    pub(super) fn cancel_waiting(&self) -> usize {
        let items = {
            let mut books = self.lock();
            if matches!(books.state, State::Running | State::Draining) {
                books.state = State::Stopped;
            }
            books.take_waiting()
        };
        let n = items.len();
        for item in items {
            item.fail(LeaseError::Stopped);
        }
        self.freed_room();
        n
    }

    /// Stops without waiting: items not yet on a lease are answered `Stopped` (last handle
    /// dropped).
    pub fn stop_detached(&self) {
        self.cancel_waiting();
        let mut books = self.lock();
        if let Some(actor) = books.actor.take() {
            actor.stop.do_send(StopGrinder);
        }
    }

    /// The actor of `incarnation` is gone (its host stopped): if it was the current one, the
    /// grinder stops, answering what waits `Stopped`.
    pub(super) fn actor_gone(&self, incarnation: u64) {
        {
            let mut books = self.lock();
            if books.incarnation != incarnation || books.actor.is_none() {
                return;
            }
            books.actor = None;
            books.kick_queued = false;
        }
        let cancelled = self.cancel_waiting();
        tracing::info!(manager = %self.engine.name(), owner_prefix = %self.config.owner_prefix, cancelled, "the manager stopped; work grinder stopped");
    }
}
