//! The acquire path: a lease at once, a place in the queue, or a refusal.

use std::sync::Arc;
use std::task::Waker;

use super::wait::WaitTicket;
use super::{Bookkeeper, LeaseParams, Waiter};
use crate::books::{Acquired, WaitMode};
use crate::error::LeaseError;
use crate::handle::LeaseCore;
use crate::metrics::AcquireEnd;

impl<S: 'static> Bookkeeper<S> {
    /// The synchronous part of an acquire: a lease at once, a place in the queue, or a refusal.
    /// `waker`: whom to wake once a queued acquirer is answered (else its ticket's first poll
    /// says).
    pub(crate) fn acquire(
        self: &Arc<Self>,
        params: LeaseParams,
        mode: WaitMode,
        waker: Option<&Waker>,
    ) -> Result<Result<LeaseCore<S>, WaitTicket<S>>, LeaseError> {
        // Nothing is logged under the lock: a subscriber is user code.
        let (outcome, deferred, refused) = {
            let mut ledger = self.lock();
            let mut fx = ledger.take_fx();
            let mut refused = None;
            let attempt =
                ledger
                    .books
                    .acquire(mode, || Waiter::new(waker, params.clone()), &mut fx);
            let outcome = match attempt {
                Ok(Acquired::Now {
                    lease,
                    pool,
                    handle,
                }) => Ok(Ok(self.make_lease(
                    &mut ledger,
                    (lease, pool),
                    handle,
                    params,
                ))),
                Ok(Acquired::Queued(id)) => {
                    // The host runtime's timers, for a timed wait only.
                    let timers = match mode {
                        WaitMode::Timeout(_) => ledger.run.as_ref().map(|r| r.timers.clone()),
                        WaitMode::Forever | WaitMode::NoWait => None,
                    };
                    Ok(Err(WaitTicket::new(
                        id,
                        Arc::clone(self),
                        timers,
                        mode,
                        waker.is_some(),
                    )))
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
