//! The PostgreSQL store's statements as the [shield](crate::queue::store::shield) runs them:
//! apalis-postgres' public queries, plus the checks of a claimed row (`sql.rs`, `judge.rs`) and
//! the give-backs written with their acknowledgements.

use std::time::Duration;

use apalis_core::backend::TaskResult;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use apalis_postgres::{queries, Config};
use serde_json::Value;
use sqlx::PgPool;

use super::give_backs::GiveBacks;
use super::judge;
use super::sql;
use crate::queue::store::shield::{
    judge_claimed, misspells, BackendError, Claimed, Condemned, Dialect, Fetched, QUARANTINE_WINDOW,
};

/// The largest attempt count a claimed task may have: apalis writes one more back into an
/// `integer` column.
const MOST_ATTEMPTS: usize = i32::MAX as usize;

impl From<apalis_postgres::Error> for BackendError {
    fn from(e: apalis_postgres::Error) -> Self {
        BackendError(e.to_string())
    }
}

#[derive(Clone)]
pub(crate) struct PgDialect {
    pub(crate) pool: PgPool,
    pub(crate) config: Config,
    pub(crate) give_backs: GiveBacks,
}

impl PgDialect {
    /// apalis' acknowledgements and locks, and the give-backs `begun` for them, in one
    /// transaction; the ids of the tasks the give-backs freed.
    async fn acknowledge(
        &self,
        locks: &[String],
        acks: &[TaskResult<Value>],
        worker: &str,
        begun: &[(String, u64)],
    ) -> Result<Vec<String>, BackendError> {
        let mut tx = self.pool.begin().await?;
        if !acks.is_empty() {
            let acks: Vec<&TaskResult<Value>> = acks.iter().collect();
            queries::handle_results(&mut *tx, &acks, worker).await?;
        }
        if !locks.is_empty() {
            sql::lock(&mut tx, locks, worker).await?;
        }
        let mut freed = Vec::with_capacity(begun.len());
        for (id, _) in begun {
            if sql::give_back(&mut tx, worker, id).await? {
                freed.push(id.clone());
            }
        }
        tx.commit().await?;
        Ok(freed)
    }
}

impl Dialect for PgDialect {
    type Config = Config;
    /// The row's id (the table's primary key).
    type Key = String;

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
        Ok(())
    }

    async fn register(self, worker: WorkerContext) -> Result<(), BackendError> {
        let dead_for = self.config.orphaned_duration().as_secs();
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        queries::reenqueue_orphaned(&mut *tx, queue, dead_for).await?;
        // apalis' own registration takes its time as a type it does not export: the same row,
        // written here. Every apalis worker the queue worker runs has a fresh name.
        sql::register_worker(&mut tx, queue, &worker).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn heartbeat(self, worker: WorkerContext) -> Result<(), BackendError> {
        let dead_for = self.config.orphaned_duration().as_secs();
        let queue = self.config.queue.as_ref();
        let mut tx = self.pool.begin().await?;
        queries::keep_alive(&mut *tx, queue, &worker).await?;
        queries::reenqueue_orphaned(&mut *tx, queue, dead_for).await?;
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

    async fn condemned(self) -> Result<Vec<Condemned<String>>, BackendError> {
        let queue = self.config.queue.as_ref();
        let rows = sql::candidates(
            &self.pool,
            queue,
            self.config.batch_size.max(QUARANTINE_WINDOW),
        )
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let why = judge::unreadable(&row).err()?;
                Some(Condemned {
                    shown_id: row.id.clone(),
                    key: row.id,
                    why,
                })
            })
            .collect())
    }

    async fn fail_unclaimed(self, id: String, why: String) -> Result<bool, BackendError> {
        Ok(sql::kill_unclaimed(&self.pool, &id, &why).await?)
    }

    async fn handle_events(
        self,
        mut locks: Vec<String>,
        acks: Vec<TaskResult<Value>>,
        worker: WorkerContext,
    ) -> Result<(), BackendError> {
        // apalis-postgres' own order: the acknowledgements, then the locks of the tasks not
        // acknowledged in the same batch.
        let acked: Vec<String> = acks.iter().map(|a| a.task_id().to_string()).collect();
        locks.retain(|id| !acked.contains(id));
        let begun = self.give_backs.begin(worker.name(), &acked);
        let outcome = self.acknowledge(&locks, &acks, worker.name(), &begun).await;
        self.give_backs.end(
            worker.name(),
            &begun,
            outcome.as_ref().ok().map(Vec::as_slice),
        );
        outcome.map(|_| ())
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
        queries::push_tasks(&mut *tx, self.config.queue.as_ref(), tasks).await?;
        tx.commit().await?;
        Ok(())
    }
}
