//! What the actix-web and tower integrations share: how a request's lease is acquired
//! ([`LeaseConfig`]), why a request got none ([`LeasedError`]) and what a server answers for
//! that ([`Answer`]).

mod config;
mod error;

pub use config::LeaseConfig;
#[cfg(feature = "tower")]
pub(crate) use config::Wait;
pub use error::{Answer, LeasedError};
pub use leasepool_actors::{retry_after_secs, set_retry_after};

use crate::{Lease, LeaseManager};

/// Acquires a request's lease from `manager` as `config` says; a failure carries the route's
/// `Retry-After` hint.
pub(crate) async fn acquire<S: 'static>(
    manager: &LeaseManager<S>,
    config: &LeaseConfig,
    owner: String,
) -> Result<Lease<S>, LeasedError> {
    config
        .acquire(manager, owner)
        .await
        .map_err(|error| LeasedError::Acquire {
            retry_after: config.hint(&error, manager),
            error,
        })
}
