//! [`Leased`]: a request's lease, shared by its clones.

use std::ops::Deref;
use std::sync::Arc;

use crate::Lease;

/// A request's lease: put in the request's extensions by a [`LeaseLayer`](super::LeaseLayer) (get it with
/// `req.extensions().get::<Leased<S>>()`), and with the feature `axum` an extractor. Clones
/// share the one lease, which is released when the last clone is gone (and, from a
/// [`LeaseLayer`](super::LeaseLayer), once the inner service's response is ready): a streaming body that runs
/// jobs on the lease keeps a clone for as long as it streams.
pub struct Leased<S: 'static = ()>(Arc<Lease<S>>);

impl<S: 'static> Leased<S> {
    pub(crate) fn new(lease: Lease<S>) -> Self {
        Self(Arc::new(lease))
    }
}

impl<S: 'static> Clone for Leased<S> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<S: 'static> std::fmt::Debug for Leased<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Leased").field(&*self.0).finish()
    }
}

impl<S: 'static> Deref for Leased<S> {
    type Target = Lease<S>;

    fn deref(&self) -> &Lease<S> {
        &self.0
    }
}
