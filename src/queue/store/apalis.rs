//! Runs one apalis worker over a store's backend.

use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::persistence::TaskPersistLayer;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use apalis_core::worker::ext::event_listener::EventListenerExt as _;
use apalis_sqlite::JsonCodec;
use serde_json::Value;

use super::RunSpec;

/// Runs an apalis worker on `backend` (a store's, with its poll strategy) until it stops
/// (`Ok`) or fails (`Err`, the reason).
pub(crate) async fn run_apalis<B>(backend: B, spec: RunSpec) -> Result<(), String>
where
    B: Backend<Task = Task<Vec<u8>>>
        + BackendConfig<
            Args = Vec<u8>,
            Kind = Ephemeral,
            Layer = TaskPersistLayer<JsonCodec<Value>, Value>,
        > + Send
        + Unpin
        + 'static,
{
    let RunSpec {
        context,
        on_event,
        service,
        ..
    } = spec;
    WorkerBuilder::new(context)
        .backend(backend)
        .on_event(move |ctx, event| on_event(ctx, event))
        .build(service)
        .run()
        .await
        .map_err(|e| e.to_string())
}

/// A store's apalis backend as an `Ephemeral` backend of byte payloads: apalis decodes
/// nothing; the worker decodes each payload itself, and fails one that does not decode alone
/// (apalis' own decoding failed the whole fetch, and the worker with it).
pub(crate) struct Raw<B>(pub(crate) B);

impl<B> Backend for Raw<B>
where
    B: Backend<Task = Task<Vec<u8>>>,
{
    type Task = Task<Vec<u8>>;
    type Error = B::Error;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), B::Error>> {
        self.0.poll_ready(cx, worker)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Vec<u8>>, B::Error>>> {
        self.0.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), B::Error>> {
        self.0.poll_close(cx, worker)
    }
}

impl<B: BackendConfig> BackendConfig for Raw<B> {
    type Args = Vec<u8>;
    type Id = B::Id;
    type Kind = Ephemeral;
    type Config = B::Config;
    type Layer = B::Layer;

    fn config(&self) -> &B::Config {
        self.0.config()
    }

    fn middleware(&mut self, worker: &mut WorkerContext) -> B::Layer {
        self.0.middleware(worker)
    }
}
