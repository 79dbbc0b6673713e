//! The acquire path: a lease at once, a place in the queue, or a refusal — and leaving the
//! queue.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::wait::WaitTicket;
use super::{Bookkeeper, LeaseParams, Waiter};
use crate::books::{Acquired, WaitMode, WaiterId};
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::metrics::AcquireEnd;

impl<S: 'static> Bookkeeper<S> {
    /// The synchronous part of an acquire: a lease at once, a place in the queue, or a refusal.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        params: LeaseParams,
        mode: WaitMode,
    ) -> Result<Result<LeaseCore<S>, WaitTicket<S>>, LeaseError> {
        // Nothing is logged under the lock: a subscriber is user code.
        let (outcome, deferred, refused) = {
            let mut ledger = self.lock();
            let mut fx = ledger.take_fx();
            let mut answer = None;
            let mut refused = None;
            let attempt = ledger.books.acquire(
                mode,
                || {
                    let (reply, receiver) = oneshot::channel();
                    answer = Some(receiver);
                    Waiter {
                        reply,
                        params: params.clone(),
                    }
                },
                &mut fx,
            );
            let outcome = match attempt {
                Ok(Acquired::Now {
                    lease,
                    pool,
                    handle,
                }) => Ok(Ok(self.make_lease(
                    &mut ledger,
                    lease,
                    pool,
                    handle,
                    params,
                ))),
                Ok(Acquired::Queued(id)) => {
                    let timers = ledger.run.as_ref().map(|r| r.timers.clone());
                    match (answer, timers) {
                        (Some(answer), Some(timers)) => Ok(Err(WaitTicket::new(
                            id,
                            answer,
                            Arc::clone(self),
                            timers,
                            mode,
                        ))),
                        _ => Err(LeaseError::NotStarted),
                    }
                }
                Err(error) => {
                    refused = Some(params.owner);
                    Err(error)
                }
            };
            (outcome, self.apply(&mut ledger, fx), refused)
        };
        deferred.run(self);
        if !matches!(outcome, Ok(Err(_))) {
            // Answered without queueing: no wait worth a clock read.
            self.counters
                .metrics
                .acquire_at_once(AcquireEnd::of(&outcome));
        }
        match (&outcome, refused) {
            (Ok(Ok(core)), _) => self.granted(core),
            (Err(error), Some(owner)) => {
                // The reason is only formatted if the event is enabled: a flood of refusals
                // costs no allocation for a log nobody reads.
                let reason = Refusal { error, mode };
                tracing::debug!(manager = %self.name, owner = owner.as_deref().unwrap_or(""), reason = %reason, "acquire refused: {}", error.code());
            }
            _ => {}
        }
        outcome
    }

    /// A waiter gave up; its place is freed. Logs a timeout.
    pub(crate) fn cancel_waiter(&self, id: WaiterId, timed_out: Option<Duration>) -> bool {
        let waiter = self.lock().books.cancel_waiter(id, timed_out.is_some());
        if let (Some(waiter), Some(waited)) = (&waiter, timed_out) {
            tracing::debug!(manager = %self.name, owner = waiter.params.owner.as_deref().unwrap_or(""), waited = ?waited, "acquire refused: timed out waiting for a pool");
        }
        waiter.is_some()
    }
}

/// Why an acquire was refused, for the log.
struct Refusal<'a> {
    error: &'a LeaseError,
    mode: WaitMode,
}

impl std::fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.error {
            LeaseError::Unavailable if self.mode == WaitMode::NoWait => {
                f.write_str("no_wait and no pool free")
            }
            LeaseError::Unavailable => {
                f.write_str("no pool free and the waiter queue is full (max_waiters)")
            }
            other => other.fmt(f),
        }
    }
}
