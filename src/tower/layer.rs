//! [`LeaseLayer`] and [`ManagerLayer`]: what a tower stack is told about its manager and how
//! its requests lease.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::answer::Dialect;
use super::service::{LeaseService, ManagerService};
use super::settings::{Bound, RequestHead, Settings};
use crate::per_request::LeaseConfig;
use crate::LeaseManager;

/// The default limit of a request body read before the lease: 2 MiB (axum's default body
/// limit).
pub const DEFAULT_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The default budget of bytes of request bodies a [`LeaseLayer`] holds before their leases, at
/// once across its requests: 64 MiB.
pub const DEFAULT_BODY_BUDGET: usize = 64 * 1024 * 1024;

/// A tower [`Layer`] that acquires a lease from its manager for every request before the inner
/// service runs, and answers overload itself: **503 with `Retry-After`** (or gRPC
/// `UNAVAILABLE` with a retry pushback, see [`grpc`](Self::grpc)). The lease is in the
/// request's extensions as a [`Leased`](super::Leased); it is released when the inner
/// service's response is ready and every `Leased` clone is gone — or, with
/// [`hold_through_body`](Self::hold_through_body), when the response body ends — or when the
/// request is dropped.
///
/// The request body is read in full **before** the lease is acquired (at most
/// [`body_limit`](Self::body_limit) bytes, 2 MiB by default; longer is a 413, a body that fails
/// a 400; all bodies held at once within [`body_budget`](Self::body_budget), beyond it a 503;
/// a `no_wait` request while no pool is free is a 503 before its body is read), so a slow
/// upload never holds a pool; [`lease_during_body`](Self::lease_during_body)
/// acquires first and passes the body through, for handlers that stream it into the blocking
/// work.
///
/// `poll_ready` is the inner service's: no lease is reserved there, so a caller that is ready
/// and never calls leaks nothing; the lease is acquired in the call's future, which (tower's
/// usual pattern) holds the readiness of the inner service it took while it waits.
///
/// *Available with the cargo feature `tower`.*
///
/// ```
/// use std::time::Duration;
/// use leasepool::tower::{LeaseConfig, LeaseLayer};
/// use leasepool::LeaseManager;
///
/// # fn layer() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = LeaseManager::builder().name_prefix("db").max_pools(8).build()?;
/// let layer = LeaseLayer::new(manager)
///     .config(LeaseConfig::timeout(Duration::from_millis(500)))
///     .owner(|head| format!("{} {}", head.method, head.uri.path()));
/// // axum: Router::new().route(…).layer(layer); any tower stack: ServiceBuilder::new().layer(layer)
/// # let _ = layer; Ok(()) }
/// ```
pub struct LeaseLayer<S: 'static = ()> {
    manager: LeaseManager<S>,
    settings: Arc<Settings>,
}

impl<S: 'static> Clone for LeaseLayer<S> {
    fn clone(&self) -> Self {
        Self {
            manager: self.manager.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S: 'static> fmt::Debug for LeaseLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseLayer")
            .field("manager", &self.manager.name())
            .field("config", &self.settings.config)
            .field("body_first", &self.settings.body_first)
            .field("hold_through_body", &self.settings.hold_through_body)
            .field("dialect", &self.settings.dialect)
            .finish()
    }
}

impl<S: 'static> LeaseLayer<S> {
    /// Leases from `manager` (start it before serving), with the default [`LeaseConfig`].
    pub fn new(manager: LeaseManager<S>) -> Self {
        Self {
            manager,
            settings: Arc::new(Settings {
                config: LeaseConfig::default(),
                owner: None,
                body_first: Some(DEFAULT_BODY_LIMIT),
                budget: Arc::new(tokio::sync::Semaphore::new(DEFAULT_BODY_BUDGET)),
                body_timeout: None,
                hold_through_body: false,
                dialect: Dialect::Json,
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        change(Arc::make_mut(&mut self.settings));
        self
    }

    /// How requests acquire: wait or fail fast, the lease's lifetime, the `Retry-After` (fixed
    /// or estimated from the pools). A config that names a manager
    /// ([`LeaseConfig::manager`]) must name this layer's: otherwise every request is a 500
    /// naming both (never a lease from another manager).
    pub fn config(self, config: LeaseConfig) -> Self {
        self.with(|s| s.config = config)
    }

    /// The owner label of each request's lease (default: `METHOD /path`).
    pub fn owner(self, f: impl Fn(&RequestHead<'_>) -> String + Send + Sync + 'static) -> Self {
        self.with(|s| s.owner = Some(Arc::new(f)))
    }

    /// The most bytes of a request body read before the lease (default
    /// [`DEFAULT_BODY_LIMIT`]); a longer body is answered 413 and never leased for.
    pub fn body_limit(self, bytes: usize) -> Self {
        self.with(|s| s.body_first = Some(bytes))
    }

    /// The most bytes of request bodies held before their leases at once, across this layer's
    /// requests (default [`DEFAULT_BODY_BUDGET`]): a body that would go over it is answered
    /// 503 with `Retry-After` at once — overload shows as 503s, not as memory.
    pub fn body_budget(self, bytes: usize) -> Self {
        let permits = bytes.min(tokio::sync::Semaphore::MAX_PERMITS);
        self.with(|s| s.budget = Arc::new(tokio::sync::Semaphore::new(permits)))
    }

    /// The longest a request body may take to arrive before the lease (default: no limit, as
    /// hyper and axum); slower is answered 408 and takes no lease.
    pub fn body_timeout(self, limit: std::time::Duration) -> Self {
        self.with(|s| s.body_timeout = Some(limit))
    }

    /// Acquire before the body is read and pass the body through as it arrives: for a handler
    /// that streams the upload into the blocking work. A slow client then holds the lease.
    pub fn lease_during_body(self) -> Self {
        self.with(|s| s.body_first = None)
    }

    /// Keep the lease until the response body has ended (or is dropped), not only until the
    /// response is ready: for a body produced by blocking work that does not hold a `Leased`
    /// itself. A slow reader then holds the lease.
    pub fn hold_through_body(self) -> Self {
        self.with(|s| s.hold_through_body = true)
    }

    /// Answer in gRPC's Trailers-Only form (for tonic and other gRPC servers): HTTP 200 with
    /// `grpc-status` 14 (`UNAVAILABLE`) and `grpc-retry-pushback-ms` for overload, 13
    /// (`INTERNAL`) for a failure or wiring mistake, 8 (`RESOURCE_EXHAUSTED`) for a body over
    /// the limit, 3 (`INVALID_ARGUMENT`) for a body that failed.
    ///
    /// It also acquires before the body and streams it through (as
    /// [`lease_during_body`](Self::lease_during_body)): a gRPC request stream may stay open
    /// until the server answers (bidirectional streaming), so reading it first could wait for
    /// ever. Call [`body_limit`](Self::body_limit) after it to read unary requests first.
    pub fn grpc(self) -> Self {
        self.with(|s| {
            s.dialect = Dialect::Grpc;
            s.body_first = None;
        })
    }
}

impl<I, S: 'static> Layer<I> for LeaseLayer<S> {
    type Service = LeaseService<I, S>;

    fn layer(&self, inner: I) -> LeaseService<I, S> {
        LeaseService::new(inner, self.manager.clone(), Arc::clone(&self.settings))
    }
}

/// A tower [`Layer`] that acquires nothing itself: it binds a manager (and a [`LeaseConfig`])
/// to the requests below it, for the axum extractors [`Leased`](super::Leased) and
/// [`LeasedAfter`](super::LeasedAfter) to lease from — per route, after the body if the
/// handler asks so. The layer nearest the route wins, so a router-wide binding can be
/// overridden per route, and two managers of one state type are never confused: each request
/// sees exactly the manager bound nearest to its handler.
///
/// *Available with the cargo feature `tower`.*
pub struct ManagerLayer<S: 'static = ()> {
    bound: Bound<S>,
}

impl<S: 'static> Clone for ManagerLayer<S> {
    fn clone(&self) -> Self {
        Self {
            bound: self.bound.clone(),
        }
    }
}

impl<S: 'static> fmt::Debug for ManagerLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerLayer")
            .field("manager", &self.bound.manager.name())
            .field("config", &self.bound.config)
            .finish()
    }
}

impl<S: 'static> ManagerLayer<S> {
    /// Binds `manager`, with the default [`LeaseConfig`].
    pub fn new(manager: LeaseManager<S>) -> Self {
        Self {
            bound: Bound {
                manager,
                config: Arc::new(LeaseConfig::default()),
            },
        }
    }

    /// How the extractors acquire from it.
    pub fn config(mut self, config: LeaseConfig) -> Self {
        self.bound.config = Arc::new(config);
        self
    }
}

impl<I, S: 'static> Layer<I> for ManagerLayer<S> {
    type Service = ManagerService<I, S>;

    fn layer(&self, inner: I) -> ManagerService<I, S> {
        ManagerService::new(inner, self.bound.clone())
    }
}
