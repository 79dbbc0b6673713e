//! A queued acquirer's place in line: taking its answer, or leaving the queue.

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::{Answer, Bookkeeper, Waiter};
use crate::books::{WaitMode, WaiterId};
use crate::error::LeaseError;
use crate::metrics::AcquireEnd;

/// A queued acquirer's place in line: poll it until it yields a lease or an error. Dropping it
/// leaves the queue. It is polled in place (no boxed future), and its answer waits for it in the
/// bookkeeper's ledger (no channel), so a waiter costs little memory and no allocation.
pub struct WaitTicket<S: 'static> {
    id: WaiterId,
    /// Set once an answer was taken, so Drop need not look for us in the queue.
    answered: bool,
    /// Queued with the waker of the poll that queued it: that poll need not look for an answer
    /// (one given since wakes it).
    fresh: bool,
    keeper: Arc<Bookkeeper<S>>,
    /// The host runtime, whose timer bounds a timed wait (`None` for an untimed one).
    timers: Option<tokio::runtime::Handle>,
    limit: Option<Duration>,
    /// Created on first poll of a timed wait; boxed so untimed waiters do not carry it.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the wait began, if a metrics recorder wants to know how long it lasted.
    since: Option<Instant>,
}

impl<S: 'static> WaitTicket<S> {
    /// `registered`: queued with the waker of the poll that will poll it first.
    pub(crate) fn new(
        id: WaiterId,
        keeper: Arc<Bookkeeper<S>>,
        timers: Option<tokio::runtime::Handle>,
        mode: WaitMode,
        registered: bool,
    ) -> Self {
        let limit = match mode {
            WaitMode::Timeout(d) => Some(d),
            WaitMode::Forever | WaitMode::NoWait => None,
        };
        Self {
            id,
            answered: false,
            // Only an untimed wait skips the look: a timed one must not poll its timer before it
            // has looked (a stop may have answered it and shut the timer's runtime down since).
            fresh: registered && limit.is_none(),
            timers,
            limit,
            sleep: None,
            since: keeper.counters.metrics.enabled().then(Instant::now),
            keeper,
        }
    }

    /// The wait is over with `answer`: records how it ended (and how long it took) for
    /// metrics, and logs a lease handed out.
    fn ended(&mut self, answer: Answer<S>) -> Answer<S> {
        self.answered = true;
        self.record(AcquireEnd::of(&answer));
        if let Ok(core) = &answer {
            self.keeper.granted(core);
        }
        answer
    }

    fn record(&self, end: AcquireEnd) {
        let waited = self.since.map_or(Duration::ZERO, |t| t.elapsed());
        self.keeper.counters.metrics.acquire_waited(end, waited);
    }

    /// Polls for the answer, enforcing the wait limit.
    pub fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Answer<S>> {
        if self.answered {
            return Poll::Ready(Err(LeaseError::Stopped));
        }
        // Looked for first: an answer that raced with the timer wins.
        if !std::mem::take(&mut self.fresh) {
            if let Some(answer) = self.keeper.answer_for(self.id, cx.waker()) {
                return Poll::Ready(self.ended(answer));
            }
        }
        let (Some(limit), Some(timers)) = (self.limit, &self.timers) else {
            return Poll::Pending;
        };
        let sleep = &mut self.sleep;
        let elapsed = catch_unwind(AssertUnwindSafe(|| {
            let sleep = sleep.get_or_insert_with(|| {
                // The timer lives on the host runtime, so waiting works from any executor or
                // thread.
                let _guard = timers.enter();
                Box::pin(tokio::time::sleep(limit))
            });
            sleep.as_mut().poll(cx).is_ready()
        }));
        let answer = match elapsed {
            Ok(false) => return Poll::Pending,
            Ok(true) => match self.keeper.leave(self.id, Some(limit)) {
                Left::Queue { .. } => Err(LeaseError::Timeout(limit)),
                // Picked as the time ran out: the answer stands.
                Left::Answered(answer) => answer,
                Left::Lost => Err(LeaseError::Stopped),
            },
            // tokio panics when a timer is polled after its runtime shut down: the manager
            // stopped between our look and the timer (the stop answered us, or will find us
            // gone). The answer given, if any, stands; else `Stopped`.
            Err(payload) => {
                crate::job::drop_payload(payload);
                if let Some(sleep) = self.sleep.take() {
                    crate::job::drop_contained(sleep);
                }
                match self.keeper.leave(self.id, None) {
                    Left::Answered(answer) => answer,
                    Left::Queue { .. } | Left::Lost => Err(LeaseError::Stopped),
                }
            }
        };
        Poll::Ready(self.ended(answer))
    }
}

impl<S: 'static> Drop for WaitTicket<S> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Leave the queue, or take the answer given meanwhile: a lease handed to us is dropped
        // here, after the lock, and so released (the pool goes to the next waiter).
        match self.keeper.leave(self.id, None) {
            Left::Queue { .. } => self.record(AcquireEnd::Cancelled),
            Left::Answered(answer) => {
                // Counted as the books count it (a lease handed to us is acquired).
                let answer = self.ended(answer);
                drop(answer);
            }
            // As `poll_wait` answers a lost place.
            Left::Lost => self.record(AcquireEnd::Stopped),
        }
    }
}

impl<S: 'static> Bookkeeper<S> {
    /// Waiter `id`'s answer, if one was left for it; otherwise, while it is queued, `waker` is
    /// the one to wake. A waiter neither answered nor queued lost its place to a panic under
    /// the lock: it is answered `Stopped`, as a stopped manager answers.
    pub(crate) fn answer_for(&self, id: WaiterId, waker: &Waker) -> Option<Answer<S>> {
        let (answer, old_waker) = {
            let mut ledger = self.lock();
            match ledger.take_answer(id) {
                Some(answer) => (Some(answer), None),
                None => match ledger.books.waiter_mut(id) {
                    Some(waiter) => (None, waiter.register(waker)),
                    None => (Some(Err(LeaseError::Stopped)), None),
                },
            }
        };
        drop(old_waker); // after the lock: a waker is user code
        answer
    }

    /// Waiter `id` leaves: out of the queue if it is still there (`timed_out`: because its wait
    /// limit passed, which is counted and logged), else with the answer it was given meanwhile
    /// (the caller drops a lease after the lock, which releases it).
    pub(crate) fn leave(&self, id: WaiterId, timed_out: Option<Duration>) -> Left<S> {
        let left = {
            let mut ledger = self.lock();
            match ledger.books.cancel_waiter(id, timed_out.is_some()) {
                Some(mut waiter) => {
                    // It is leaving of its own accord: nobody to wake.
                    let _waker = waiter.waker.take();
                    Left::Queue { waiter, _waker }
                }
                None => match ledger.take_answer(id) {
                    Some(answer) => Left::Answered(answer),
                    None => Left::Lost,
                },
            }
        };
        if let (Left::Queue { waiter, .. }, Some(waited)) = (&left, timed_out) {
            tracing::debug!(manager = %self.name, owner = waiter.params.owner.as_deref().unwrap_or(""), waited = ?waited, "acquire refused: timed out waiting for a pool");
        }
        left
    }
}

/// How a waiter left (see [`Bookkeeper::leave`]).
pub(crate) enum Left<S: 'static> {
    /// Out of the queue, unanswered (its entry and waker, dropped after the lock).
    Queue {
        waiter: Waiter,
        /// Held only to be dropped after the lock.
        _waker: Option<Waker>,
    },
    /// It had been answered.
    Answered(Answer<S>),
    /// Neither queued nor answered: its place was lost to a panic under the lock.
    Lost,
}
