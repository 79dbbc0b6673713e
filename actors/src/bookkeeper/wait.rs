//! A queued acquirer's place in line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::Bookkeeper;
use crate::books::{WaitMode, WaiterId};
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::metrics::AcquireEnd;

/// A queued acquirer's place in line: poll it until it yields a lease or an error. Dropping it
/// leaves the queue. It is polled in place (no boxed future), so a waiter costs little memory.
pub struct WaitTicket<S: 'static> {
    id: WaiterId,
    /// Set once an answer was taken, so Drop need not look for us in the queue.
    answered: bool,
    answer: oneshot::Receiver<Result<LeaseCore<S>, LeaseError>>,
    keeper: Arc<Bookkeeper<S>>,
    timers: tokio::runtime::Handle,
    limit: Option<Duration>,
    /// Created on first poll of a timed wait; boxed so untimed waiters do not carry it.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer fired but a pool was handed to us at that moment: only the answer is awaited.
    expired: bool,
    /// When the wait began, if a metrics recorder wants to know how long it lasted.
    since: Option<Instant>,
}

impl<S: 'static> WaitTicket<S> {
    pub(crate) fn new(
        id: WaiterId,
        answer: oneshot::Receiver<Result<LeaseCore<S>, LeaseError>>,
        keeper: Arc<Bookkeeper<S>>,
        timers: tokio::runtime::Handle,
        mode: WaitMode,
    ) -> Self {
        let limit = match mode {
            WaitMode::Timeout(d) => Some(d),
            WaitMode::Forever | WaitMode::NoWait => None,
        };
        Self {
            id,
            answered: false,
            answer,
            timers,
            limit,
            sleep: None,
            expired: false,
            since: keeper.counters.metrics.enabled().then(Instant::now),
            keeper,
        }
    }

    /// The wait is over: records how it ended (and how long it took) for metrics.
    fn ended<T>(&mut self, answer: &Result<T, LeaseError>) {
        self.answered = true;
        self.record(AcquireEnd::of(answer));
    }

    fn record(&self, end: AcquireEnd) {
        let waited = self.since.map_or(Duration::ZERO, |t| t.elapsed());
        self.keeper.counters.metrics.acquire_waited(end, waited);
    }

    /// Polls for the answer, enforcing the wait limit.
    pub fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Result<LeaseCore<S>, LeaseError>> {
        if self.answered {
            return Poll::Ready(Err(LeaseError::Stopped));
        }
        // The receiver is polled first: an answer that raced with the timer wins.
        if let Poll::Ready(answer) = Pin::new(&mut self.answer).poll(cx) {
            let answer = answer.unwrap_or(Err(LeaseError::Stopped));
            self.ended(&answer);
            return Poll::Ready(answer);
        }
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        if self.expired {
            return Poll::Pending;
        }
        let timers = &self.timers;
        let sleep = self.sleep.get_or_insert_with(|| {
            // The timer lives on the host runtime, so waiting works from any executor or thread.
            let _guard = timers.enter();
            Box::pin(tokio::time::sleep(limit))
        });
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if self.keeper.cancel_waiter(self.id, Some(limit)) {
            let answer = Err(LeaseError::Timeout(limit));
            self.ended(&answer);
            return Poll::Ready(answer);
        }
        // Picked at the last moment: the answer is on its way; the receiver is registered.
        self.expired = true;
        Poll::Pending
    }
}

impl<S: 'static> Drop for WaitTicket<S> {
    fn drop(&mut self) {
        // Leave the queue before the receiver goes, so no pool is handed to a dead waiter; a
        // lease already sent to us is dropped with the receiver and so released.
        if !self.answered {
            if self.keeper.cancel_waiter(self.id, None) {
                self.record(AcquireEnd::Cancelled);
            } else {
                // Answered as we left: counted as the books count it (a lease handed to us
                // is acquired, and released as its handle drops here).
                let end = match self.answer.try_recv() {
                    Ok(answer) => AcquireEnd::of(&answer),
                    // As `poll_wait` answers a closed channel.
                    Err(oneshot::error::TryRecvError::Closed) => AcquireEnd::Stopped,
                    // Picked and not answered yet: most likely a lease (as the books count).
                    Err(oneshot::error::TryRecvError::Empty) => AcquireEnd::Acquired,
                };
                self.record(end);
            }
        }
    }
}
