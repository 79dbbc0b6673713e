//! The SQLite store's statements as the [shield](crate::queue::store::shield) runs them:
//! apalis-sqlite's public queries, plus the checks of a claimed row (`sql.rs`, `judge.rs`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apalis_core::backend::{TaskResult, WorkerFilter};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use apalis_sqlite::{queries, Config};
use serde_json::Value;
use sqlx::SqlitePool;

use super::file::FileId;
use super::{judge, sql};
use crate::queue::store::shield::{
    judge_claimed, misspells, BackendError, Claimed, Condemned, Dialect, Fetched, QUARANTINE_WINDOW,
};

/// The largest attempt count a claimed task may have: apalis writes one more back into an
/// `INTEGER` (64-bit) column.
const MOST_ATTEMPTS: usize = i64::MAX as usize;

impl From<apalis_sqlite::Error> for BackendError {
    fn from(e: apalis_sqlite::Error) -> Self {
        BackendError(e.to_string())
    }
}

#[derive(Clone)]
pub(crate) struct SqliteDialect {
    pub(crate) pool: SqlitePool,
    pub(crate) config: Config,
    pub(crate) path: Arc<PathBuf>,
    pub(crate) file: FileId,
}

impl Dialect for SqliteDialect {
    type Config = Config;
    /// The row's ROWID: its id may be NULL or not text.
    type Key = i64;

    fn config(&self) -> &Config {
        &self.config
    }

    fn heartbeat_interval(&self) -> Duration {
        self.config.heartbeat_interval
    }

    fn batch_size(&self) -> usize {
        self.config.batch_size
    }

    fn persist_results(&self) -> bool {
        self.config.persist_results
    }

    fn lock_tasks(&self) -> bool {
        self.config.lock_tasks
    }

    fn check(&self) -> Result<(), String> {
        self.file.check(&self.path)
    }

    async fn register(self, worker: WorkerContext) -> Result<(), BackendError> {
        let dead_for = self.config.heartbeat_interval.as_secs() as i64;
        let mut tx = self.pool.begin().await?;
        let only = WorkerFilter::Only(worker.name().to_owned());
        queries::reenqueue_orphaned(&mut *tx, dead_for, self.config.queue.as_ref(), &only).await?;
        queries::register_worker(&mut *tx, &self.config, &worker, "SqliteStorage").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(self, worker: WorkerContext) -> Result<(), BackendError> {
        let dead_for = i64::try_from(self.config.orphaned_duration().as_secs()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        queries::keep_alive(&mut *tx, &self.config, &worker).await?;
        let others = WorkerFilter::AllExcept(worker.name().to_owned());
        queries::reenqueue_orphaned(&mut *tx, dead_for, self.config.queue.as_ref(), &others)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn fetch(self, worker: WorkerContext) -> Result<Fetched, BackendError> {
        let mut tx = self.pool.begin().await?;
        let claimed = queries::fetch_next(&mut *tx, &self.config, &worker).await?;
        let me = worker.name();
        let mut fetched = Fetched {
            tasks: Vec::with_capacity(claimed.len()),
            failed: Vec::new(),
        };
        for task in claimed {
            let id = task.task_id().map(ToString::to_string).unwrap_or_default();
            let found = sql::claimed_by(&mut tx, &id, me).await?;
            match judge_claimed(found, &id, task.ctx().attempt(), MOST_ATTEMPTS) {
                Claimed::Run => fetched.tasks.push(task),
                Claimed::Fail(why) => {
                    let killed = sql::kill_claimed(&mut tx, &[id], me, &why).await?;
                    fetched.failed(killed, &why);
                }
                Claimed::Miswritten(why) => {
                    let mut spelled = sql::claims(&mut tx, me).await?;
                    spelled.retain(|stored| misspells(stored, &id));
                    let killed = sql::kill_claimed(&mut tx, &spelled, me, &why).await?;
                    fetched.failed(killed, &why);
                }
            }
        }
        tx.commit().await?;
        Ok(fetched)
    }

    async fn condemned(self) -> Result<Vec<Condemned<i64>>, BackendError> {
        let queue = self.config.queue.as_ref();
        let rows = sql::next_candidates(
            &self.pool,
            queue,
            self.config.batch_size.max(QUARANTINE_WINDOW),
        )
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let why = judge::unreadable(row).err()?;
                Some(Condemned {
                    key: row.rowid,
                    shown_id: judge::shown_id(row),
                    why,
                })
            })
            .collect())
    }

    async fn fail_unclaimed(self, rowid: i64, why: String) -> Result<bool, BackendError> {
        Ok(sql::kill_unclaimed(&self.pool, rowid, &why).await?)
    }

    async fn handle_events(
        self,
        locks: Vec<String>,
        acks: Vec<TaskResult<Value>>,
        worker: WorkerContext,
    ) -> Result<(), BackendError> {
        let mut tx = self.pool.begin().await?;
        if !locks.is_empty() {
            sql::lock(&mut tx, &locks, worker.name()).await?;
        }
        if !acks.is_empty() {
            let acks: Vec<&TaskResult<Value>> = acks.iter().collect();
            queries::ack_tasks(&mut *tx, &acks, worker.name()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reenqueue_abandoned(
        self,
        ids: Vec<String>,
        worker: WorkerContext,
    ) -> Result<u64, BackendError> {
        let mut tx = self.pool.begin().await?;
        let queue = self.config.queue.as_ref();
        let n = queries::reenqueue_abandoned(&mut *tx, queue, worker.name(), &ids).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn push_tasks(self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), BackendError> {
        let mut tx = self.pool.begin().await?;
        queries::push_tasks(&mut *tx, self.config.queue.as_ref(), &tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}
