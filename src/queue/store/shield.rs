//! The shield around a store's fetch. apalis fails the whole fetch when it cannot read one
//! stored task (an id that is not a ULID, a count that does not fit its integer, a field
//! missing), and a worker whose fetch fails is replaced — only to meet the same task first
//! again: one bad task stalled the queue for every worker. The shield catches a failed fetch,
//! asks the store to fail for good the claimed tasks that apalis cannot read (each with its
//! reason) and fetches on. If every claimed task looks readable, the fetch failed for another
//! reason (the store is down): the error goes on to apalis, and the worker is replaced.
//!
//! The shield also hands apalis the payload bytes undecoded (it is an `Ephemeral` backend to
//! apalis): the worker decodes them itself, so a payload that does not decode fails its task
//! alone too.

use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;

use super::{Quarantined, QueueError, Store};

/// A fetch error the shield could not turn into failed tasks.
#[derive(Debug)]
pub(crate) struct ShieldError(pub(crate) String);

impl std::fmt::Display for ShieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ShieldError {}

/// Called for each task the shield failed for good: (task id, why).
pub(crate) type OnUnreadable = Arc<dyn Fn(&str, &str) + Send + Sync>;

pub(crate) struct Shield<B> {
    inner: B,
    store: Arc<dyn Store>,
    queue: String,
    on_unreadable: OnUnreadable,
    /// A quarantine under way, and the fetch error it answers.
    quarantine: Option<(BoxFuture<'static, Result<Quarantined, QueueError>>, String)>,
    /// Upkeep that must finish before the next fetch (see `Store::before_fetch`).
    upkeep: Option<BoxFuture<'static, ()>>,
}

impl<B> Shield<B> {
    pub(crate) fn new(
        inner: B,
        store: Arc<dyn Store>,
        queue: String,
        on_unreadable: OnUnreadable,
    ) -> Self {
        Shield {
            inner,
            store,
            queue,
            on_unreadable,
            quarantine: None,
            upkeep: None,
        }
    }
}

impl<B> Backend for Shield<B>
where
    B: Backend<Task = Task<Vec<u8>>> + Unpin,
{
    type Task = Task<Vec<u8>>;
    type Error = ShieldError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), ShieldError>> {
        self.inner
            .poll_ready(cx, worker)
            .map_err(|e| ShieldError(e.to_string()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Vec<u8>>, ShieldError>>> {
        loop {
            if let Some((quarantine, error)) = &mut self.quarantine {
                let found = match quarantine.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(found) => found,
                };
                let error = std::mem::take(error);
                self.quarantine = None;
                match found {
                    Ok(q) if !q.killed.is_empty() => {
                        for (id, why) in &q.killed {
                            (self.on_unreadable)(id, why);
                        }
                        continue;
                    }
                    Ok(_) => return Poll::Ready(Some(Err(ShieldError(error)))),
                    Err(e) => {
                        return Poll::Ready(Some(Err(ShieldError(format!(
                            "{error} (looking for an unreadable task failed too: {e})"
                        )))))
                    }
                }
            }
            if let Err(why) = self.store.check_identity() {
                return Poll::Ready(Some(Err(ShieldError(why))));
            }
            if self.upkeep.is_none() {
                self.upkeep = self.store.before_fetch(&self.queue);
            }
            if let Some(upkeep) = &mut self.upkeep {
                if upkeep.poll_unpin(cx).is_pending() {
                    return Poll::Pending;
                }
                self.upkeep = None;
            }
            match self.inner.poll_next(cx, worker) {
                Poll::Ready(Some(Err(e))) => {
                    let error = e.to_string();
                    let store = Arc::clone(&self.store);
                    let (queue, name) = (self.queue.clone(), worker.name().to_owned());
                    let quarantine = async move { store.quarantine(&queue, &name).await }.boxed();
                    self.quarantine = Some((quarantine, error));
                }
                other => {
                    return other.map(|t| t.map(|t| t.map_err(|e| ShieldError(e.to_string()))))
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), ShieldError>> {
        self.inner
            .poll_close(cx, worker)
            .map_err(|e| ShieldError(e.to_string()))
    }
}

/// To apalis the shield is an `Ephemeral` backend of byte payloads: it decodes nothing.
impl<B: BackendConfig> BackendConfig for Shield<B> {
    type Args = Vec<u8>;
    type Id = B::Id;
    type Kind = Ephemeral;
    type Config = B::Config;
    type Layer = B::Layer;

    fn config(&self) -> &B::Config {
        self.inner.config()
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> B::Layer {
        self.inner.middleware(worker)
    }
}
