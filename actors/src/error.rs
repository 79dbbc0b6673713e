//! Runtime outcomes of acquiring leases and running jobs.

use std::time::Duration;

/// Why an acquire, a job or a lease operation did not produce its value.
///
/// Every job submitted to a lease resolves exactly once: with its own value, or with one of
/// these. The `Display` text is lowercase and names what was involved.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The manager has not been started, or has been stopped.
    #[error("lease manager is not started")]
    NotStarted,
    /// `no_wait` was asked and no pool was free, or the waiter queue (`max_waiters`) is full.
    #[error(
        "no pool is available (all leased and the waiter queue is full or waiting was not allowed)"
    )]
    Unavailable,
    /// The acquire waited this long without getting a pool.
    #[error("timed out after {0:?} waiting for a pool")]
    Timeout(Duration),
    /// The manager was stopped while this acquire was waiting, or it revoked this lease.
    #[error("lease manager was stopped")]
    Stopped,
    /// The lease passed its hard expiry (`lease_for` + `lease_grace`) and was revoked.
    #[error("lease expired and was revoked")]
    Expired,
    /// The lease was already released (it may still be draining running jobs).
    #[error("lease was already released")]
    Released,
    /// The job panicked; the payload's message is kept.
    #[error("job panicked: {0}")]
    Panicked(String),
    /// The worker or pool died, or the queued job was dropped when its lease was revoked.
    #[error(
        "the worker running the job was lost (pool died or lease revoked before the job started)"
    )]
    WorkerLost,
    /// The manager could not start (for example, the host thread could not be spawned).
    #[error("lease manager failed to start: {0}")]
    StartFailed(String),
    /// A blocking call (`submit_blocking`) was made on an async runtime thread, where it would
    /// block the runtime (and could deadlock it).
    #[error(
        "{0} was called on an async runtime thread, where it would block; use its async form there"
    )]
    BlockingOnRuntime(&'static str),
    /// An argument passed to an acquire or a job call is invalid; the text names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
