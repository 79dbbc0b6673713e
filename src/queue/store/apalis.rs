//! Runs one apalis worker over a store's backend, behind the [shield](super::shield).

use std::sync::Arc;

use apalis_core::backend::persistence::TaskPersistLayer;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::ext::event_listener::EventListenerExt as _;
use apalis_sqlite::JsonCodec;
use serde_json::Value;

use super::shield::Shield;
use super::{RunSpec, Store};

/// Runs an apalis worker on `backend` (a store's, with its poll strategy) until it stops
/// (`Ok`) or fails (`Err`, the reason).
pub(crate) async fn run_apalis<B>(
    backend: B,
    store: Arc<dyn Store>,
    spec: RunSpec,
) -> Result<(), String>
where
    B: Backend<Task = Task<Vec<u8>>>
        + BackendConfig<Layer = TaskPersistLayer<JsonCodec<Value>, Value>>
        + Send
        + Unpin
        + 'static,
{
    let RunSpec {
        queue,
        context,
        on_event,
        on_unreadable,
        service,
        ..
    } = spec;
    let shield = Shield::new(backend, store, queue, on_unreadable);
    WorkerBuilder::new(context)
        .backend(shield)
        .on_event(move |ctx, event| on_event(ctx, event))
        .build(service)
        .run()
        .await
        .map_err(|e| e.to_string())
}
