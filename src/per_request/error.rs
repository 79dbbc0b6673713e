//! [`LeasedError`]: why a request got no lease, and the [`Answer`] a server sends for it —
//! the same for actix-web, tower and axum.

use super::LeaseConfig;
use crate::LeaseError;
pub use leasepool_actors::Answer;

/// Why a request got no lease (from actix-web's `Leased` or `LeasedAfter`, or tower's
/// `LeaseLayer` and axum's extractors). As a response: overload
/// (`Unavailable`, `Timeout`, `NotStarted`, `Stopped`, `NoHealthyPool`) is a **503** with the
/// route's `Retry-After`; a missing, wrong or ambiguous manager, or conflicting
/// [`LeaseConfig`]s, is a server bug, a **500**
/// (body `{"error":"misconfigured"}`; the details are logged, not sent).
///
/// *Available with the cargo feature `web` or `tower`.*
///
/// ```
/// use leasepool::web::LeasedError;
///
/// let missing = LeasedError::MissingManager { manager: "leasepool::LeaseManager<app::Db>" };
/// assert_eq!(missing.answer().status, 500);
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
    /// No `LeaseManager<S>` of the extractor's `S` is where it looks (actix-web: `app_data`;
    /// tower and axum: the request's extensions, put there by a `LeaseLayer` or a
    /// `ManagerLayer`): a configuration mistake.
    #[error("no {manager} for this request: with actix-web put it in app_data (App::app_data(web::Data::new(manager))), with tower or axum add a LeaseLayer or ManagerLayer of it")]
    MissingManager {
        /// The full type name of the manager that was looked for.
        manager: &'static str,
    },
    /// The route's [`LeaseConfig::manager`](super::LeaseConfig::manager) names a manager that
    /// is not one it can reach (actix-web: not in `app_data`; tower: not the layer's): a
    /// configuration mistake (the route never falls back to another).
    #[error("the route leases from the {manager} named {wanted:?}, but it can reach only {available:?}: with actix-web add it to the Managers registry, with tower bind it with the route's layer")]
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

impl LeasedError {
    /// The answer for this error: overload is a 503 with the route's hint (the process-wide
    /// one if the route has none), everything else a 500; a wiring mistake is
    /// `{"error":"misconfigured"}` (its details are for the logs).
    pub fn answer(&self) -> Answer {
        match self {
            LeasedError::Acquire { error, retry_after } => error.answer(*retry_after),
            _ => Answer {
                status: 500,
                retry_after: None,
                code: "misconfigured",
                body: r#"{"error":"misconfigured"}"#.to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn overload_is_a_503_with_the_routes_hint_and_the_rest_a_500() {
        let busy = LeasedError::Acquire {
            error: LeaseError::Timeout(Duration::from_secs(1)),
            retry_after: Some(7),
        };
        let a = busy.answer();
        assert_eq!((a.status, a.retry_after, a.code), (503, Some(7), "timeout"));
        assert_eq!(a.body, r#"{"error":"timeout","retry_after":7}"#);
        let failed = LeaseError::WorkerLost.answer(Some(7));
        assert_eq!((failed.status, failed.retry_after), (500, None));
        assert_eq!(failed.body, r#"{"error":"worker_lost"}"#);
        let wiring = LeasedError::MissingManager { manager: "M" }.answer();
        assert_eq!((wiring.status, wiring.code), (500, "misconfigured"));
        assert!(!wiring.body.contains('M'));
    }

    #[test]
    fn without_a_route_hint_the_process_wide_one_is_sent() {
        let a = LeaseError::Unavailable.answer(None);
        assert_eq!(a.status, 503);
        assert!(a.retry_after.is_some_and(|s| s >= 1));
    }
}
