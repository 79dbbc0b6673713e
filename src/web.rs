//! actix-web integration (feature `web`): overload becomes 503 + `Retry-After`, and a lease per
//! request through the [`Leased`] extractor.
//!
//! `LeaseError` implements `actix_web::ResponseError`: `Unavailable`, `Timeout`, `NotStarted`
//! and `Stopped` answer **503** with `Retry-After` (see [`set_retry_after`]); `Expired`,
//! `Released`, `WorkerLost` and `Panicked` answer **500**. Bodies are small JSON objects such as
//! `{"error":"unavailable","retry_after":1}` and never carry panic messages (those are logged).

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

pub use leasepool_actors::{retry_after_secs, set_retry_after};

use crate::{Lease, LeaseError, LeaseManager};

/// How [`Leased`] acquires: put one in `app_data` (`App::new().app_data(LeaseConfig::…)`).
/// Without one, requests wait at most 5 s for a lease and hold it for the manager's
/// `default_lease`.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    wait: Wait,
    lease_for: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
enum Wait {
    Timeout(Duration),
    NoWait,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            wait: Wait::Timeout(Duration::from_secs(5)),
            lease_for: None,
        }
    }
}

impl LeaseConfig {
    /// Wait at most `d` for a lease, then answer 503.
    pub fn timeout(d: Duration) -> Self {
        Self {
            wait: Wait::Timeout(d),
            ..Self::default()
        }
    }

    /// Never wait: answer 503 at once when no pool is free.
    pub fn no_wait() -> Self {
        Self {
            wait: Wait::NoWait,
            ..Self::default()
        }
    }

    /// Soft lifetime of each request's lease (default: the manager's `default_lease`).
    pub fn lease_for(mut self, d: Duration) -> Self {
        self.lease_for = Some(d);
        self
    }
}

/// A lease held for one request. Extract it in a handler; it is released when the handler's
/// future ends (dropped with the request). Its owner label is the request's method and matched
/// route, such as `GET /devices/{id}/status`.
///
/// Needs the manager in `app_data`, as `web::Data<LeaseManager<S>>` or a plain
/// `LeaseManager<S>`; without one the extractor answers 503 (`not_started`) and logs why.
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
#[derive(Debug)]
pub struct Leased<S: 'static = ()>(pub Lease<S>);

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

impl<S: 'static> FromRequest for Leased<S> {
    type Error = LeaseError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, LeaseError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let manager = req
            .app_data::<web::Data<LeaseManager<S>>>()
            .map(|data| data.get_ref().clone())
            .or_else(|| req.app_data::<LeaseManager<S>>().cloned());
        let config = req
            .app_data::<LeaseConfig>()
            .cloned()
            .or_else(|| {
                req.app_data::<web::Data<LeaseConfig>>()
                    .map(|d| d.get_ref().clone())
            })
            .unwrap_or_default();
        let route = req.match_pattern().unwrap_or_else(|| req.path().to_owned());
        let owner = format!("{} {route}", req.method());
        Box::pin(async move {
            let Some(manager) = manager else {
                tracing::error!(owner = %owner, "Leased extractor: no LeaseManager in app_data");
                return Err(LeaseError::NotStarted);
            };
            let mut acquire = manager.acquire().owner(owner);
            acquire = match config.wait {
                Wait::Timeout(d) => acquire.timeout(d),
                Wait::NoWait => acquire.no_wait(),
            };
            if let Some(d) = config.lease_for {
                acquire = acquire.lease_for(d);
            }
            acquire.await.map(Leased)
        })
    }
}
