//! [`LeasedError`]: why an extractor gave the handler no lease.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use super::LeaseConfig;
use crate::LeaseError;

#[cfg(doc)]
use super::{Leased, LeasedAfter};

/// Why [`Leased`] or [`LeasedAfter`] gave the handler no lease. As a response: overload
/// (`Unavailable`, `Timeout`, `NotStarted`, `Stopped`, `NoHealthyPool`) is a **503** with the
/// route's `Retry-After`; a missing, wrong or ambiguous manager, or conflicting
/// [`LeaseConfig`]s, is a server bug, a **500**
/// (body `{"error":"misconfigured"}`; the details are logged, not sent).
///
/// *Available with the cargo feature `web`.*
///
/// ```
/// use actix_web::ResponseError;
/// use leasepool::web::LeasedError;
///
/// let missing = LeasedError::MissingManager { manager: "leasepool::LeaseManager<app::Db>" };
/// assert_eq!(missing.status_code().as_u16(), 500);
/// assert!(missing.to_string().contains("LeaseManager<app::Db>"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeasedError {
    /// The acquire failed.
    #[error("{error}")]
    Acquire {
        /// What the acquire answered.
        error: LeaseError,
        /// The route's `Retry-After` hint in seconds, if its `LeaseConfig` sets one.
        retry_after: Option<u64>,
    },
    /// No `LeaseManager<S>` of the extractor's `S` is in `app_data`: a configuration mistake.
    #[error("no {manager} in app_data: register it with App::app_data(web::Data::new(manager))")]
    MissingManager {
        /// The full type name of the manager that was looked for.
        manager: &'static str,
    },
    /// The route's [`LeaseConfig::manager`](super::LeaseConfig::manager) names a manager that
    /// is not in `app_data`: a configuration mistake (the route never falls back to another).
    #[error("the route leases from the {manager} named {wanted:?}, but app_data holds only {available:?}: add it to the Managers registry")]
    WrongManager {
        /// The full type name of the manager that was looked for.
        manager: &'static str,
        /// The name the route asked for.
        wanted: String,
        /// The names of the managers of that type that are there.
        available: Vec<String>,
    },
    /// Several managers of the extractor's type are in `app_data` and the route names none: a
    /// configuration mistake (leasing from either could run a job in the wrong place).
    #[error("{} managers of type {manager} in app_data ({available:?}): name the route's with LeaseConfig::manager(name)", available.len())]
    AmbiguousManager {
        /// The full type name of the manager that was looked for.
        manager: &'static str,
        /// The names of the managers of that type that are there.
        available: Vec<String>,
    },
    /// A [`LeaseConfig`] is in `app_data` both plain and in a `web::Data`, and the two differ:
    /// a configuration mistake (which one the route meant cannot be told).
    #[error("two different LeaseConfig in app_data for this route, a plain one ({plain:?}) and a web::Data one ({data:?}): keep one")]
    ConflictingConfig {
        /// The plain one.
        plain: Box<LeaseConfig>,
        /// The one in `web::Data`.
        data: Box<LeaseConfig>,
    },
}

impl LeasedError {
    /// The acquire's error, if the acquire ran.
    pub fn lease_error(&self) -> Option<&LeaseError> {
        match self {
            LeasedError::Acquire { error, .. } => Some(error),
            _ => None,
        }
    }
}

impl ResponseError for LeasedError {
    fn status_code(&self) -> StatusCode {
        match self {
            LeasedError::Acquire { error, .. } => error.status_code(),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            LeasedError::Acquire {
                error,
                retry_after: Some(secs),
            } if error.is_overload() => HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .insert_header((header::RETRY_AFTER, secs.to_string()))
                .body(format!(
                    r#"{{"error":"{}","retry_after":{secs}}}"#,
                    error.code()
                )),
            LeasedError::Acquire { error, .. } => error.error_response(),
            _ => HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR)
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .body(r#"{"error":"misconfigured"}"#),
        }
    }
}
