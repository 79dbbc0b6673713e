//! [`LeaseService`]: a lease per request around an inner service; [`ManagerService`]: a bound
//! manager per request.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::answer;
use super::body::{RequestBody, ResponseBody};
use super::leased::Leased;
use super::read::{read_whole, refuse_unread, Unread};
use super::settings::{lease_to_use, Bound, RequestHead, Settings};
use crate::per_request::{self, Answer};
use crate::LeaseManager;

/// The future of a [`LeaseService`] call.
pub type ResponseFuture<RB, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<RB>>, E>> + Send>>;

/// The service of a [`LeaseLayer`](super::LeaseLayer): see there.
pub struct LeaseService<I, S: 'static = ()> {
    inner: I,
    manager: LeaseManager<S>,
    settings: Arc<Settings>,
}

impl<I: Clone, S: 'static> Clone for LeaseService<I, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            manager: self.manager.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<I, S: 'static> fmt::Debug for LeaseService<I, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseService")
            .field("manager", &self.manager.name())
            .finish_non_exhaustive()
    }
}

impl<I, S: 'static> LeaseService<I, S> {
    pub(super) fn new(inner: I, manager: LeaseManager<S>, settings: Arc<Settings>) -> Self {
        Self {
            inner,
            manager,
            settings,
        }
    }
}

impl<I, S, B, RB> Service<Request<B>> for LeaseService<I, S>
where
    I: Service<Request<RequestBody<B>>, Response = Response<RB>> + Clone + Send + 'static,
    I::Future: Send,
    S: 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: fmt::Display,
    RB: Send + 'static,
{
    type Response = Response<ResponseBody<RB>>;
    type Error = I::Error;
    type Future = ResponseFuture<RB, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), I::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // The instance that was driven ready goes into the future; this service keeps a fresh
        // clone (tower's contract: `call` uses the readiness `poll_ready` reported).
        let fresh = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, fresh);
        Box::pin(lease_then_call(
            inner,
            self.manager.clone(),
            Arc::clone(&self.settings),
            req,
        ))
    }
}

/// One request: read the body (unless leasing during it), acquire, call the inner service
/// with the lease in the request's extensions.
async fn lease_then_call<I, S, B, RB>(
    mut inner: I,
    manager: LeaseManager<S>,
    settings: Arc<Settings>,
    req: Request<B>,
) -> Result<Response<ResponseBody<RB>>, I::Error>
where
    I: Service<Request<RequestBody<B>>, Response = Response<RB>>,
    S: 'static,
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    let (mut parts, body) = req.into_parts();
    let owner = settings.owner(&RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        extensions: &parts.extensions,
    });
    let refuse = |answer: Answer| Ok(answer::response(answer, settings.dialect));
    let present = parts.extensions.get::<Leased<S>>();
    let reuse = match lease_to_use(present, &manager, &settings.config) {
        Ok(reuse) => reuse,
        Err(e) => {
            tracing::error!(%owner, error = %e, "LeaseLayer: answering 500");
            return refuse(e.answer());
        }
    };
    let body = match settings.body_first {
        Some(limit) if !body.is_end_stream() => {
            if reuse.is_none() && refuse_unread(settings.config.wait, manager.capacity().free()) {
                return refuse(overload(&manager, &settings));
            }
            let read = read_whole(body, limit, &settings.budget);
            let read = match settings.body_timeout {
                Some(limit) => match tokio::time::timeout(limit, read).await {
                    Ok(read) => read,
                    Err(_) => return refuse(answer::body_timed_out()),
                },
                None => read.await,
            };
            match read {
                Ok(whole) => RequestBody::whole(whole),
                Err(Unread::TooLarge) => return refuse(answer::too_large(limit)),
                Err(Unread::OverBudget) => return refuse(overload(&manager, &settings)),
                Err(Unread::Failed(e)) => {
                    tracing::debug!(%owner, error = %e, "LeaseLayer: the request body failed; answering 400");
                    return refuse(answer::unreadable());
                }
            }
        }
        _ => RequestBody::streaming(body),
    };
    let acquired = match reuse {
        Some(lease) => Ok(lease), // an outer LeaseLayer of this manager leased already
        None => per_request::acquire(&manager, &settings.config, owner)
            .await
            .map(Leased::new),
    };
    let lease = match acquired {
        Ok(lease) => lease,
        Err(e) => {
            if let Some(error) = e.lease_error().filter(|e| !e.is_overload()) {
                tracing::error!(%error, "LeaseLayer: no lease; answering 500");
            }
            return refuse(e.answer());
        }
    };
    parts.extensions.insert(lease.clone());
    let response = inner.call(Request::from_parts(parts, body)).await?;
    let held = settings
        .hold_through_body
        .then(|| Box::new(lease) as Box<dyn std::any::Any + Send + Sync>);
    Ok(response.map(|body| ResponseBody::inner(body, held)))
}

/// The answer for a request shed before its lease (no pool free for a `no_wait` request, or the
/// body budget spent): 503 with the route's `Retry-After`.
fn overload<S: 'static>(manager: &LeaseManager<S>, settings: &Settings) -> Answer {
    let busy = crate::LeaseError::Unavailable;
    busy.answer(settings.config.hint(&busy, manager))
}

/// The service of a [`ManagerLayer`](super::ManagerLayer): puts the bound manager in each
/// request's extensions and calls the inner service.
pub struct ManagerService<I, S: 'static = ()> {
    inner: I,
    bound: Bound<S>,
}

impl<I: Clone, S: 'static> Clone for ManagerService<I, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            bound: self.bound.clone(),
        }
    }
}

impl<I, S: 'static> fmt::Debug for ManagerService<I, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManagerService")
            .field("manager", &self.bound.manager.name())
            .finish_non_exhaustive()
    }
}

impl<I, S: 'static> ManagerService<I, S> {
    pub(super) fn new(inner: I, bound: Bound<S>) -> Self {
        Self { inner, bound }
    }
}

impl<I, S, B> Service<Request<B>> for ManagerService<I, S>
where
    I: Service<Request<B>>,
    S: 'static,
{
    type Response = I::Response;
    type Error = I::Error;
    type Future = I::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), I::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> I::Future {
        req.extensions_mut().insert(self.bound.clone());
        self.inner.call(req)
    }
}
