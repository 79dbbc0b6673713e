//! The apalis backend of the SQLite store: apalis-core's `Persisted` driver over our own
//! `Persistence`, which runs apalis-sqlite's public queries with two differences. A fetch that
//! fails on a row apalis cannot read (apalis rolls the claim back, so the next fetch would meet
//! the same row first again, for every worker) fails that row alone with its reason and
//! fetches on; and a fetch on a file that is no longer the one the path names fails, so that
//! the worker is replaced on the new file.
//!
//! Every operation runs as a task of its own ([`detached`]). apalis keeps an operation's future
//! in its state machine and polls it only while its worker polls the backend — and a worker at
//! capacity stops polling. An operation parked between its first write and its commit held
//! SQLite's write lock for as long as that lasted: every producer's push and every other
//! worker's fetch waited for a running task to end (seen: over 60 s, on a loaded machine).

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer};
use apalis_core::backend::{Backend, BackendConfig, WorkerFilter};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use apalis_sqlite::{queries, Config, JsonCodec};
use serde_json::Value;
use sqlx::SqlitePool;

use super::file::FileId;
use super::{judge, sql};
use crate::queue::store::OnUnreadable;

/// An error of the SQLite backend, as text.
#[derive(Debug)]
pub(crate) struct BackendError(String);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BackendError {}

impl From<sqlx::Error> for BackendError {
    fn from(e: sqlx::Error) -> Self {
        BackendError(e.to_string())
    }
}

impl From<crate::queue::QueueError> for BackendError {
    fn from(e: crate::queue::QueueError) -> Self {
        BackendError(e.to_string())
    }
}

impl From<apalis_sqlite::Error> for BackendError {
    fn from(e: apalis_sqlite::Error) -> Self {
        BackendError(e.to_string())
    }
}

/// Runs `op` as a task of its own, so that it reaches its end — its transaction committed or
/// rolled back, the write lock let go — whether or not its caller polls it meanwhile. Dropped
/// by its caller, the task is aborted: a transaction not committed yet is rolled back.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
) -> Result<T, BackendError> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(op));
    match (&mut task.0).await {
        Ok(outcome) => outcome,
        Err(e) => Err(BackendError(format!("a store operation did not end: {e}"))),
    }
}

#[derive(Clone)]
pub(crate) struct SqlitePersist {
    pub(crate) pool: SqlitePool,
    pub(crate) config: Config,
    pub(crate) path: Arc<PathBuf>,
    pub(crate) file: FileId,
    pub(crate) on_unreadable: OnUnreadable,
}

impl SqlitePersist {
    /// apalis-sqlite's fetch, in a transaction of its own (rolled back if it fails). apalis
    /// reads a row's id as a ULID in any case but locks and acknowledges it by the id as the
    /// ULID prints: a fetched task whose row is not found by that id would stay claimed for
    /// good, so it is failed instead (one primary-key lookup per fetched task).
    async fn fetch(&self, worker: &WorkerContext) -> Result<Vec<Task<Vec<u8>>>, BackendError> {
        let mut tx = self.pool.begin().await?;
        let tasks = queries::fetch_next(&mut *tx, &self.config, worker).await?;
        let mut kept = Vec::with_capacity(tasks.len());
        for task in tasks {
            let id = task.task_id().map(ToString::to_string).unwrap_or_default();
            if sql::claimed_by(&mut tx, &id, worker.name()).await? {
                kept.push(task);
                continue;
            }
            let why = format!(
                "apalis cannot read this task: its id is not written as apalis writes it back ({id})"
            );
            for stored in sql::kill_miswritten(&mut tx, &id, worker.name(), &why).await? {
                (self.on_unreadable)(&stored, &why);
            }
        }
        tx.commit().await?;
        Ok(kept)
    }

    /// After a failed fetch (rolled back): fails for good the rows the fetch would have
    /// claimed that apalis cannot read; how many.
    async fn quarantine(&self) -> Result<usize, BackendError> {
        let candidates = sql::next_candidates(
            &self.pool,
            self.config.queue.as_ref(),
            self.config.batch_size,
        )
        .await?;
        let mut killed = 0;
        for row in candidates {
            if let Err(why) = judge::unreadable(&row) {
                let why = format!("apalis cannot read this task: {why}");
                if sql::kill_unclaimed(&self.pool, row.rowid, &why).await? {
                    (self.on_unreadable)(&judge::shown_id(&row), &why);
                    killed += 1;
                }
            }
        }
        Ok(killed)
    }
}

/// The operations, each on an owned copy of the persistence (a pool handle and settings),
/// so that it can run [`detached`].
impl SqlitePersist {
    async fn register_now(self, worker: WorkerContext) -> Result<(), BackendError> {
        let dead_for = self.config.heartbeat_interval.as_secs() as i64;
        let mut tx = self.pool.begin().await?;
        let only = WorkerFilter::Only(worker.name().to_owned());
        queries::reenqueue_orphaned(&mut *tx, dead_for, self.config.queue.as_ref(), &only).await?;
        queries::register_worker(&mut *tx, &self.config, &worker, "SqliteStorage").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat_now(self, worker: WorkerContext) -> Result<(), BackendError> {
        let dead_for = i64::try_from(self.config.orphaned_duration().as_secs()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        queries::keep_alive(&mut *tx, &self.config, &worker).await?;
        let others = WorkerFilter::AllExcept(worker.name().to_owned());
        queries::reenqueue_orphaned(&mut *tx, dead_for, self.config.queue.as_ref(), &others)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch_now(self, worker: WorkerContext) -> Result<Vec<Task<Vec<u8>>>, BackendError> {
        self.file.check(&self.path).map_err(BackendError)?;
        // A fetch that fails on a row apalis cannot read fails that row alone and fetches on.
        // If nothing was found to fail, another worker may have failed it first, or another
        // row ranked first since: the fetch is tried once more before its error counts.
        let mut tries = 0;
        loop {
            let error = match self.fetch(&worker).await {
                Ok(tasks) => return Ok(tasks),
                Err(e) => e,
            };
            tries += 1;
            match self.quarantine().await {
                Ok(n) if n > 0 => return Ok(Vec::new()),
                Ok(_) if tries < 2 => {}
                Ok(_) => return Err(error),
                Err(q) => {
                    return Err(BackendError(format!(
                        "{error} (looking for an unreadable task failed too: {q})"
                    )))
                }
            }
        }
    }

    async fn handle_events_now(
        self,
        events: Vec<TaskEvent<Value>>,
        worker: WorkerContext,
    ) -> Result<(), BackendError> {
        let mut locks = Vec::new();
        let mut acks = Vec::new();
        for event in &events {
            match event {
                TaskEvent::Lock { task_id } => locks.push(task_id.to_string()),
                TaskEvent::Complete(result) => acks.push(result),
                _ => {}
            }
        }
        if locks.is_empty() && acks.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        if !locks.is_empty() {
            queries::lock_tasks(&mut *tx, &locks, worker.name()).await?;
        }
        if !acks.is_empty() {
            queries::ack_tasks(&mut *tx, &acks, worker.name()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reenqueue_abandoned_now(
        self,
        ids: Vec<String>,
        worker: WorkerContext,
    ) -> Result<u64, BackendError> {
        let mut tx = self.pool.begin().await?;
        let n =
            queries::reenqueue_abandoned(&mut *tx, self.config.queue.as_ref(), worker.name(), &ids)
                .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn push_tasks_now(self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), BackendError> {
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, self.config.queue.as_ref(), &tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Persistence for SqlitePersist {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = BackendError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), BackendError> {
        detached(self.clone().register_now(worker.clone())).await
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), BackendError> {
        detached(self.clone().heartbeat_now(worker.clone())).await
    }

    async fn fetch_next(
        &mut self,
        worker: &WorkerContext,
    ) -> Result<Vec<Task<Vec<u8>>>, BackendError> {
        detached(self.clone().fetch_now(worker.clone())).await
    }

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
    ) -> Result<(), BackendError> {
        detached(self.clone().handle_events_now(events, worker.clone())).await
    }

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, BackendError> {
        let ids = tasks
            .iter()
            .filter_map(|t| t.task_id().map(ToString::to_string))
            .collect();
        detached(self.clone().reenqueue_abandoned_now(ids, worker.clone())).await
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), BackendError> {
        detached(self.clone().push_tasks_now(tasks)).await
    }
}

/// The backend one apalis worker runs on.
pub(crate) struct SqliteBackend {
    persisted: Persisted<SqlitePersist>,
    config: Config,
}

impl SqliteBackend {
    pub(crate) fn new(persist: SqlitePersist) -> Self {
        let config = persist.config.clone();
        SqliteBackend {
            persisted: Persisted::new(persist),
            config,
        }
    }
}

impl Backend for SqliteBackend {
    type Task = Task<Vec<u8>>;
    type Error = BackendError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), BackendError>> {
        let heartbeat = self.config.heartbeat_interval;
        self.persisted.poll_ready(cx, worker, heartbeat)
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Task<Vec<u8>>, BackendError>>> {
        self.persisted.poll_next(cx, worker)
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), BackendError>> {
        self.persisted.poll_close(cx, worker)
    }
}

/// To apalis this is an `Ephemeral` backend of byte payloads: it decodes nothing (the worker
/// decodes, and fails a task that does not decode alone).
impl BackendConfig for SqliteBackend {
    type Args = Vec<u8>;
    type Id = ulid::Ulid;
    type Kind = Ephemeral;
    type Config = Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &Config {
        &self.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        self.persisted
            .layer(JsonCodec::default(), self.config.batch_size)
            .persist_results(self.config.persist_results)
            .lock_tasks(self.config.lock_tasks)
    }
}
