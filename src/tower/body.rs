//! The bodies the layer hands on: the request's (buffered before the lease, or passed through)
//! and the response's (the inner service's, or the layer's own answer).

use std::any::Any;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

use super::read::Whole;

pin_project_lite::pin_project! {
    /// The request body the inner service of a [`LeaseLayer`](super::LeaseLayer) gets: the
    /// whole body, read before the lease was acquired (the default), or the client's body as
    /// it arrives (with [`lease_during_body`](super::LeaseLayer::lease_during_body), or when
    /// it was empty).
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        // Read in full before the lease: its bytes and trailers, taken as they are sent on, and
        // its share of the layer's buffer budget, given back when the body is dropped.
        Whole { data: Option<Bytes>, trailers: Option<HeaderMap>, budget: Option<OwnedSemaphorePermit> },
        // The client's body, passed through.
        Streaming { #[pin] body: B },
    }
}

impl<B> RequestBody<B> {
    pub(super) fn whole(whole: Whole) -> Self {
        let Whole {
            data,
            trailers,
            budget,
        } = whole;
        let data = (!data.is_empty()).then_some(data);
        Self {
            kind: RequestKind::Whole {
                data,
                trailers,
                budget,
            },
        }
    }

    pub(super) fn streaming(body: B) -> Self {
        Self {
            kind: RequestKind::Streaming { body },
        }
    }

    /// Whether the body was read in full before the lease.
    pub fn is_whole(&self) -> bool {
        matches!(self.kind, RequestKind::Whole { .. })
    }
}

impl<B: Body<Data = Bytes>> Body for RequestBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Whole { data, trailers, .. } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            RequestKindProj::Streaming { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Whole { data, trailers, .. } => data.is_none() && trailers.is_none(),
            RequestKind::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestKind::Streaming { body } => body.size_hint(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of a [`LeaseService`](super::LeaseService): the inner service's body
    /// (with [`hold_through_body`](super::LeaseLayer::hold_through_body) holding the request's
    /// lease until it ends or is dropped), or the layer's own answer (a 503, 500, 400 or 413).
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B> {
        Inner { #[pin] body: B, lease: Option<Box<dyn Any + Send + Sync>> },
        Answer { data: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn answer(body: String) -> Self {
        let data = (!body.is_empty()).then(|| Bytes::from(body));
        Self {
            kind: ResponseKind::Answer { data },
        }
    }

    pub(super) fn inner(body: B, lease: Option<Box<dyn Any + Send + Sync>>) -> Self {
        Self {
            kind: ResponseKind::Inner { body, lease },
        }
    }

    /// Whether this is the layer's own answer (the inner service was not called).
    pub fn is_answer(&self) -> bool {
        matches!(self.kind, ResponseKind::Answer { .. })
    }
}

impl<B: Body<Data = Bytes>> Body for ResponseBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Inner { body, lease } => {
                let frame = std::task::ready!(body.poll_frame(cx));
                if !matches!(frame, Some(Ok(_))) {
                    *lease = None; // the body ended or failed: the lease goes
                }
                Poll::Ready(frame)
            }
            ResponseKindProj::Answer { data } => Poll::Ready(data.take().map(Frame::data).map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Inner { body, .. } => body.is_end_stream(),
            ResponseKind::Answer { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Inner { body, .. } => body.size_hint(),
            ResponseKind::Answer { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
