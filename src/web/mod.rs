//! actix-web integration (feature `web`): overload becomes 503 + `Retry-After`, and a lease per
//! request through the [`Leased`] and [`LeasedAfter`] extractors.
//!
//! *Available with the cargo feature `web`.*
//!
//! `LeaseError` implements `actix_web::ResponseError`: `Unavailable`, `Timeout`, `NotStarted`,
//! `Stopped`, `StartFailed`, `NoHealthyPool` and `NeverRan` (the job never started: safe to
//! retry) answer **503** with `Retry-After` (see [`set_retry_after`], or
//! [`LeaseConfig::retry_after`] per route); `Expired`, `Released`, `WorkerLost` (the worker died
//! while the job ran) and `Panicked` answer **500**. Bodies are small JSON objects such as
//! `{"error":"unavailable","retry_after":1}` and never carry panic messages (those are logged).
//!
//! # Settings for a lease per request
//!
//! With `Leased`, every request that runs blocking work holds a whole pool for the handler's
//! duration, so the manager's settings read as request concurrency:
//! - `max_pools(n)`: how many such requests run at once (the default, 1, serves one at a time);
//! - `workers_per_pool(1)`: one job at a time per request is the common case; more workers only
//!   help a handler that submits several jobs in parallel (and every pool starts all its threads);
//! - `min_pools(k)`: pools kept warm for the first `k` concurrent requests;
//! - `max_waiters(m)` and [`LeaseConfig::timeout`]: how many requests may queue, and how long.
//!
//! Consecutive `send`s or `run`s on one lease may reach different workers of its pool: a
//! transaction spread over several messages on per-worker state (a database connection per
//! worker) needs `workers_per_pool(1)`.
//!
//! # Several managers
//!
//! An app with two managers of one state type (threads for quick calls, worker processes for
//! crash-prone jobs) registers them in a [`Managers`] registry and names each route's manager
//! with [`LeaseConfig::manager`]: a wiring mistake is a 500 naming it, never a silent swap.
//!
//! ```
//! use std::time::Duration;
//! use actix_web::{web, App, HttpResponse};
//! use leasepool::web::{LeaseConfig, Leased};
//! use leasepool::{LeaseError, LeaseManager};
//!
//! async fn report(lease: Leased) -> Result<HttpResponse, LeaseError> {
//!     let pdf = lease.run(|| vec![0u8; 16] /* a blocking renderer */).await?;
//!     Ok(HttpResponse::Ok().body(pdf))
//! }
//!
//! # fn app() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = LeaseManager::builder()
//!     .max_pools(8)         // 8 requests render at once
//!     .min_pools(2)         // 2 pools warm
//!     .workers_per_pool(1)  // one job per request
//!     .max_waiters(64)      // 64 more may wait; beyond that, 503 at once
//!     .build()?;
//! let data = web::Data::new(manager); // start() it before HttpServer::run
//! let _app = App::new()
//!     .app_data(data.clone())
//!     .app_data(LeaseConfig::timeout(Duration::from_millis(500)))
//!     .route("/report", web::get().to(report));
//! # Ok(()) }
//! ```

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

mod error;
mod managers;

pub use crate::per_request::{retry_after_secs, set_retry_after, Answer, LeaseConfig, LeasedError};
pub use managers::{DuplicateManager, Managers};

use crate::{Lease, LeaseManager};

/// A lease held for one request. Extract it in a handler; it is released when the handler's
/// future ends (dropped with the request). Its owner label is the request's method and matched
/// route, such as `GET /devices/{id}/status`.
///
/// *Available with the cargo feature `web`.*
///
/// Needs the manager in `app_data`, as `web::Data<LeaseManager<S>>` or a plain
/// `LeaseManager<S>`; without one the extractor answers 500 and logs the manager type it looked
/// for (a configuration mistake is not overload).
///
/// **Routes with a request body: use [`LeasedAfter`].** actix-web runs a handler's extractors
/// concurrently, so `Leased` next to `web::Json<T>` (in any order) acquires the lease while the
/// body is still uploading: a slow client then holds a whole pool doing nothing, and a few of
/// them can take every pool. `LeasedAfter<web::Json<T>>` extracts the body first and leases
/// only once it is in.
///
/// See the [module docs](self) for the manager settings that fit a lease per request.
///
/// ```
/// use actix_web::{web, App, HttpResponse};
/// use leasepool::web::{LeaseConfig, Leased};
/// use leasepool::{LeaseError, LeaseManager};
/// use std::time::Duration;
///
/// async fn status(lease: Leased, path: web::Path<u32>) -> Result<HttpResponse, LeaseError> {
///     let id = path.into_inner();
///     let text = lease.run(move || format!("device {id}: ok")).await?; // blocking SDK call
///     Ok(HttpResponse::Ok().body(text))
/// }
///
/// # fn app(manager: LeaseManager) {
/// let _app = App::new()
///     .app_data(web::Data::new(manager))
///     .app_data(LeaseConfig::timeout(Duration::from_millis(500)))
///     .route("/devices/{id}/status", web::get().to(status));
/// # }
/// ```
pub struct Leased<S: 'static = ()>(pub Lease<S>);

impl<S: 'static> std::fmt::Debug for Leased<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Leased").field(&self.0).finish()
    }
}

impl<S: 'static> Leased<S> {
    /// The lease itself.
    pub fn into_inner(self) -> Lease<S> {
        self.0
    }
}

impl<S: 'static> Deref for Leased<S> {
    type Target = Lease<S>;

    fn deref(&self) -> &Lease<S> {
        &self.0
    }
}

/// What one request's acquire needs, taken from the request up front.
struct RequestAcquire<S: 'static> {
    manager: Result<LeaseManager<S>, LeasedError>,
    config: LeaseConfig,
    owner: String,
}

impl<S: 'static> RequestAcquire<S> {
    fn new(req: &HttpRequest) -> Self {
        let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
        let owner = format!("{} {route}", req.method());
        match route_config(req) {
            Ok(config) => Self {
                manager: route_manager(req, config.manager.as_deref()),
                config,
                owner,
            },
            Err(e) => Self {
                manager: Err(e),
                config: LeaseConfig::default(),
                owner,
            },
        }
    }

    async fn run(self) -> Result<Lease<S>, LeasedError> {
        let manager = match self.manager {
            Ok(manager) => manager,
            Err(e) => {
                tracing::error!(owner = %self.owner, error = %e, "Leased extractor: answering 500");
                return Err(e);
            }
        };
        crate::per_request::acquire(&manager, &self.config, self.owner).await
    }
}

/// The route's [`LeaseConfig`]: the one in `app_data`, plain or in a `web::Data` (the
/// default if neither). Both there and different is a wiring mistake that no rule could settle
/// (actix finds each kind in its own innermost scope): [`LeasedError::ConflictingConfig`].
fn route_config(req: &HttpRequest) -> Result<LeaseConfig, LeasedError> {
    let plain = req.app_data::<LeaseConfig>();
    let data = req
        .app_data::<web::Data<LeaseConfig>>()
        .map(|d| d.get_ref());
    match (plain, data) {
        (Some(plain), Some(data)) if plain != data => Err(LeasedError::ConflictingConfig {
            plain: Box::new(plain.clone()),
            data: Box::new(data.clone()),
        }),
        (Some(one), _) | (None, Some(one)) => Ok(one.clone()),
        (None, None) => Ok(LeaseConfig::default()),
    }
}

/// The manager a route leases from: the one it names, or the app's only one (see
/// [`managers::pick`]). Every place a manager of type `S` can be in `app_data` counts —
/// `web::Data<LeaseManager<S>>`, a plain `LeaseManager<S>`, and every entry of a
/// `Managers<S>` registry, in `web::Data` or plain — each manager once however often it is
/// there.
fn route_manager<S: 'static>(
    req: &HttpRequest,
    wanted: Option<&str>,
) -> Result<LeaseManager<S>, LeasedError> {
    let singles = [
        req.app_data::<web::Data<LeaseManager<S>>>()
            .map(|data| data.get_ref()),
        req.app_data::<LeaseManager<S>>(),
    ];
    let registries = [
        req.app_data::<web::Data<Managers<S>>>()
            .map(|data| data.get_ref()),
        req.app_data::<Managers<S>>(),
    ];
    let mut distinct: Vec<&LeaseManager<S>> = Vec::new();
    let all = singles
        .into_iter()
        .flatten()
        .chain(registries.into_iter().flatten().flat_map(Managers::all));
    for candidate in all {
        if !distinct.iter().any(|m| m.same_as(candidate)) {
            distinct.push(candidate);
        }
    }
    let names: Vec<&str> = distinct.iter().map(|m| m.name()).collect();
    let manager = std::any::type_name::<LeaseManager<S>>();
    let at = managers::pick(manager, wanted, &names)?;
    Ok(distinct[at].clone())
}

impl<S: 'static> FromRequest for Leased<S> {
    type Error = LeasedError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, LeasedError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let acquire = RequestAcquire::<S>::new(req);
        Box::pin(async move { acquire.run().await.map(Leased) })
    }
}

/// Extracts `T` first — typically the request body (`web::Json<_>`, `web::Bytes`,
/// `web::Form<_>`) — and only then acquires a lease, as [`Leased`] does. Use it for routes with
/// a body, so that a slow upload never holds a pool.
///
/// *Available with the cargo feature `web`.*
///
/// If `T` fails, its own error is the response and no lease is taken.
///
/// ```
/// use actix_web::{web, App, HttpResponse};
/// use leasepool::web::LeasedAfter;
/// use leasepool::LeaseManager;
///
/// async fn import(LeasedAfter(body, lease): LeasedAfter<web::Bytes>) -> actix_web::Result<HttpResponse> {
///     // The body is complete before the lease was taken.
///     let rows = lease.run(move || body.len() /* a blocking bulk insert */).await?;
///     Ok(HttpResponse::Ok().body(format!("{rows} bytes imported")))
/// }
///
/// # fn app(manager: LeaseManager) {
/// let _app = App::new()
///     .app_data(web::Data::new(manager))
///     .route("/import", web::post().to(import));
/// # }
/// ```
pub struct LeasedAfter<T, S: 'static = ()>(pub T, pub Lease<S>);

impl<T: std::fmt::Debug, S: 'static> std::fmt::Debug for LeasedAfter<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LeasedAfter")
            .field(&self.0)
            .field(&self.1)
            .finish()
    }
}

impl<T, S: 'static> LeasedAfter<T, S> {
    /// The extracted value and the lease.
    pub fn into_parts(self) -> (T, Lease<S>) {
        (self.0, self.1)
    }
}

impl<T, S> FromRequest for LeasedAfter<T, S>
where
    T: FromRequest + 'static,
    S: 'static,
{
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, actix_web::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let first = T::from_request(req, payload);
        let acquire = RequestAcquire::<S>::new(req);
        Box::pin(async move {
            let value = first.await.map_err(Into::into)?;
            let lease = acquire.run().await?;
            Ok(LeasedAfter(value, lease))
        })
    }
}
