//! What a layer's services are told: the settings of a [`LeaseLayer`](super::LeaseLayer), the
//! manager a [`ManagerLayer`](super::ManagerLayer) binds, and what an owner function sees.

use std::sync::Arc;

use http::{Extensions, HeaderMap, Method, Uri};

use super::answer::Dialect;
use crate::per_request::LeaseConfig;
use crate::LeaseManager;

/// What an owner function sees of a request.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI.
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (axum's `MatchedPath` is there for a route's own layer).
    pub extensions: &'a Extensions,
}

pub(super) type OwnerFn = Arc<dyn Fn(&RequestHead<'_>) -> String + Send + Sync>;

/// The settings a [`LeaseLayer`] gives each of its services.
#[derive(Clone)]
pub(super) struct Settings {
    pub(super) config: LeaseConfig,
    pub(super) owner: Option<OwnerFn>,
    /// `Some(limit)`: read the body (at most `limit` bytes) before the lease.
    pub(super) body_first: Option<usize>,
    /// Bytes of bodies read before their lease, across the layer's requests.
    pub(super) budget: Arc<tokio::sync::Semaphore>,
    /// The longest a body may take to arrive before the lease (`None`: no limit).
    pub(super) body_timeout: Option<std::time::Duration>,
    pub(super) hold_through_body: bool,
    pub(super) dialect: Dialect,
}

impl Settings {
    /// The owner label of a request: the owner function's, else `METHOD /path`.
    pub(super) fn owner(&self, head: &RequestHead<'_>) -> String {
        match &self.owner {
            Some(f) => f(head),
            None => format!("{} {}", head.method, head.uri.path()),
        }
    }
}

/// A manager bound to a request (in its extensions) by a [`ManagerLayer`](super::ManagerLayer).
pub(crate) struct Bound<S: 'static> {
    pub(crate) manager: LeaseManager<S>,
    pub(crate) config: Arc<LeaseConfig>,
}

impl<S: 'static> Clone for Bound<S> {
    fn clone(&self) -> Self {
        Self {
            manager: self.manager.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

/// The lease a request may use, given the `Leased` already in its extensions (from a
/// `LeaseLayer`) and the manager it is bound to (or the layer's): reuse the lease if it is from
/// that manager; a lease from another manager, or a config naming another, is a wiring mistake
/// — never a job on the wrong pool. `Ok(None)`: acquire from `manager`.
pub(super) fn lease_to_use<S: 'static>(
    present: Option<&super::leased::Leased<S>>,
    manager: &LeaseManager<S>,
    config: &LeaseConfig,
) -> Result<Option<super::leased::Leased<S>>, crate::per_request::LeasedError> {
    let wrong = |wanted: &str| crate::per_request::LeasedError::WrongManager {
        manager: std::any::type_name::<LeaseManager<S>>(),
        wanted: wanted.to_owned(),
        available: vec![manager.name().to_owned()],
    };
    if let Some(wanted) = config.manager.as_deref().filter(|w| *w != manager.name()) {
        return Err(wrong(wanted));
    }
    match present {
        Some(lease) if lease.manager_name() != manager.name() => Err(wrong(lease.manager_name())),
        Some(lease) => Ok(Some(lease.clone())),
        None => Ok(None),
    }
}
