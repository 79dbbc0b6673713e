//! The PostgreSQL store: apalis-postgres' `apalis.jobs` table, shared by a fleet, plus what
//! apalis 1.0 does not do (see the [`Store`] methods): giving back a deferred task's attempt
//! (written with apalis' acknowledgement, since PostgreSQL's fetch takes a waiting task
//! whoever holds it), handing a stopped worker's tasks back, retry times, and failing
//! unreadable rows alone. Nothing is ever owed back (a give-back is written with its
//! acknowledgement) and apalis' orphan re-run counts an attempt, so `counted_attempt` and
//! `started` are the trait's defaults. Workers wake on PostgreSQL's `NOTIFY` of a new task (apalis'
//! trigger) and poll as well, for retries that come due.

use std::sync::Arc;
use std::time::Duration;

use apalis_core::backend::ext::BackendExt as _;
use apalis_postgres::{Config, PostgresStorage};
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::apalis::run_apalis;
use super::redis::redact;
use super::shield::SqlBackend;
use super::{Intent, NewTask, RunSpec, Settled, Store};
use crate::queue::{QueueCounts, QueueError, TaskInfo};

mod claims;
mod dialect;
mod give_backs;
pub(crate) mod judge;
mod sql;
mod wake;

use claims::Claims;
use dialect::PgDialect;
use give_backs::GiveBacks;
use wake::Wakes;

/// Connections a queue opens to the server when it makes its own pool (`Queue::postgres`).
const POOL_SIZE: u32 = 8;

pub(crate) struct PostgresStore {
    pool: PgPool,
    shown: String,
    give_backs: GiveBacks,
    claims: Claims,
    wakes: Arc<Wakes>,
}

impl PostgresStore {
    /// Connects to `url` with a pool of its own and brings apalis' tables up to date.
    pub(crate) async fn connect(url: &str) -> Result<PostgresStore, QueueError> {
        let shown = redact(url);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(|e| QueueError::Store(format!("connecting to {shown}: {e}")))?;
        PostgresStore::on_pool(pool, shown).await
    }

    /// On the application's pool; brings apalis' tables up to date.
    pub(crate) async fn on_pool(pool: PgPool, shown: String) -> Result<PostgresStore, QueueError> {
        // The migrations take PostgreSQL's advisory lock: processes starting together wait
        // for each other. They create the extensions `hstore` and `pgcrypto`.
        PostgresStorage::setup(&pool)
            .await
            .map_err(|e| QueueError::Store(format!("setting up apalis' tables on {shown}: {e}")))?;
        Ok(PostgresStore {
            wakes: Wakes::new(pool.clone()),
            pool,
            shown,
            give_backs: GiveBacks::default(),
            claims: Claims::default(),
        })
    }
}

impl Store for PostgresStore {
    fn describe(&self) -> String {
        format!("postgres {}", self.shown)
    }

    fn push<'a>(
        &'a self,
        queue: &'a str,
        tasks: Vec<NewTask>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        async move {
            let tasks = tasks.into_iter().map(NewTask::into_apalis).collect();
            // One statement: all or none.
            apalis_postgres::queries::push_tasks(&mut *self.pool.acquire().await?, queue, tasks)
                .await
                .map_err(|e| QueueError::Store(e.to_string()))
        }
        .boxed()
    }

    fn counts<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueCounts, QueueError>> {
        sql::counts(&self.pool, queue).boxed()
    }

    fn task<'a>(
        &'a self,
        queue: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TaskInfo>, QueueError>> {
        sql::task(&self.pool, queue, id).boxed()
    }

    fn run(self: Arc<Self>, spec: RunSpec) -> BoxFuture<'static, Result<(), String>> {
        let config = Config::default()
            .queue(&spec.queue)
            .batch_size(1)
            // The claim marks a task running (`sql::claim`).
            .lock_tasks(false)
            .heartbeat_interval(spec.heartbeat)
            .missed_heartbeats(3);
        let dialect = PgDialect {
            pool: self.pool.clone(),
            config,
            give_backs: self.give_backs.clone(),
            claims: self.claims.clone(),
        };
        async move {
            // Woken by the NOTIFY of apalis' insert trigger (the store's listener); polling
            // too, for retries that come due and while the listener reconnects.
            let wake = self.wakes.stream(&spec.queue);
            let backend = SqlBackend::new(dialect, Arc::clone(&spec.on_unreadable))
                .poll_with_stream(wake)
                .poll_with_interval(spec.poll_interval);
            run_apalis(backend, spec).await
        }
        .boxed()
    }

    fn prepare<'a>(
        &'a self,
        _queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>> {
        async move {
            match intent {
                Intent::GiveBack { .. } => {
                    self.give_backs.prepare(worker, id);
                    Ok(Settled::NotYet)
                }
                Intent::RetryAt { at, .. } => {
                    sql::retry_at(&self.pool, worker, id, *at).await?;
                    Ok(Settled::Done)
                }
            }
        }
        .boxed()
    }

    fn settle<'a>(
        &'a self,
        _queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>> {
        async move {
            if let Intent::RetryAt { .. } = intent {
                return Ok(Settled::Done);
            }
            let prepared = self.give_backs.stands(worker, id);
            let stands = prepared.map(|p| p.stands);
            let row = match stands {
                Some(judge::GiveBack::Waiting) | None => sql::holder(&self.pool, id).await?,
                _ => None,
            };
            let row = row.as_ref().map(|(s, h)| (s.as_str(), h.as_deref()));
            let mut settled = judge::give_back_settled(stands, row, worker);
            if settled == Settled::Gone && row == Some(("Pending", Some(worker))) {
                // Acknowledged without its give-back (none was waiting then): give it back now.
                let mut conn = self.pool.acquire().await?;
                if sql::give_back(&mut conn, worker, id).await? {
                    settled = Settled::Done;
                }
            }
            if let (Some(p), false) = (prepared, settled == Settled::NotYet) {
                self.give_backs.forget(worker, id, p.generation);
            }
            Ok(settled)
        }
        .boxed()
    }

    fn release_worker<'a>(
        &'a self,
        _queue: &'a str,
        worker: &'a str,
        _unsettled: &'a [(String, Intent)],
    ) -> BoxFuture<'a, Result<u64, QueueError>> {
        async move {
            // Gone for good whatever the release does.
            self.give_backs.forget_worker(worker);
            // A claim the worker sent lands before its tasks are put back, none after.
            self.claims.release(worker).await;
            sql::release_worker(&self.pool, worker).await
        }
        .boxed()
    }

    fn sweep<'a>(
        &'a self,
        _queue: &'a str,
        _orphan_timeout: Duration,
    ) -> BoxFuture<'a, Result<u64, QueueError>> {
        // Nothing strands: a give-back is written with its acknowledgement, and apalis' fetch
        // takes a waiting task whoever held it. PostgreSQL keeps its own statistics.
        async { Ok(0) }.boxed()
    }
}
