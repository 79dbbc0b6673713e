//! The apalis backend of the SQL stores (SQLite, PostgreSQL): apalis-core's `Persisted` driver
//! over our own `Persistence`, which runs the apalis store's public queries (through a
//! [`Dialect`]) with two differences. A fetch that fails on a row apalis cannot read (apalis
//! rolls the claim back, so the next fetch would meet the same row first again, for every
//! worker) fails that row alone with its reason and fetches on; and a fetch on a store that is
//! no longer the one the worker was made for (a SQLite file replaced) fails, so that the worker
//! is replaced on the new one.
//!
//! Every operation runs as a task of its own ([`detached`]). apalis keeps an operation's future
//! in its state machine and polls it only while its worker polls the backend — and a worker at
//! capacity stops polling. An operation parked between its first write and its commit held its
//! locks (on SQLite, the file's write lock) for as long as that lasted: every producer's push
//! and every other worker's fetch waited for a running task to end (seen: over 60 s, on a
//! loaded machine).

use std::future::Future;
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::persistence::{Persisted, Persistence, TaskEvent, TaskPersistLayer};
use apalis_core::backend::{Backend, BackendConfig, TaskResult};
use apalis_core::task::Task;
use apalis_core::worker::context::WorkerContext;
use apalis_sqlite::JsonCodec;
use serde_json::Value;

use super::OnUnreadable;

/// An error of a SQL store's backend, as text.
#[derive(Debug)]
pub(crate) struct BackendError(pub(crate) String);

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

/// How many of the rows the next fetch would claim a quarantine judges: more than the fetch
/// takes (one), so that a row another worker holds locked at that moment does not hide the
/// unreadable one behind it (failing an unreadable row never depends on its place).
pub(crate) const QUARANTINE_WINDOW: usize = 32;

/// A claimed row apalis cannot read, found by [`Dialect::condemned`]: how to name it to fail
/// it (`key`), its id for logs, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Condemned<K> {
    pub(crate) key: K,
    pub(crate) shown_id: String,
    pub(crate) why: String,
}

/// What one fetch claimed: the tasks to run, and the rows it failed for good on the way
/// (their ids and why).
pub(crate) struct Fetched {
    pub(crate) tasks: Vec<Task<Vec<u8>>>,
    pub(crate) failed: Vec<(String, String)>,
}

impl Fetched {
    /// Tasks the fetch failed for good: their stored ids, and why.
    pub(crate) fn failed(&mut self, ids: Vec<String>, why: &str) {
        self.failed
            .extend(ids.into_iter().map(|id| (id, why.to_owned())));
    }
}

/// What becomes of a task a fetch claimed, once its row was looked up by the id apalis prints
/// (apalis reads a row's id as a ULID in any spelling but locks and acknowledges it by the id
/// as the ULID prints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// Found as printed, freshly claimed by this worker, its count writable back: run it.
    Run,
    /// Found as printed, but apalis could not write its count back (the acknowledgement would
    /// fail, and with it every other in its batch): fail the row for good, with why.
    Fail(String),
    /// Not found as printed: the row claimed is spelled otherwise (a lower-case ULID, one whose
    /// top bits overflow): fail the rows of this worker that read as this id, with why.
    Miswritten(String),
}

/// Judges a claimed task: `found` whether its row is found by the printed `id` among this
/// fetch's claims; `attempt` the count apalis read; `most` the largest count the store can
/// be written back after one more attempt.
pub(crate) fn judge_claimed(found: bool, id: &str, attempt: usize, most: usize) -> Claimed {
    if !found {
        return Claimed::Miswritten(format!(
            "apalis cannot read this task: its id is not written as apalis writes it back ({id})"
        ));
    }
    if attempt >= most {
        // (A negative count reads as a huge one: shown as stored.)
        return Claimed::Fail(format!(
            "apalis cannot read this task: its stored attempts ({}) is out of the range 0..{most}",
            attempt as i64
        ));
    }
    Claimed::Run
}

/// Whether a row stored under `stored` is read by apalis as the task it prints as `printed`
/// without being written so (a spelling its lock and acknowledgement miss).
pub(crate) fn misspells(stored: &str, printed: &str) -> bool {
    stored != printed && ulid::Ulid::from_string(stored).is_ok_and(|u| u.to_string() == printed)
}

/// A SQL store's statements as the shield runs them. Each method takes an owned copy of the
/// dialect (a pool handle and settings) and returns a `'static` future, so that it can run
/// [`detached`]; each is one transaction.
pub(crate) trait Dialect: Clone + Send + Sync + 'static {
    /// apalis' settings of this store.
    type Config: Clone + Send + Sync + 'static;
    /// How a row is named to fail it when its id cannot be trusted.
    type Key: Send + 'static;

    fn config(&self) -> &Self::Config;
    fn heartbeat_interval(&self) -> Duration;
    fn batch_size(&self) -> usize;
    fn persist_results(&self) -> bool;
    fn lock_tasks(&self) -> bool;

    /// `Ok` if the store is still the one the worker was made for.
    fn check(&self) -> Result<(), String>;

    fn register(
        self,
        worker: WorkerContext,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    fn heartbeat(
        self,
        worker: WorkerContext,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// apalis' fetch in a transaction of its own (rolled back if it fails), each claimed task
    /// [judged](judge_claimed) in it.
    fn fetch(
        self,
        worker: WorkerContext,
    ) -> impl Future<Output = Result<Fetched, BackendError>> + Send;

    /// Whether a failed fetch looks for the rows apalis cannot read ([`Dialect::condemned`])
    /// and fetches on. A dialect whose fetch reads rows itself, and whose claim may have
    /// committed when its fetch fails, says no: its failed fetch ends the worker, whose release
    /// puts back what the claim took (a fetch on, in the same worker, would leave it claimed by
    /// a worker that lives on).
    fn quarantines(&self) -> bool {
        true
    }

    /// Of the [`QUARANTINE_WINDOW`] rows next in the fetch's order, those apalis cannot read.
    /// None by default: a dialect whose fetch reads rows itself fails them in the fetch.
    fn condemned(
        self,
    ) -> impl Future<Output = Result<Vec<Condemned<Self::Key>>, BackendError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Fails a row for good with `why`, if it is still unclaimed; whether it was.
    fn fail_unclaimed(
        self,
        _key: Self::Key,
        _why: String,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send {
        async { Ok(false) }
    }

    /// apalis' locks (if the dialect asks for them) and acknowledgements, in one transaction.
    /// A lock applies only to a task this worker claimed and has not acknowledged (apalis' own
    /// lock statement takes any holder's).
    fn handle_events(
        self,
        locks: Vec<String>,
        acks: Vec<TaskResult<Value>>,
        worker: WorkerContext,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    fn reenqueue_abandoned(
        self,
        ids: Vec<String>,
        worker: WorkerContext,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;

    fn push_tasks(
        self,
        tasks: Vec<Task<Vec<u8>>>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;
}

/// Runs `op` as a task of its own, so that it reaches its end — its transaction committed or
/// rolled back, its locks let go — whether or not its caller polls it meanwhile. Dropped by
/// its caller, the task is aborted: a transaction not committed yet is rolled back.
async fn detached<T: Send + 'static>(
    op: impl Future<Output = Result<T, BackendError>> + Send + 'static,
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

/// The persistence one apalis worker runs on: a dialect and whom to tell of the rows it fails.
#[derive(Clone)]
pub(crate) struct Shield<D> {
    pub(crate) dialect: D,
    pub(crate) on_unreadable: OnUnreadable,
}

impl<D: Dialect> Shield<D> {
    /// After a failed fetch (rolled back): fails for good the rows the fetch would have
    /// claimed that apalis cannot read; how many.
    async fn quarantine(&self) -> Result<usize, BackendError> {
        let mut failed = 0;
        for row in self.dialect.clone().condemned().await? {
            let why = format!("apalis cannot read this task: {}", row.why);
            if self
                .dialect
                .clone()
                .fail_unclaimed(row.key, why.clone())
                .await?
            {
                (self.on_unreadable)(&row.shown_id, &why);
                failed += 1;
            }
        }
        Ok(failed)
    }

    async fn fetch_now(self, worker: WorkerContext) -> Result<Vec<Task<Vec<u8>>>, BackendError> {
        self.dialect.check().map_err(BackendError)?;
        // A fetch that fails on a row apalis cannot read fails that row alone and fetches on.
        // If nothing was found to fail, another worker may have failed it first, or another
        // row ranked first since: the fetch is tried once more before its error counts.
        // The fetch runs as a task of its own: a row that makes apalis' row conversion panic
        // (apalis-postgres unwraps a metadata value) fails the fetch, not the quarantine.
        let mut tries = 0;
        loop {
            let error = match detached(self.dialect.clone().fetch(worker.clone())).await {
                Ok(fetched) => {
                    for (id, why) in &fetched.failed {
                        (self.on_unreadable)(id, why);
                    }
                    return Ok(fetched.tasks);
                }
                Err(e) => e,
            };
            if !self.dialect.quarantines() {
                return Err(error);
            }
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
}

impl<D: Dialect> Persistence for Shield<D> {
    type Compact = Vec<u8>;
    type Response = Value;
    type Error = BackendError;

    async fn register(&mut self, worker: &WorkerContext) -> Result<(), BackendError> {
        detached(self.dialect.clone().register(worker.clone())).await
    }

    async fn heartbeat(&mut self, worker: &WorkerContext) -> Result<(), BackendError> {
        detached(self.dialect.clone().heartbeat(worker.clone())).await
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
        let mut locks = Vec::new();
        let mut acks = Vec::new();
        for event in events {
            match event {
                TaskEvent::Lock { task_id } => locks.push(task_id.to_string()),
                TaskEvent::Complete(result) => acks.push(result),
                _ => {}
            }
        }
        if locks.is_empty() && acks.is_empty() {
            return Ok(());
        }
        detached(
            self.dialect
                .clone()
                .handle_events(locks, acks, worker.clone()),
        )
        .await
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
        detached(
            self.dialect
                .clone()
                .reenqueue_abandoned(ids, worker.clone()),
        )
        .await
    }

    async fn push_tasks(&mut self, tasks: Vec<Task<Vec<u8>>>) -> Result<(), BackendError> {
        detached(self.dialect.clone().push_tasks(tasks)).await
    }
}

/// The backend one apalis worker runs on.
pub(crate) struct SqlBackend<D: Dialect> {
    persisted: Persisted<Shield<D>>,
    config: D::Config,
    heartbeat: Duration,
    batch_size: usize,
    persist_results: bool,
    lock_tasks: bool,
}

impl<D: Dialect> SqlBackend<D> {
    pub(crate) fn new(dialect: D, on_unreadable: OnUnreadable) -> Self {
        SqlBackend {
            config: dialect.config().clone(),
            heartbeat: dialect.heartbeat_interval(),
            batch_size: dialect.batch_size(),
            persist_results: dialect.persist_results(),
            lock_tasks: dialect.lock_tasks(),
            persisted: Persisted::new(Shield {
                dialect,
                on_unreadable,
            }),
        }
    }
}

impl<D: Dialect> Backend for SqlBackend<D> {
    type Task = Task<Vec<u8>>;
    type Error = BackendError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), BackendError>> {
        self.persisted.poll_ready(cx, worker, self.heartbeat)
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
impl<D: Dialect> BackendConfig for SqlBackend<D> {
    type Args = Vec<u8>;
    type Id = ulid::Ulid;
    type Kind = Ephemeral;
    type Config = D::Config;
    type Layer = TaskPersistLayer<JsonCodec<Value>, Value>;

    fn config(&self) -> &D::Config {
        &self.config
    }

    fn middleware(&mut self, _: &mut WorkerContext) -> Self::Layer {
        self.persisted
            .layer(JsonCodec::default(), self.batch_size)
            .persist_results(self.persist_results)
            .lock_tasks(self.lock_tasks)
    }
}
