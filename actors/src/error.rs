//! Errors: `BuildError` for settings out of range, `LeaseError` for runtime outcomes.

use std::time::Duration;

use crate::metrics::{AcquireEnd, JobEnd};
use crate::stats::Backend;

/// Most worker threads one manager may run (`max_pools * workers_per_pool`).
pub const MAX_TOTAL_WORKERS: usize = 10_000;

/// A setting that `build()` refused. The text names the setting and the value.
///
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// A count that must be at least 1 was 0.
    #[error("{setting} must be at least 1 (got 0)")]
    Zero {
        /// The setting's builder method name.
        setting: &'static str,
    },
    /// A duration that must be positive was zero.
    #[error("{setting} must be greater than zero (got 0s)")]
    ZeroDuration {
        /// The setting's builder method name.
        setting: &'static str,
    },
    /// A duration is below the smallest the setting supports.
    #[error("{setting} must be at least {min:?} (got {got:?})")]
    TooShort {
        /// The setting's builder method name.
        setting: &'static str,
        /// The smallest value accepted.
        min: std::time::Duration,
        /// The value given.
        got: std::time::Duration,
    },
    /// A size is below the smallest the setting supports.
    #[error("{setting} must be at least {min} (got {got})")]
    TooSmall {
        /// The setting's builder method name.
        setting: &'static str,
        /// The smallest value accepted.
        min: u64,
        /// The value given.
        got: u64,
    },
    /// `min_pools` is larger than `max_pools`.
    #[error("min_pools ({min_pools}) exceeds max_pools ({max_pools})")]
    MinAboveMax {
        /// The `min_pools` given.
        min_pools: usize,
        /// The `max_pools` given.
        max_pools: usize,
    },
    /// `max_pools * workers_per_pool` is more threads than one manager may run.
    #[error(
        "max_pools ({max_pools}) x workers_per_pool ({workers_per_pool}) = {total} worker threads exceeds the limit of {limit}"
    )]
    TooManyThreads {
        /// The `max_pools` given.
        max_pools: usize,
        /// The `workers_per_pool` given.
        workers_per_pool: usize,
        /// Their product (saturating).
        total: usize,
        /// [`MAX_TOTAL_WORKERS`].
        limit: usize,
    },
    /// The name prefix cannot name threads.
    #[error("name_prefix {0:?} is invalid: it must be non-empty and contain no NUL byte")]
    InvalidNamePrefix(String),
    /// The backend is not available in this build or on this platform; the text says why.
    #[error("backend {backend} is not available: {why}")]
    UnsupportedBackend {
        /// The backend asked for.
        backend: Backend,
        /// Why not (a missing cargo feature, the platform).
        why: String,
    },
    /// The process backend was asked for without `process_jobs`.
    #[error("Backend::Process needs process_jobs(..): the jobs its worker children can run")]
    MissingProcessJobs,
    /// The process backend's worker program cannot be used; the text says why.
    #[error("worker program: {0}")]
    WorkerProgram(String),
    /// Two process jobs were registered under one `NAME`.
    #[error("two process jobs are registered under the name {0:?}")]
    DuplicateJobName(&'static str),
}

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
    /// The worker died while the job ran — its thread, or on the process backend its child
    /// (a crash, a kill, the memory limit) — or the job's answer was lost with it: the job may
    /// have run in part or to the end. Not safe to retry blindly (HTTP 500). A job that never
    /// started answers [`NeverRan`](LeaseError::NeverRan) instead.
    #[error("the worker was lost while the job ran (a crash or a kill): it may have run in part")]
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
    /// No pool can serve, because no worker can start: the text is the last failure — the
    /// worker state factory's error (`worker state factory failed: …`) or panic, or a thread
    /// that could not be spawned. Acquires fail with it at once instead of waiting for a
    /// factory that keeps failing; they succeed again as soon as a worker builds its state.
    /// `start` fails with it when not one worker could start (unless `start_degraded`).
    #[error("no pool can serve: {0}")]
    NoHealthyPool(String),
    /// The job never started: its pool lost its last worker, the pool or the lease's
    /// manager stopped, or its lease was revoked, while the job waited in the pool's queue (or
    /// it was sent to a pool already in that state). Nothing of it ran: safe to retry (HTTP 503
    /// with `Retry-After`; the durable queue puts such a task back without counting an
    /// attempt).
    #[error("the job never started: its worker or pool was lost, or its lease revoked, before it ran; safe to retry")]
    NeverRan,
    /// A process job could not run or answer — its name is unknown to the worker program, its
    /// input or output does not encode or decode, or it exceeds `max_message_bytes`. The text
    /// names the job. Only this job fails; the child goes on serving.
    #[error("process job failed: {0}")]
    ProcessJob(String),
}

impl LeaseError {
    /// A short, stable, machine-readable name of the error (`"unavailable"`, `"timeout"`, …):
    /// what HTTP bodies and metrics labels carry, never internals such as panic messages.
    pub fn code(&self) -> &'static str {
        match self {
            LeaseError::NotStarted => "not_started",
            LeaseError::Unavailable => "unavailable",
            LeaseError::Timeout(_) => "timeout",
            LeaseError::Stopped => "stopped",
            LeaseError::Expired => "expired",
            LeaseError::Released => "released",
            LeaseError::Panicked(_) => "panicked",
            LeaseError::WorkerLost => "worker_lost",
            LeaseError::StartFailed(_) => "start_failed",
            LeaseError::BlockingOnRuntime(_) => "blocking_on_runtime",
            LeaseError::InvalidArgument(_) => "invalid_argument",
            LeaseError::NoHealthyPool(_) => "no_healthy_pool",
            LeaseError::ProcessJob(_) => "process_job",
            LeaseError::NeverRan => "never_ran",
        }
    }

    /// Whether the error means "cannot serve now, try again later" (HTTP 503) — busy, shutting
    /// down, the workers' dependency is down, or the job never started — rather than a failure
    /// of the work itself (HTTP 500).
    pub fn is_overload(&self) -> bool {
        matches!(
            self,
            LeaseError::NotStarted
                | LeaseError::Unavailable
                | LeaseError::Timeout(_)
                | LeaseError::Stopped
                | LeaseError::StartFailed(_)
                | LeaseError::NoHealthyPool(_)
                | LeaseError::NeverRan
        )
    }
}

static RETRY_AFTER_SECS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Sets the `Retry-After` hint sent with every 503 (whole seconds, at least 1; default 1): the
/// process-wide default of the actix-web and tower integrations.
pub fn set_retry_after(hint: std::time::Duration) {
    RETRY_AFTER_SECS.store(hint.as_secs().max(1), std::sync::atomic::Ordering::Relaxed);
}

/// The current `Retry-After` hint in seconds (see [`set_retry_after`]).
pub fn retry_after_secs() -> u64 {
    RETRY_AFTER_SECS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What an HTTP server answers for an error: status, `Retry-After` and a small JSON body. Pure,
/// so that every server integration (actix-web, tower, axum) answers alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status: 503 for overload, 500 otherwise.
    pub status: u16,
    /// The `Retry-After` header's seconds (503s only).
    pub retry_after: Option<u64>,
    /// The machine-readable code (`"unavailable"`, …), as in the body.
    pub code: &'static str,
    /// The JSON body, such as `{"error":"unavailable","retry_after":1}`: never internals such
    /// as panic messages (those are for the logs).
    pub body: String,
}

impl LeaseError {
    /// The answer for this error: overload ([`is_overload`](Self::is_overload)) is a **503**
    /// with `Retry-After` — `retry_after` seconds if given, else the process-wide hint
    /// ([`set_retry_after`]) — and failures of the work a **500**.
    pub fn answer(&self, retry_after: Option<u64>) -> Answer {
        let code = self.code();
        if self.is_overload() {
            let secs = retry_after.unwrap_or_else(retry_after_secs);
            Answer {
                status: 503,
                retry_after: Some(secs),
                code,
                body: format!(r#"{{"error":"{code}","retry_after":{secs}}}"#),
            }
        } else {
            Answer {
                status: 500,
                retry_after: None,
                code,
                body: format!(r#"{{"error":"{code}"}}"#),
            }
        }
    }
}

/// Overload (`Unavailable`, `Timeout`, `NotStarted`, `Stopped`, a job that `NeverRan`) becomes
/// **503** with a `Retry-After` header; failures of the work (`Expired`, `Released`,
/// `WorkerLost`, `Panicked`, …) become **500** (see [`LeaseError::answer`]).
#[cfg(feature = "web")]
impl actix_web::ResponseError for LeaseError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        actix_web::http::StatusCode::from_u16(self.answer(None).status)
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> actix_web::HttpResponse {
        use actix_web::http::header;
        let answer = self.answer(None);
        let mut response = actix_web::HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, "application/json"));
        match answer.retry_after {
            Some(secs) => {
                response.insert_header((header::RETRY_AFTER, secs.to_string()));
            }
            None => tracing::error!(error = %self, "blocking work failed; answering 500"),
        }
        response.body(answer.body)
    }
}

/// The same answer as an axum response, so that a handler can return `Result<_, LeaseError>`.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for LeaseError {
    fn into_response(self) -> axum_core::response::Response {
        let answer = self.answer(None);
        if answer.retry_after.is_none() {
            tracing::error!(error = %self, "blocking work failed; answering 500");
        }
        answer.into_response()
    }
}

/// An answer as an axum response: its status, `Content-Type: application/json`, its
/// `Retry-After`, its body.
#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Answer {
    fn into_response(self) -> axum_core::response::Response {
        use axum_core::body::Body;
        use http::{header, HeaderValue, StatusCode};
        let mut response = axum_core::response::Response::new(Body::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Which acquire outcome (metrics' `outcome` label) each answer is.
impl AcquireEnd {
    /// The outcome of an acquire that was answered `answer`.
    pub fn of<T>(answer: &Result<T, LeaseError>) -> Self {
        match answer {
            Ok(_) => Self::Acquired,
            Err(LeaseError::Timeout(_)) => Self::Timeout,
            Err(LeaseError::Unavailable) => Self::Unavailable,
            Err(LeaseError::Stopped) => Self::Stopped,
            Err(LeaseError::NotStarted) => Self::NotStarted,
            Err(LeaseError::NoHealthyPool(_)) => Self::NoHealthyPool,
            Err(_) => Self::Invalid,
        }
    }
}

/// Which job outcome (metrics' `outcome` label) each answer is.
impl JobEnd {
    /// How a job that answered `answer` counts; `None` for a job that never ran (`NeverRan`:
    /// counted nowhere, like in [`Counters`](crate::Counters)).
    pub fn of<T>(answer: &Result<T, LeaseError>) -> Option<Self> {
        Some(match answer {
            Ok(_) => Self::Ok,
            Err(LeaseError::Panicked(_)) => Self::Panicked,
            Err(LeaseError::NeverRan) => return None,
            Err(LeaseError::WorkerLost) => Self::WorkerLost,
            Err(LeaseError::Expired) => Self::Expired,
            Err(LeaseError::Stopped) => Self::Stopped,
            Err(_) => Self::Invalid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_acquire_answer_has_its_outcome() {
        let cases = [
            (Ok(()), AcquireEnd::Acquired),
            (
                Err(LeaseError::Timeout(Duration::from_secs(1))),
                AcquireEnd::Timeout,
            ),
            (Err(LeaseError::Unavailable), AcquireEnd::Unavailable),
            (Err(LeaseError::Stopped), AcquireEnd::Stopped),
            (Err(LeaseError::NotStarted), AcquireEnd::NotStarted),
            (
                Err(LeaseError::NoHealthyPool("f".into())),
                AcquireEnd::NoHealthyPool,
            ),
            (
                Err(LeaseError::InvalidArgument("x".into())),
                AcquireEnd::Invalid,
            ),
        ];
        for (answer, end) in cases {
            assert_eq!(AcquireEnd::of(&answer), end, "{answer:?}");
        }
    }

    #[test]
    fn every_job_answer_has_its_outcome() {
        let cases = [
            (Ok(()), Some(JobEnd::Ok)),
            (
                Err(LeaseError::Panicked("p".into())),
                Some(JobEnd::Panicked),
            ),
            (Err(LeaseError::NeverRan), None),
            (Err(LeaseError::WorkerLost), Some(JobEnd::WorkerLost)),
            (Err(LeaseError::Expired), Some(JobEnd::Expired)),
            (Err(LeaseError::Stopped), Some(JobEnd::Stopped)),
            (
                Err(LeaseError::ProcessJob("x".into())),
                Some(JobEnd::Invalid),
            ),
        ];
        for (answer, end) in cases {
            assert_eq!(JobEnd::of(&answer), end, "{answer:?}");
        }
    }
}
