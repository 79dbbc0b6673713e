//! The PostgreSQL store's statements as the [shield](crate::queue::store::shield) runs them:
//! apalis-postgres' public queries, except the claim (`sql::claim`: one statement that marks
//! the tasks running and reads them as `judge::task_of` does), and the give-backs written
//! with their acknowledgements.
//!
//! A task costs two statements on the claim path: its claim and its acknowledgement (apalis'
//! own fetch, claim check and lock were seven round trips in two transactions, serial per
//! worker: on a loaded machine a worker held fewer tasks than it had room for).

use std::time::Duration;

use apalis_core::backend::TaskResult;
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use apalis_postgres::{queries, Config};
use serde_json::Value;
use sqlx::PgPool;

use super::claims::Claims;
use super::give_backs::GiveBacks;
use super::judge;
use super::sql;
use crate::queue::store::shield::{BackendError, Dialect, Fetched};

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
    pub(crate) claims: Claims,
}

impl PgDialect {
    /// apalis' acknowledgements, and the give-backs `begun` for them in the same transaction;
    /// the ids of the tasks the give-backs freed.
    async fn acknowledge(
        &self,
        acks: &[TaskResult<Value>],
        worker: &str,
        begun: &[(String, u64)],
    ) -> Result<Vec<String>, BackendError> {
        let acks: Vec<&TaskResult<Value>> = acks.iter().collect();
        if begun.is_empty() {
            // One statement: no transaction to open and commit.
            let mut conn = self.pool.acquire().await?;
            queries::handle_results(&mut *conn, &acks, worker).await?;
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        if !acks.is_empty() {
            queries::handle_results(&mut *tx, &acks, worker).await?;
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

    /// No: the claim commits on its own, so a fetch that fails after it (a kill that failed, a
    /// reply lost) ends the worker, whose release puts back what the claim took.
    fn quarantines(&self) -> bool {
        false
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
        let me = worker.name();
        let queue = self.config.queue.as_ref();
        let mut fetched = Fetched {
            tasks: Vec::new(),
            failed: Vec::new(),
        };
        // The claim runs as a task of its own that is never aborted: a fetch dropped while it
        // is in flight leaves it to end, and the worker's release waits for it (`Claims`).
        let Some(in_flight) = self.claims.begin(me) else {
            return Ok(fetched);
        };
        let claim = tokio::spawn({
            let (pool, queue, me) = (self.pool.clone(), queue.to_owned(), me.to_owned());
            let batch = self.config.batch_size;
            async move {
                let _in_flight = in_flight;
                sql::claim(&pool, &queue, &me, batch).await
            }
        });
        let rows = claim
            .await
            .map_err(|e| BackendError(format!("a claim did not end: {e}")))??;
        for row in rows {
            let id = row.id.clone();
            match judge::task_of(row, queue) {
                Ok(task) => fetched.tasks.push(task),
                Err(why) => {
                    // (If this fails, the fetch fails and ends the worker: its release hands
                    // back what the claim took, this row with it.)
                    let why = format!("apalis cannot read this task: {why}");
                    let killed = sql::kill_claimed(&self.pool, &[id], me, &why).await?;
                    fetched.failed(killed, &why);
                }
            }
        }
        Ok(fetched)
    }

    /// The claim marks tasks running: apalis sends no locks (`lock_tasks` is off).
    async fn handle_events(
        self,
        _locks: Vec<String>,
        acks: Vec<TaskResult<Value>>,
        worker: WorkerContext,
    ) -> Result<(), BackendError> {
        let acked: Vec<String> = acks.iter().map(|a| a.task_id().to_string()).collect();
        let begun = self.give_backs.begin(worker.name(), &acked);
        let outcome = self.acknowledge(&acks, worker.name(), &begun).await;
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
