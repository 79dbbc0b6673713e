//! The apalis backend of the SQLite store: apalis-core's `Persisted` driver over our own
//! `Persistence`, which runs apalis-sqlite's public queries with two differences. A fetch that
//! fails on a row apalis cannot read (apalis rolls the claim back, so the next fetch would meet
//! the same row first again, for every worker) fails that row alone with its reason and
//! fetches on; and a fetch on a file that is no longer the one the path names fails, so that
//! the worker is replaced on the new file.

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

impl Persistence for SqlitePersist {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = BackendError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), BackendError> {
        let dead_for = self.config.heartbeat_interval.as_secs() as i64;
        let mut tx = self.pool.begin().await?;
        let only = WorkerFilter::Only(worker.name().to_owned());
        queries::reenqueue_orphaned(&mut *tx, dead_for, self.config.queue.as_ref(), &only).await?;
        queries::register_worker(&mut *tx, &self.config, worker, "SqliteStorage").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), BackendError> {
        let dead_for = i64::try_from(self.config.orphaned_duration().as_secs()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        queries::keep_alive(&mut *tx, &self.config, worker).await?;
        let others = WorkerFilter::AllExcept(worker.name().to_owned());
        queries::reenqueue_orphaned(&mut *tx, dead_for, self.config.queue.as_ref(), &others)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch_next(
        &mut self,
        worker: &WorkerContext,
    ) -> Result<Vec<Task<Vec<u8>>>, BackendError> {
        self.file.check(&self.path).map_err(BackendError)?;
        // A fetch that fails on a row apalis cannot read fails that row alone and fetches on.
        // If nothing was found to fail, another worker may have failed it first, or another
        // row ranked first since: the fetch is tried once more before its error counts.
        let mut tries = 0;
        loop {
            let error = match self.fetch(worker).await {
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

    async fn handle_events(
        &mut self,
        events: Vec<TaskEvent<Value>>,
        worker: &WorkerContext,
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

    async fn reenqueue_abandoned(
        &mut self,
        tasks: Vec<Task<Vec<u8>>>,
        worker: &WorkerContext,
    ) -> Result<u64, BackendError> {
        let ids = tasks
            .iter()
            .filter_map(|t| t.task_id().map(ToString::to_string))
            .collect();
        let mut tx = self.pool.begin().await?;
        let n =
            queries::reenqueue_abandoned(&mut *tx, self.config.queue.as_ref(), worker.name(), &ids)
                .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), BackendError> {
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, self.config.queue.as_ref(), &tasks).await?;
        tx.commit().await?;
        Ok(())
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
