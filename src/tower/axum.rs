//! axum extractors: [`Leased`] takes the request's lease (from a [`LeaseLayer`]) or acquires
//! one from the manager a [`ManagerLayer`] bound; [`LeasedAfter`] extracts the body first.

use axum_core::extract::{FromRequest, FromRequestParts, Request};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use super::leased::Leased;
use super::settings::{lease_to_use, Bound};
use crate::per_request::{self, LeasedError};
use crate::LeaseManager;

#[cfg(doc)]
use super::{LeaseLayer, ManagerLayer};

impl IntoResponse for LeasedError {
    fn into_response(self) -> Response {
        let answer = self.answer();
        if answer.status == 500 {
            tracing::error!(error = %self, "no lease for the request; answering 500");
        }
        answer.into_response()
    }
}

/// Neither a layer's lease nor a bound manager of type `S`: a wiring mistake.
fn missing<S: 'static>() -> LeasedError {
    LeasedError::MissingManager {
        manager: std::any::type_name::<LeaseManager<S>>(),
    }
}

/// The request's lease: the one a [`LeaseLayer`] acquired, else one acquired now from the
/// manager a [`ManagerLayer`] bound (kept in the request's extensions, so a second `Leased`
/// in the same request shares it); neither is a 500 naming the manager type.
impl<S, AppState> FromRequestParts<AppState> for Leased<S>
where
    S: 'static,
    AppState: Send + Sync,
{
    type Rejection = LeasedError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        let present = parts.extensions.get::<Leased<S>>();
        let Some(bound) = parts.extensions.get::<Bound<S>>().cloned() else {
            return present.cloned().ok_or_else(missing::<S>);
        };
        if let Some(lease) = lease_to_use(present, &bound.manager, &bound.config)? {
            return Ok(lease);
        }
        let owner = format!("{} {}", parts.method, parts.uri.path());
        let lease = Leased::new(per_request::acquire(&bound.manager, &bound.config, owner).await?);
        parts.extensions.insert(lease.clone());
        Ok(lease)
    }
}

/// Extracts `T` first — typically the body (`Json<_>`, `Bytes`, `Form<_>`) — and only then the
/// lease, as [`Leased`] does: a slow upload never holds a pool. If `T` fails, its own
/// rejection is the response and no lease is taken.
///
/// *Available with the cargo feature `axum`.*
pub struct LeasedAfter<T, S: 'static = ()>(pub T, pub Leased<S>);

impl<T: std::fmt::Debug, S: 'static> std::fmt::Debug for LeasedAfter<T, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LeasedAfter")
            .field(&self.0)
            .field(&self.1)
            .finish()
    }
}

impl<T, S, AppState> FromRequest<AppState> for LeasedAfter<T, S>
where
    T: FromRequest<AppState> + Send,
    S: 'static,
    AppState: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (parts, body) = req.into_parts();
        // What the lease needs, taken before the body's extractor consumes the request.
        let layer_lease = parts.extensions.get::<Leased<S>>().cloned();
        let bound = parts.extensions.get::<Bound<S>>().cloned();
        let owner = format!("{} {}", parts.method, parts.uri.path());
        let value = T::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let lease = match (layer_lease, bound) {
            (lease, Some(bound)) => {
                match lease_to_use(lease.as_ref(), &bound.manager, &bound.config)
                    .map_err(IntoResponse::into_response)?
                {
                    Some(lease) => lease,
                    None => per_request::acquire(&bound.manager, &bound.config, owner)
                        .await
                        .map(Leased::new)
                        .map_err(IntoResponse::into_response)?,
                }
            }
            (Some(lease), None) => lease,
            (None, None) => return Err(missing::<S>().into_response()),
        };
        Ok(LeasedAfter(value, lease))
    }
}
