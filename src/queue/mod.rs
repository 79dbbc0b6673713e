//! Message-based jobs from a durable queue, each run on a lease (feature `queue`).
//!
//! leasepool bounds blocking work inside one process; a [`Queue`] spreads message-based jobs over
//! many processes and machines. The queue engine is [apalis](https://docs.rs/apalis) 1.x: its
//! SQLite backend (one file, several processes, no server to install) or its Redis backend (a
//! fleet). A [`QueueWorker`] claims tasks only while its [`LeaseManager`] has room for them (plus
//! a small, bounded prefetch) and runs each on a lease of its own, so a saturated instance
//! leaves tasks for the others. The guide page `docs/distributed.md` tells the whole story.
//!
//! ```
//! use std::time::Duration;
//! use leasepool::queue::{Queue, QueueWorker};
//! use leasepool::LeaseManager;
//!
//! # #[actix_rt::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("leasepool-queue-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let queue = Queue::sqlite(dir.join("jobs.db")).await?;
//! for n in 0..10_u64 {
//!     queue.push("squares", n).await?;
//! }
//! let manager = LeaseManager::builder().max_pools(2).workers_per_pool(1).build()?;
//! manager.start().await?;
//! let worker = QueueWorker::builder(&manager, &queue, "squares")
//!     .poll_interval(Duration::from_millis(20))
//!     .build_blocking(|n: u64| -> Result<(), String> {
//!         let _ = n * n; // the blocking work
//!         Ok(())
//!     })?;
//! worker.start()?;
//! while worker.stats().done < 10 {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! let stats = worker.stop().await;
//! assert_eq!(stats.done, 10);
//! assert_eq!(queue.counts("squares").await?.done, 10);
//! manager.stop().await;
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! # Outcomes
//!
//! | what happened | the task | counter |
//! |---|---|---|
//! | the job returned `Ok` | done, acknowledged once | `done` |
//! | the job returned `Err(e)` or panicked | the attempt fails with the message; the queue retries it while attempts remain (`max_attempts`, default 25) | `failed` |
//! | `WorkerLost`, `Expired` (a crash, a revoked lease) | the attempt fails and is retried | `retried` |
//! | no lease came (`Unavailable`, `Timeout`, `NoHealthyPool`, `Stopped`) | put back for anyone, attempt not counted | `put_back` |
//! | the job cannot run here (`InvalidArgument`, `ProcessJob`) | killed, never retried | `failed` |
//! | the payload does not decode as `T` | killed, never retried; the others run on | `failed` |
//! | the worker stopped before the task got a lease, or it outran the shutdown timeout | handed back, attempt not counted | `handed_back` |
//!
//! Delivery is **at least once**: a task handed back after its shutdown timeout, or one whose
//! instance was killed (re-run by the others once its heartbeat is older than
//! [`orphan_timeout`](QueueWorkerBuilder::orphan_timeout)), may have done part or all of its work.
//! Make jobs idempotent; `docs/distributed.md` shows how.
//!
//! Requires Rust 1.94 (apalis 1.0 builds on sqlx 0.9).

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::BackendExt as _;
use apalis_core::backend::TaskSink as _;
use apalis_core::error::{AbortError, BoxDynError, DeferredError};
use apalis_core::task::Task;
use apalis_core::worker::builder::WorkerBuilder;
use apalis_core::worker::context::WorkerContext;
use apalis_core::worker::event::Event;
use apalis_core::worker::ext::event_listener::EventListenerExt as _;
use apalis_sqlite::{Config, SqliteStorage};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::Notify;

use crate::{LeaseError, LeaseManager};

mod redis;
mod sqlite;

/// What went wrong with a [`Queue`] or a [`QueueWorker`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue's store failed (the SQLite file could not be opened, a query failed).
    #[error("queue store: {0}")]
    Store(String),
    /// A setting or argument was refused; the text names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`QueueWorker::start`] was called while the worker runs.
    #[error("the queue worker `{0}` is already running")]
    AlreadyRunning(String),
    /// [`QueueWorker::start`] was called while a [`QueueWorker::stop`] is under way; start
    /// again once it has returned.
    #[error("the queue worker `{0}` is stopping")]
    Stopping(String),
    /// [`QueueWorker::start`] was called outside a tokio runtime (actix's `System` is one).
    #[error("QueueWorker::start needs a tokio runtime (actix_rt::System or #[tokio::main])")]
    NoRuntime,
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        QueueError::Store(e.to_string())
    }
}

/// A durable queue shared by producers and workers of any number of processes: a SQLite file
/// (one machine, [`Queue::sqlite`]) or a Redis server (a fleet, [`Queue::redis`]). Cheap to
/// clone.
#[derive(Clone)]
pub struct Queue {
    store: Store,
}

#[derive(Clone)]
enum Store {
    Sqlite {
        pool: SqlitePool,
        path: Arc<PathBuf>,
    },
    Redis {
        conn: ::redis::aio::ConnectionManager,
        url: Arc<str>,
    },
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.store {
            Store::Sqlite { path, .. } => f.debug_struct("Queue").field("sqlite", path).finish(),
            Store::Redis { url, .. } => f
                .debug_struct("Queue")
                .field("redis", &redis::redact(url))
                .finish(),
        }
    }
}

/// How many tasks of one queue are in each state ([`Queue::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueCounts {
    /// Waiting to be claimed, retries included.
    pub pending: u64,
    /// Claimed by a worker (running or about to).
    pub claimed: u64,
    /// Done and acknowledged.
    pub done: u64,
    /// Failed for good: out of attempts, or killed as unrunnable.
    pub failed: u64,
}

impl QueueCounts {
    /// Every task in the queue.
    pub fn total(&self) -> u64 {
        self.pending + self.claimed + self.done + self.failed
    }
}

fn check_queue_name(name: &str) -> Result<(), QueueError> {
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(QueueError::InvalidArgument(format!(
            "queue name {name:?}: it must be 1 to 200 bytes without control characters"
        )));
    }
    Ok(())
}

impl Queue {
    /// Opens (creating it if missing) the SQLite queue at `path` and brings its tables up to
    /// date. Several processes may open the same file at once.
    ///
    /// The file is in WAL mode with `synchronous = NORMAL`: a crashed process loses nothing;
    /// a power loss may lose the last acknowledgements (their tasks then run again).
    pub async fn sqlite(path: impl AsRef<Path>) -> Result<Queue, QueueError> {
        let path = path.as_ref().to_path_buf();
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        // apalis' setup runs the migrations (and sets `synchronous = OFF` on its connection):
        // on a pool of its own, closed before ours is used. Processes starting together may
        // race on the migrations: a few tries settle it.
        let mut tries = 0;
        loop {
            let setup = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options.clone())
                .await
                .map_err(|e| QueueError::Store(format!("opening {}: {e}", path.display())))?;
            let result = SqliteStorage::setup(&setup).await;
            setup.close().await;
            match result {
                Ok(()) => break,
                Err(e) if tries < 5 => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "queue setup raced another process; again");
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(e) => {
                    return Err(QueueError::Store(format!(
                        "setting up {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| QueueError::Store(format!("opening {}: {e}", path.display())))?;
        Ok(Queue {
            store: Store::Sqlite {
                pool,
                path: Arc::new(path),
            },
        })
    }

    /// Connects to the Redis server at `url` (`redis://host:port/db`), for a fleet of
    /// machines. The connection reconnects on its own after a network error.
    pub async fn redis(url: &str) -> Result<Queue, QueueError> {
        let conn = apalis_redis::connect(url)
            .await
            .map_err(|e| QueueError::Store(format!("connecting to {}: {e}", redis::redact(url))))?;
        Ok(Queue {
            store: Store::Redis {
                conn,
                url: Arc::from(url),
            },
        })
    }

    fn is_redis(&self) -> bool {
        matches!(self.store, Store::Redis { .. })
    }

    /// The SQLite file this queue lives in (`None` for Redis).
    pub fn path(&self) -> Option<&Path> {
        match &self.store {
            Store::Sqlite { path, .. } => Some(path),
            Store::Redis { .. } => None,
        }
    }

    /// Adds `task` to the queue named `queue`; returns its task id. The task may be tried up to
    /// 25 times (see [`push_with_attempts`](Self::push_with_attempts)).
    pub async fn push<T>(&self, queue: &str, task: T) -> Result<String, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        self.push_with_attempts(queue, task, 25).await
    }

    /// Like [`push`](Self::push), with the number of times the task may be tried (`≥ 1`).
    pub async fn push_with_attempts<T>(
        &self,
        queue: &str,
        task: T,
        max_attempts: usize,
    ) -> Result<String, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        check_queue_name(queue)?;
        if max_attempts == 0 {
            return Err(QueueError::InvalidArgument(
                "max_attempts must be at least 1".into(),
            ));
        }
        let id = ulid::Ulid::generate().to_string();
        let task = apalis_core::task::builder::TaskBuilder::new(task)
            .task_id(apalis_core::task::task_id::TaskId::from_string(id.clone()))
            .max_attempts(max_attempts)
            .build();
        match &self.store {
            Store::Sqlite { pool, .. } => SqliteStorage::<T>::new(pool)
                .with_config(Config::default().queue(queue))
                .push_task(task)
                .await
                .map_err(|e| QueueError::Store(e.to_string())),
            Store::Redis { conn, .. } => {
                apalis_redis::RedisStorage::<T>::new(conn.clone())
                    .with_config(apalis_redis::Config::default().queue(queue))
                    .push_task(task)
                    .await
                    .map_err(|e| QueueError::Store(e.to_string()))?;
                // Pushed: the task is durable and due now. Moving it to the active list only
                // spares the fetch a backlog (any worker moves due tasks), so a failure here
                // is no failure of the push: a caller that retried would run the task twice.
                if let Err(e) = redis::promote(conn, queue, std::slice::from_ref(&id)).await {
                    tracing::debug!(queue, task = %id, error = %e, "moving a pushed task to the active list failed; the workers will");
                }
                Ok(())
            }
        }?;
        Ok(id)
    }

    /// Pushes many tasks (far faster than one [`push`](Self::push) each). On SQLite they are
    /// pushed in one transaction: all or none. On Redis they go in chunks of 1 000, each in one
    /// script: an error after the first chunk says how many tasks were queued before it (those
    /// run; pushing them again would run them twice).
    pub async fn push_all<T, I>(&self, queue: &str, tasks: I) -> Result<usize, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
        I: IntoIterator<Item = T>,
    {
        check_queue_name(queue)?;
        let tasks: Vec<T> = tasks.into_iter().collect();
        let n = tasks.len();
        match &self.store {
            Store::Sqlite { pool, .. } => SqliteStorage::<T>::new(pool)
                .with_config(Config::default().queue(queue))
                .push_bulk(tasks)
                .await
                .map_err(|e| QueueError::Store(e.to_string())),
            Store::Redis { conn, .. } => {
                let mut storage = apalis_redis::RedisStorage::<T>::new(conn.clone())
                    .with_config(apalis_redis::Config::default().queue(queue));
                let mut tasks = tasks.into_iter().peekable();
                let mut queued = 0;
                while tasks.peek().is_some() {
                    let chunk: Vec<Task<T>> = tasks
                        .by_ref()
                        .take(redis::PUSH_CHUNK)
                        .map(|t| {
                            apalis_core::task::builder::TaskBuilder::new(t)
                                .task_id(apalis_core::task::task_id::TaskId::from_string(
                                    ulid::Ulid::generate().to_string(),
                                ))
                                .build()
                        })
                        .collect();
                    let ids: Vec<String> = chunk
                        .iter()
                        .filter_map(|t| t.ctx().task_id().map(ToString::to_string))
                        .collect();
                    storage
                        .push_all(futures_util::stream::iter(chunk))
                        .await
                        .map_err(|e| {
                            QueueError::Store(if queued == 0 {
                                e.to_string()
                            } else {
                                format!("{e} (after {queued} of {n} tasks were queued)")
                            })
                        })?;
                    queued += ids.len();
                    if let Err(e) = redis::promote(conn, queue, &ids).await {
                        tracing::debug!(queue, error = %e, "moving pushed tasks to the active list failed; the workers will");
                    }
                }
                Ok(())
            }
        }?;
        Ok(n)
    }

    /// How many tasks of the queue named `queue` are in each state: one snapshot of the store
    /// (one SQL statement, or one Lua script on Redis), so every task is counted exactly once
    /// even while workers move tasks between states.
    pub async fn counts(&self, queue: &str) -> Result<QueueCounts, QueueError> {
        check_queue_name(queue)?;
        match &self.store {
            Store::Sqlite { pool, .. } => sqlite::counts(pool, queue).await,
            Store::Redis { conn, .. } => redis::counts(conn, queue).await,
        }
    }

    /// Where the task with id `id` of the queue named `queue` stands (`None`: no such task).
    pub async fn task(&self, queue: &str, id: &str) -> Result<Option<TaskInfo>, QueueError> {
        check_queue_name(queue)?;
        match &self.store {
            Store::Sqlite { pool, .. } => sqlite::task(pool, id).await,
            Store::Redis { conn, .. } => redis::task(conn, queue, id).await,
        }
    }

    /// Gives back a task that `worker` deferred (its acknowledgement is in the store): unlocks
    /// it for anyone and takes back the attempt that deferring counted. Returns whether the
    /// task was found in that state.
    async fn unlock_deferred(
        &self,
        queue: &str,
        (task_id, attempt): (&str, usize),
        worker: &str,
    ) -> Result<bool, QueueError> {
        match &self.store {
            Store::Sqlite { pool, .. } => sqlite::unlock_deferred(pool, task_id, worker).await,
            Store::Redis { conn, .. } => {
                redis::unlock_deferred(conn, queue, task_id, attempt).await
            }
        }
    }

    /// Before a deferral at `attempt` is acknowledged on Redis: marks in the task that the
    /// attempt about to be counted is owed back. Another worker may take the task from the
    /// schedule before this worker gives the attempt back; it then subtracts what is owed (see
    /// [`redis::OWED`]). SQLite needs nothing: a deferred row stays locked by its worker.
    async fn owe_attempt(
        &self,
        queue: &str,
        worker: &str,
        task_id: &str,
        attempt: usize,
    ) -> Result<(), QueueError> {
        match &self.store {
            Store::Sqlite { .. } => Ok(()),
            Store::Redis { conn, .. } => {
                redis::owe_attempt(conn, queue, worker, task_id, attempt).await?;
                Ok(())
            }
        }
    }

    /// SQLite: gives back the deferred tasks of workers that died before giving them back
    /// (their rows stay locked, and neither apalis' fetch nor its orphan re-run takes a
    /// `Pending` row). Redis needs nothing: a deferred task is in the schedule for anyone.
    async fn free_dead_deferrals(
        &self,
        queue: &str,
        orphan_timeout: Duration,
    ) -> Result<u64, QueueError> {
        match &self.store {
            Store::Sqlite { pool, .. } => {
                sqlite::free_dead_deferrals(pool, queue, orphan_timeout).await
            }
            Store::Redis { .. } => Ok(0),
        }
    }

    /// After `worker` stopped for good: every task it still holds (claimed, running, or
    /// deferred) goes back to the queue without counting an attempt. `deferred` lists the
    /// deferrals not yet given back; SQLite finds them by their row (still locked by `worker`),
    /// Redis needs their ids (a deferred task left the worker's in-flight set).
    async fn release_worker(
        &self,
        queue: &str,
        worker: &str,
        deferred: &[Deferral],
    ) -> Result<u64, QueueError> {
        match &self.store {
            Store::Sqlite { pool, .. } => sqlite::release_worker(pool, worker).await,
            Store::Redis { conn, .. } => redis::release_worker(conn, queue, worker, deferred).await,
        }
    }
}

/// One task's state in the queue ([`Queue::task`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct TaskInfo {
    /// apalis' status: `Pending`, `Queued` (claimed), `Running`, `Done`, `Failed`, `Killed`.
    pub status: String,
    /// Attempts counted so far (put-backs and hand-backs are not counted).
    pub attempts: u64,
    /// Attempts allowed.
    pub max_attempts: u64,
    /// The worker instance holding it, if any.
    pub locked_by: Option<String>,
    /// The last attempt's result as the queue stored it (JSON), if any.
    pub last_result: Option<String>,
}

/// What a [`QueueWorker`] has done since it was built ([`QueueWorker::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueStats {
    /// Tasks taken from the queue.
    pub claimed: u64,
    /// Tasks done and acknowledged.
    pub done: u64,
    /// Attempts that failed through no fault of the job (`WorkerLost`, `Expired`): retried.
    pub retried: u64,
    /// Attempts that failed: the job returned an error, panicked, or cannot run here.
    pub failed: u64,
    /// Tasks put back because no lease came (overload): not counted as attempts.
    pub put_back: u64,
    /// Tasks handed back by a stop (not started, or past the shutdown timeout).
    pub handed_back: u64,
    /// Tasks running on a lease now.
    pub running: u64,
    /// Tasks claimed and waiting for a lease now (the prefetch).
    pub waiting: u64,
    /// Times the queue worker failed (its store failed) and was replaced.
    pub restarts: u64,
}

#[derive(Default)]
struct Counters {
    claimed: AtomicU64,
    done: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
    put_back: AtomicU64,
    handed_back: AtomicU64,
    running: Arc<AtomicUsize>,
    /// Claimed, no lease yet.
    waiting: Arc<AtomicUsize>,
    restarts: AtomicU64,
    /// Tasks handed to the current apalis worker whose whole pipeline (ours, then apalis'
    /// acknowledgement) has not finished: `call` adds one, apalis' result event takes it away.
    outstanding: Arc<AtomicUsize>,
    /// Bumped every time one of our tasks got its lease (see `LeasedService::snapshot`).
    leased: AtomicU64,
}

type RunFn<S, T> = dyn Fn(crate::Lease<S>, T) -> BoxFuture<'static, Result<Result<(), String>, LeaseError>>
    + Send
    + Sync;

/// Builds a [`QueueWorker`] ([`QueueWorker::builder`]).
pub struct QueueWorkerBuilder<S: 'static> {
    manager: LeaseManager<S>,
    queue: Queue,
    name: String,
    instance: Option<String>,
    prefetch: usize,
    poll_interval: Duration,
    orphan_timeout: Duration,
    lease_wait: Duration,
    lease_for: Option<Duration>,
    shutdown_timeout: Duration,
    hold_deferrals: Duration,
}

impl<S: 'static> fmt::Debug for QueueWorkerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueWorkerBuilder")
            .field("queue", &self.name)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

impl<S: 'static> QueueWorkerBuilder<S> {
    /// A unique name for this worker in the queue (default: queue, host, pid and a counter).
    /// Two live workers must never share one.
    pub fn instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// Tasks claimed beyond what the manager can start now (default 0): they wait for a lease
    /// here, invisible to other instances. A little prefetch hides the queue's round trip.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// How often an idle worker asks the queue for tasks (default 100 ms).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long after this worker's last heartbeat the other workers re-run its tasks, if it
    /// died (default 60 s, at least 5 s). It heartbeats every third of it; the store counts in
    /// whole seconds, so a dead worker's tasks run again between about `orphan_timeout / 3 + 1 s`
    /// short of the timeout and the timeout itself after its death.
    pub fn orphan_timeout(mut self, d: Duration) -> Self {
        self.orphan_timeout = d;
        self
    }

    /// How long a claimed task waits for a lease before it is put back (default 30 s).
    pub fn lease_wait(mut self, d: Duration) -> Self {
        self.lease_wait = d;
        self
    }

    /// The lease length for each task (default: the manager's `default_lease`). A task that
    /// outruns it plus the grace is revoked (`Expired`) and retried.
    pub fn lease_for(mut self, d: Duration) -> Self {
        self.lease_for = Some(d);
        self
    }

    /// How long [`QueueWorker::stop`] lets running tasks finish before it hands them back
    /// (default 30 s).
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }

    /// Testing only (feature `testing`): deferred tasks are given back no sooner than `d`
    /// after their deferral, as if this worker lost the race to another worker or died first.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn hold_deferrals(mut self, d: Duration) -> Self {
        self.hold_deferrals = d;
        self
    }

    fn check(&self) -> Result<(), QueueError> {
        check_queue_name(&self.name)?;
        let bad = |what: &str| Err(QueueError::InvalidArgument(what.to_string()));
        if self.poll_interval.is_zero() {
            return bad("poll_interval must be more than zero");
        }
        if self.orphan_timeout < Duration::from_secs(5) {
            return bad("orphan_timeout must be at least 5 s (heartbeats are counted in whole seconds; a shorter timeout would take tasks from live workers)");
        }
        if self.lease_wait.is_zero() {
            return bad("lease_wait must be more than zero");
        }
        if self.lease_for.is_some_and(|d| d.is_zero()) {
            return bad("lease_for must be more than zero");
        }
        if self.prefetch > 1024 {
            return bad("prefetch must be at most 1024");
        }
        if let Some(name) = &self.instance {
            if name.is_empty() || name.chars().any(char::is_control) {
                return bad("instance_name must be non-empty, without control characters");
            }
        }
        Ok(())
    }

    fn finish<T>(self, run: Arc<RunFn<S, T>>) -> Result<QueueWorker<S, T>, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        self.check()?;
        let instance = self.instance.clone().unwrap_or_else(|| {
            format!(
                "{}@{}-{}-{}",
                self.name,
                hostname(),
                std::process::id(),
                INSTANCES.fetch_add(1, Ordering::Relaxed)
            )
        });
        Ok(QueueWorker {
            shared: Arc::new(Shared {
                manager: self.manager,
                queue: self.queue,
                name: self.name,
                base: instance.clone(),
                instance: Mutex::new(Arc::from(instance)),
                starts: AtomicU64::new(0),
                context: Mutex::new(None),
                last_error: Mutex::new(None),
                prefetch: self.prefetch,
                poll_interval: self.poll_interval,
                orphan_timeout: self.orphan_timeout,
                lease_wait: self.lease_wait,
                lease_for: self.lease_for,
                shutdown_timeout: self.shutdown_timeout,
                hold_deferrals: self.hold_deferrals,
                counters: Counters::default(),
                freed: Notify::new(),
                run,
                deferred: Mutex::new(Vec::new()),
                stopping: AtomicBool::new(false),
                stop_under_way: AtomicBool::new(false),
                claim_pause: Mutex::new((None, Duration::ZERO)),
                give_up: Notify::new(),
                gave_up: AtomicBool::new(false),
            }),
            running: Mutex::new(None),
        })
    }

    /// A worker whose tasks are closures' inputs: each task `T` runs `job(task)` on a worker
    /// thread of a lease (thread backend). `Err(e)` fails the attempt with `e`'s text.
    pub fn build_blocking<T, E, F>(self, job: F) -> Result<QueueWorker<S, T>, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
        E: fmt::Display,
        F: Fn(T) -> Result<(), E> + Send + Sync + 'static,
    {
        let job = Arc::new(job);
        let run: Arc<RunFn<S, T>> = Arc::new(move |lease: crate::Lease<S>, task: T| {
            let job = Arc::clone(&job);
            Box::pin(async move {
                lease
                    .run(move || job(task).map_err(|e| e.to_string()))
                    .await
            })
        });
        self.finish(run)
    }

    /// A worker whose tasks are [`ProcessJob`](crate::process::ProcessJob)s: each task runs
    /// with [`Lease::call`](crate::Lease::call) (a worker child on the process backend, a
    /// worker thread on the thread backend). Its output is dropped. Feature `process` too.
    #[cfg(feature = "process")]
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    pub fn build_calls<J>(self) -> Result<QueueWorker<S, J>, QueueError>
    where
        J: crate::process::ProcessJob + Sync + Unpin,
    {
        let run: Arc<RunFn<S, J>> = Arc::new(move |lease: crate::Lease<S>, job: J| {
            Box::pin(async move { lease.call(job).await.map(|_| Ok(())) })
        });
        self.finish(run)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into())
}

struct Shared<S: 'static, T> {
    manager: LeaseManager<S>,
    queue: Queue,
    name: String,
    /// The name given or made at build time; each start after the first adds `.N` (apalis
    /// refuses a name whose last heartbeat is recent).
    base: String,
    instance: Mutex<Arc<str>>,
    starts: AtomicU64,
    /// The current apalis worker's context (to stop it).
    context: Mutex<Option<WorkerContext>>,
    last_error: Mutex<Option<String>>,
    prefetch: usize,
    poll_interval: Duration,
    orphan_timeout: Duration,
    lease_wait: Duration,
    lease_for: Option<Duration>,
    shutdown_timeout: Duration,
    /// See `QueueWorkerBuilder::hold_deferrals` (zero but in tests).
    hold_deferrals: Duration,
    counters: Counters,
    /// One of our leases was released: the capacity gate looks again.
    freed: Notify,
    run: Arc<RunFn<S, T>>,
    /// Tasks deferred to the queue, still to be unlocked (see `Queue::unlock_deferred`).
    deferred: Mutex<Vec<Deferral>>,
    stopping: AtomicBool,
    /// A `stop` is running (from taking the run to handing back): `start` is refused.
    stop_under_way: AtomicBool,
    /// After a put-back (no lease came: overload, a stopped manager), claiming pauses until
    /// then, the pause doubling from 50 ms up to 2 s while put-backs go on; a lease resets it.
    claim_pause: Mutex<(Option<std::time::Instant>, Duration)>,
    /// Stop ran out of time: running tasks are handed back.
    give_up: Notify,
    gave_up: AtomicBool,
}

impl<S: 'static, T> Shared<S, T> {
    fn instance(&self) -> Arc<str> {
        Arc::clone(&self.instance.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Asks the current apalis worker to stop; false if it refused (not started yet).
    fn stop_current(&self) -> bool {
        match &*self.context.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(c) => c.stop().is_ok(),
            None => false,
        }
    }
}

/// Runs apalis workers one after another under fresh names until `stop`: a worker that ends on
/// an error (the store failed, say) is replaced after a backoff, and what it held goes back to
/// the queue.
async fn supervise<S, T>(shared: Arc<Shared<S, T>>)
where
    S: Send + 'static,
    T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        let n = shared.starts.fetch_add(1, Ordering::SeqCst);
        let instance: Arc<str> = if n == 0 {
            Arc::from(shared.base.as_str())
        } else {
            Arc::from(format!("{}.{n}", shared.base))
        };
        *shared.instance.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&instance);
        let context = WorkerContext::new(&instance);
        *shared.context.lock().unwrap_or_else(|e| e.into_inner()) = Some(context.clone());
        let heartbeat = shared.orphan_timeout / 3;
        let service = LeasedService::new(Arc::clone(&shared));
        // The last worker's futures are gone (it returned or was aborted).
        shared.counters.outstanding.store(0, Ordering::SeqCst);
        let outstanding = Arc::clone(&shared.counters.outstanding);
        let on_event = move |_: &WorkerContext, event: &Event| {
            if matches!(event, Event::Success(_) | Event::Error(_)) {
                let _ = outstanding
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
            }
        };
        tracing::info!(queue = %shared.name, worker = %instance, "queue worker started");
        let began = std::time::Instant::now();
        // One task per fetch, so that the prefetch bound is exact.
        let result = match &shared.queue.store {
            Store::Sqlite { pool, .. } => {
                let config = Config::default()
                    .queue(&shared.name)
                    .batch_size(1)
                    .heartbeat_interval(heartbeat)
                    .missed_heartbeats(3);
                let backend = SqliteStorage::<serde_json::Value>::new(pool)
                    .with_config(config)
                    .poll_with_interval(shared.poll_interval);
                WorkerBuilder::new(context)
                    .backend(backend)
                    .on_event(on_event)
                    .build(service)
                    .run()
                    .await
            }
            Store::Redis { conn, .. } => {
                if let Err(e) = redis::promote_due(conn, &shared.name).await {
                    tracing::debug!(error = %e, "moving due tasks to the active list failed");
                }
                let config = apalis_redis::Config::default()
                    .queue(&shared.name)
                    .batch_size(1)
                    .heartbeat_interval(heartbeat)
                    .missed_heartbeats(3);
                let backend = apalis_redis::RedisStorage::<serde_json::Value>::new(conn.clone())
                    .with_config(config)
                    .poll_with_interval(shared.poll_interval);
                WorkerBuilder::new(context)
                    .backend(backend)
                    .on_event(on_event)
                    .build(service)
                    .run()
                    .await
            }
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let why = match result {
            Ok(()) => "the worker ended".to_string(),
            Err(e) => e.to_string(),
        };
        shared.counters.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(queue = %shared.name, worker = %instance, error = %why, ?backoff, "queue worker failed; starting a new one");
        *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        let deferred =
            std::mem::take(&mut *shared.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        if let Ok(Err(e)) = tokio::time::timeout(
            Duration::from_secs(10),
            shared
                .queue
                .release_worker(&shared.name, &instance, &deferred),
        )
        .await
        {
            tracing::warn!(worker = %instance, error = %e, "could not hand tasks back; they run again after the orphan timeout");
        }
        if began.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(100);
        }
        let woken = shared.give_up.notified();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let _ = tokio::time::timeout(backoff, woken).await;
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

struct Running {
    join: tokio::task::JoinHandle<()>,
    fixer: tokio::task::JoinHandle<()>,
}

/// Runs tasks of one queue on leases of a [`LeaseManager`]; see the [module](self) docs.
pub struct QueueWorker<S: 'static, T> {
    shared: Arc<Shared<S, T>>,
    running: Mutex<Option<Running>>,
}

impl<S: 'static, T> fmt::Debug for QueueWorker<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueWorker")
            .field("queue", &self.shared.name)
            .field("instance", &self.shared.instance())
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S: 'static> QueueWorker<S, ()> {
    /// Starts building a worker for the queue named `queue` of `store`, running its tasks on
    /// leases of `manager`.
    pub fn builder(manager: &LeaseManager<S>, store: &Queue, queue: &str) -> QueueWorkerBuilder<S> {
        QueueWorkerBuilder {
            manager: manager.clone(),
            queue: store.clone(),
            name: queue.to_string(),
            instance: None,
            prefetch: 0,
            poll_interval: Duration::from_millis(100),
            orphan_timeout: Duration::from_secs(60),
            lease_wait: Duration::from_secs(30),
            lease_for: None,
            shutdown_timeout: Duration::from_secs(30),
            hold_deferrals: Duration::ZERO,
        }
    }
}

impl<S: 'static, T> QueueWorker<S, T> {
    /// This worker's unique name in the queue (it appears as `locked_by` on the tasks it
    /// holds). Each start after the first adds `.N` to the name it was built with.
    pub fn instance_name(&self) -> String {
        self.shared.instance().to_string()
    }

    /// Counters since the worker was built.
    pub fn stats(&self) -> QueueStats {
        let c = &self.shared.counters;
        QueueStats {
            claimed: c.claimed.load(Ordering::Relaxed),
            done: c.done.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            put_back: c.put_back.load(Ordering::Relaxed),
            handed_back: c.handed_back.load(Ordering::Relaxed),
            running: c.running.load(Ordering::Relaxed) as u64,
            waiting: c.waiting.load(Ordering::Relaxed) as u64,
            restarts: c.restarts.load(Ordering::Relaxed),
        }
    }
}

enum Finish {
    Done,
    Failed(String),
    /// Failed, and no attempt is left (Redis only: SQLite stops retrying on its own).
    FailedLast(String),
    Retry(String),
    RetryLast(String),
    Kill(String),
    Defer(&'static str),
}

impl<S: 'static, T> QueueWorker<S, T>
where
    S: Send,
    T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
{
    /// Why the queue worker last failed and was replaced, if it ever did.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the worker is claiming tasks.
    pub fn is_running(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|r| !r.join.is_finished())
    }

    /// Starts claiming tasks, on the current tokio runtime (actix's `System` is one). The
    /// worker runs until [`stop`](Self::stop).
    pub fn start(&self) -> Result<(), QueueError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| QueueError::NoRuntime)?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if self.shared.stop_under_way.load(Ordering::SeqCst) {
            return Err(QueueError::Stopping(self.instance_name()));
        }
        if running.as_ref().is_some_and(|r| !r.join.is_finished()) {
            return Err(QueueError::AlreadyRunning(self.instance_name()));
        }
        let shared = &self.shared;
        shared.stopping.store(false, Ordering::SeqCst);
        shared.gave_up.store(false, Ordering::SeqCst);
        // The last run's context is stopped already: `stop` must wait for this run's.
        *shared.context.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let join = handle.spawn(supervise(Arc::clone(shared)));
        let fixer = handle.spawn(fix_deferred(Arc::clone(shared)));
        *running = Some(Running { join, fixer });
        Ok(())
    }

    /// Stops claiming, lets running tasks finish within the shutdown timeout, hands the rest
    /// back to the queue (attempts not counted), and returns the final counters. Bounded:
    /// returns within about the shutdown timeout plus a few seconds even if the store hangs.
    pub async fn stop(&self) -> QueueStats {
        let running = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let taken = running.take();
            if taken.is_some() {
                // Under the same lock as `start`'s check: no start slips in between.
                self.shared.stop_under_way.store(true, Ordering::SeqCst);
            }
            taken
        };
        let Some(Running { mut join, fixer }) = running else {
            return self.stats();
        };
        // Cleared however this future ends (also if it is dropped midway).
        struct UnderWay<'a>(&'a AtomicBool);
        impl Drop for UnderWay<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _under_way = UnderWay(&self.shared.stop_under_way);
        // A stop dropped midway aborts the worker, as dropping the `QueueWorker` does (what it
        // held runs again after the orphan timeout); after a complete stop this does nothing.
        struct AbortOnDrop(tokio::task::AbortHandle);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _abort_worker = AbortOnDrop(join.abort_handle());
        let _abort_fixer = AbortOnDrop(fixer.abort_handle());
        let shared = &self.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        // Tasks waiting for a lease give up at once; running ones get the shutdown timeout.
        shared.give_up.notify_waiters();
        // apalis' stop stops the loop that drains its own event channel, while tasks still
        // in flight may wait for room in that channel (it holds `batch_size` events): stopping
        // it under them deadlocks. So: claim nothing more, let every task's pipeline finish,
        // then stop apalis, which writes what is left.
        let outstanding = &shared.counters.outstanding;
        let drain = async {
            while outstanding.load(Ordering::SeqCst) > 0 && !join.is_finished() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let drained = tokio::time::timeout(shared.shutdown_timeout, drain).await;
        if drained.is_err() {
            tracing::warn!(
                worker = %shared.instance(),
                running = shared.counters.running.load(Ordering::Relaxed),
                "tasks outran the queue worker's shutdown timeout: handing them back"
            );
            shared.gave_up.store(true, Ordering::SeqCst);
            shared.give_up.notify_waiters();
            let drain = async {
                while outstanding.load(Ordering::SeqCst) > 0 && !join.is_finished() {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        }
        let stop_worker = async {
            // apalis refuses `stop` until its worker has started (or while it restarts after
            // an error): ask again until it takes.
            while !shared.stop_current() && !join.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (&mut join).await
        };
        if tokio::time::timeout(Duration::from_secs(5), stop_worker)
            .await
            .is_err()
        {
            tracing::warn!(worker = %shared.instance(), "queue worker did not wind down; aborted");
            join.abort();
            let _ = join.await;
        }
        fixer.abort();
        let _ = fixer.await;
        // Read only now: `supervise` names each apalis worker it starts.
        let instance = shared.instance();
        let deferred =
            std::mem::take(&mut *shared.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        match tokio::time::timeout(
            Duration::from_secs(10),
            shared
                .queue
                .release_worker(&shared.name, &instance, &deferred),
        )
        .await
        {
            Ok(Ok(n)) => {
                if n > 0 {
                    tracing::debug!(worker = %instance, tasks = n, "handed back to the queue");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(worker = %instance, error = %e, "could not hand tasks back; they run again after the orphan timeout");
            }
            Err(_) => {
                tracing::warn!(worker = %instance, "handing tasks back timed out; they run again after the orphan timeout");
            }
        }
        tracing::info!(queue = %shared.name, worker = %instance, "queue worker stopped");
        self.stats()
    }
}

impl<S: 'static, T> Drop for QueueWorker<S, T> {
    fn drop(&mut self) {
        // Never blocks: the worker task is aborted; what it held runs again after the orphan
        // timeout. Call `stop` for a graceful end.
        if let Some(r) = self
            .running
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            self.shared.stopping.store(true, Ordering::SeqCst);
            let _ = self.shared.stop_current();
            r.join.abort();
            r.fixer.abort();
        }
    }
}

/// Unlocks deferred tasks once their acknowledgement (status `Pending`, still locked by us) has
/// reached the store: acknowledgements are written in batches after the task's future ends.
/// Also keeps apalis-redis' due backlog small, and on SQLite frees the deferrals of workers that
/// died before they gave them back.
async fn fix_deferred<S: 'static, T>(shared: Arc<Shared<S, T>>) {
    let redis = shared.queue.is_redis();
    // Rounds of 50 ms between two sweeps for dead workers' deferrals (SQLite): as often as
    // workers heartbeat, and once at the start.
    let sweep_every = (shared.orphan_timeout.as_millis() / 3 / 50).max(1) as u64;
    let mut rounds: u64 = 0;
    loop {
        if !redis && rounds % sweep_every == 0 {
            match shared
                .queue
                .free_dead_deferrals(&shared.name, shared.orphan_timeout)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(queue = %shared.name, tasks = n, "gave back the deferred tasks of workers that died");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "freeing dead workers' deferred tasks failed");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        rounds += 1;
        if redis && rounds % 4 == 0 {
            if let Store::Redis { conn, .. } = &shared.queue.store {
                // Keep apalis-redis' due backlog small (see `redis::promote_due`).
                if let Err(e) = redis::promote_due(conn, &shared.name).await {
                    tracing::debug!(error = %e, "moving due tasks to the active list failed");
                }
            }
        }
        let due: Vec<(String, usize)> = {
            let mut deferred = shared.deferred.lock().unwrap_or_else(|e| e.into_inner());
            // On Redis a deferred task is due again a second or more after its
            // acknowledgement, and another worker may take it first: its attempt then stays
            // owed in the task (see `redis::OWED`), and the entry is dropped after 30 s. On
            // SQLite the row stays locked by us until we unlock it, unless the other workers
            // took us for dead (no heartbeat for `orphan_timeout`) and gave it back themselves:
            // only then can an entry never succeed.
            let limit = if redis {
                Duration::from_secs(30)
            } else {
                shared.orphan_timeout
            };
            deferred.retain(|d| {
                let keep = d.since.elapsed() < limit;
                if !keep {
                    tracing::debug!(task = %d.id, "a deferred task ran elsewhere before it was given back");
                }
                keep
            });
            deferred
                .iter()
                .filter(|d| d.since.elapsed() >= shared.hold_deferrals)
                .map(|d| (d.id.clone(), d.attempt))
                .collect()
        };
        for (id, attempt) in due {
            match shared
                .queue
                .unlock_deferred(&shared.name, (&id, attempt), &shared.instance())
                .await
            {
                Ok(true) => {
                    shared
                        .deferred
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|d| d.id != id);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "unlocking a deferred task failed; trying again");
                }
            }
        }
    }
}

/// The apalis service: claims only while the manager has room, runs each task on a lease.
struct LeasedService<S: 'static, T> {
    shared: Arc<Shared<S, T>>,
    /// What the manager could hand out at the last snapshot (`None`: take a new one).
    snap: Option<Snap>,
    refresh: Option<BoxFuture<'static, Snap>>,
    /// The last snapshot showed no room: wait for a release (or a moment) before the next.
    pause: bool,
    /// Wakes the worker every `poll_interval` while it is ready: apalis 1.0's interval
    /// strategy can consume its tick and then park on an empty fetch with no timer armed,
    /// which left an idle worker deaf to new tasks until its next heartbeat.
    tick: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Sleeps out a claim pause (see `Shared::claim_pause`).
    paused: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S: 'static, T> LeasedService<S, T> {
    fn new(shared: Arc<Shared<S, T>>) -> Self {
        LeasedService {
            shared,
            snap: None,
            refresh: None,
            pause: false,
            tick: None,
            paused: None,
        }
    }

    fn arm_tick(&mut self, cx: &mut Context<'_>) {
        let every = self.shared.poll_interval;
        let tick = self
            .tick
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(every)));
        if tick.as_mut().poll(cx).is_ready() {
            tick.as_mut().reset(tokio::time::Instant::now() + every);
            let _ = tick.as_mut().poll(cx);
        }
    }
}

/// A snapshot of the manager's free leases. Between snapshots the worker counts the leases its
/// own tasks took since (so its claims stay within the bound); other users' acquires are seen
/// at the next snapshot, taken at least every `SNAPSHOT_TTL` and whenever the count says "full".
struct Snap {
    free: usize,
    /// `Counters::leased` when the snapshot was taken.
    leased_at: u64,
    taken: std::time::Instant,
}

const SNAPSHOT_TTL: Duration = Duration::from_millis(50);

impl<S: Send + 'static, T: Send + 'static> LeasedService<S, T> {
    fn snapshot(&self, pause: bool) -> BoxFuture<'static, Snap> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            if pause {
                // Another user's release is not announced to us: look again soon.
                let _ =
                    tokio::time::timeout(Duration::from_millis(20), shared.freed.notified()).await;
            }
            loop {
                let before = shared.counters.leased.load(Ordering::SeqCst);
                let stats = shared.manager.stats().await;
                // A task of ours that got its lease while the snapshot was taken might be
                // counted twice (as waiting and as leased) or not at all: take another.
                if shared.counters.leased.load(Ordering::SeqCst) == before {
                    return Snap {
                        free: stats
                            .max_pools
                            .saturating_sub(stats.leased + stats.unhealthy),
                        leased_at: before,
                        taken: std::time::Instant::now(),
                    };
                }
            }
        })
    }
}

/// The worker takes each task as JSON and decodes it itself: a payload that is not a `T` fails
/// that task alone (killed, with the decoder's message), where apalis' own decoding would fail
/// the fetch, and every restart would meet the same task first again: the queue stalled.
impl<S, T> tower_service::Service<Task<serde_json::Value>> for LeasedService<S, T>
where
    S: Send + 'static,
    T: DeserializeOwned + Send + 'static,
{
    type Response = ();
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxDynError>> {
        if self.shared.stopping.load(Ordering::SeqCst) {
            // Stopping: claim nothing more (apalis may not have taken the stop yet). `stop`
            // wakes the worker through apalis' own stop.
            return Poll::Pending;
        }
        let until = self
            .shared
            .claim_pause
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if let Some(until) = until.filter(|u| *u > std::time::Instant::now()) {
            let deadline = tokio::time::Instant::from_std(until);
            let sleep = self
                .paused
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        loop {
            if let Some(snap) = &self.snap {
                let c = &self.shared.counters;
                let waiting = c.waiting.load(Ordering::SeqCst) as u64;
                let taken_since = c.leased.load(Ordering::SeqCst) - snap.leased_at;
                let room = (snap.free + self.shared.prefetch) as u64;
                if waiting + taken_since < room {
                    if snap.taken.elapsed() < SNAPSHOT_TTL {
                        self.arm_tick(cx);
                        return Poll::Ready(Ok(()));
                    }
                } else {
                    self.pause = true;
                }
                self.snap = None;
            }
            let pause = std::mem::take(&mut self.pause);
            let refresh = match &mut self.refresh {
                Some(f) => f,
                None => self.refresh.insert(self.snapshot(pause)),
            };
            match refresh.as_mut().poll(cx) {
                Poll::Ready(snap) => {
                    self.refresh = None;
                    self.snap = Some(snap);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn call(&mut self, task: Task<serde_json::Value>) -> Self::Future {
        let shared = Arc::clone(&self.shared);
        shared.counters.claimed.fetch_add(1, Ordering::Relaxed);
        shared.counters.outstanding.fetch_add(1, Ordering::SeqCst);
        let waiting = Count::up(&shared.counters.waiting);
        let (payload, ctx) = task.take();
        let id = ctx.task_id().map(ToString::to_string).unwrap_or_default();
        // The apalis worker that fetched the task (a restart renames it).
        let instance = shared.instance();
        Box::pin(async move {
            // apalis-redis retries up to 25 times whatever the task says: the limit is kept
            // here (the attempt count is current once this future runs). Deferrals that
            // another worker could not give back are owed (Redis; read with the task).
            let max = ctx.max_attempts();
            // (apalis counted this run before our future first ran: `attempt() - 1` is what
            // the task was fetched with.)
            let fetched = ctx.attempt().saturating_sub(1) as u64;
            let (owed, stale) = redis::owed(ctx.metadata().iter(), fetched);
            // Stale marks go before the task runs (its acknowledgement would make them count);
            // if the store cannot take that, the task is put back rather than run.
            let mut marks_stuck = false;
            if let (false, Store::Redis { conn, .. }) = (stale.is_empty(), &shared.queue.store) {
                if let Err(e) =
                    retried(|| redis::drop_marks(conn, &shared.name, &instance, &id, &stale)).await
                {
                    tracing::warn!(queue = %shared.name, task = %id, error = %e, "could not drop a task's stale owed-attempt marks; putting it back");
                    marks_stuck = true;
                }
            }
            let attempt = ctx.attempt().saturating_sub(owed as usize);
            let mut outcome = match (max, serde_json::from_value::<T>(payload)) {
                _ if marks_stuck => {
                    drop(waiting);
                    Finish::Defer("put back: the queue store failed")
                }
                (Some(max), _) if attempt > max => {
                    drop(waiting);
                    Finish::Kill(format!("out of attempts ({max})"))
                }
                (_, Err(e)) => {
                    drop(waiting);
                    tracing::warn!(queue = %shared.name, task = %id, error = %e, "a task's payload does not decode: it fails for good");
                    Finish::Kill(format!(
                        "the payload is not a {}: {e}",
                        std::any::type_name::<T>()
                    ))
                }
                (_, Ok(args)) => run_task(&shared, &id, args, waiting).await,
            };
            if shared.queue.is_redis() && max.is_some_and(|max| attempt >= max) {
                // The last attempt failed: on Redis it ends here (dead), not in a retry.
                outcome = match outcome {
                    Finish::Failed(why) => Finish::FailedLast(why),
                    Finish::Retry(why) => Finish::RetryLast(why),
                    other => other,
                };
            }
            // One stored permit: a release between the gate's "full" and its wait still counts.
            shared.freed.notify_one();
            let c = &shared.counters;
            match outcome {
                Finish::Done => {
                    c.done.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }
                Finish::Failed(why) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    Err(why.into())
                }
                Finish::Retry(why) => {
                    c.retried.fetch_add(1, Ordering::Relaxed);
                    Err(why.into())
                }
                Finish::Kill(why) | Finish::FailedLast(why) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    Err(AbortError::new(StrError(why)).into())
                }
                Finish::RetryLast(why) => {
                    c.retried.fetch_add(1, Ordering::Relaxed);
                    Err(AbortError::new(StrError(why)).into())
                }
                Finish::Defer(why) => {
                    if why == HANDED_BACK {
                        c.handed_back.fetch_add(1, Ordering::Relaxed);
                    } else {
                        c.put_back.fetch_add(1, Ordering::Relaxed);
                    }
                    // Before apalis acknowledges (and counts) the deferral: if another
                    // worker takes the task before we give the attempt back, it knows.
                    let owe = || {
                        shared
                            .queue
                            .owe_attempt(&shared.name, &instance, &id, ctx.attempt())
                    };
                    if let Err(e) = retried(owe).await {
                        tracing::warn!(queue = %shared.name, task = %id, error = %e, "could not mark a deferral's attempt as owed; if another worker runs the task before it is given back, the put-back counts as an attempt");
                    }
                    shared
                        .deferred
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Deferral {
                            id,
                            attempt: ctx.attempt(),
                            since: std::time::Instant::now(),
                        });
                    Err(DeferredError::new(StrError(why.to_string())).into())
                }
            }
        })
    }
}

/// A task this worker deferred to the queue (put back or handed back), whose attempt is still
/// to be given back once apalis' acknowledgement is in the store.
struct Deferral {
    id: String,
    /// The attempt the acknowledgement writes (apalis' count, owed attempts included).
    attempt: usize,
    since: std::time::Instant,
}

/// `op` until it succeeds, three tries 50 ms apart (a store call that a brief hiccup may fail).
async fn retried<F, Fut, R>(mut op: F) -> Result<R, QueueError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, QueueError>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Ok(r) => return Ok(r),
            Err(e) if tries >= 2 => return Err(e),
            Err(_) => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One unit of a gauge (`waiting`, `running`), given back when dropped: a task future that
/// is dropped (its apalis worker failed or was aborted) cannot leave the gauge high.
struct Count(Arc<AtomicUsize>);

impl Count {
    fn up(gauge: &Arc<AtomicUsize>) -> Count {
        gauge.fetch_add(1, Ordering::SeqCst);
        Count(Arc::clone(gauge))
    }
}

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

const HANDED_BACK: &str = "handed back: the queue worker stopped";

#[derive(Debug)]
struct StrError(String);

impl fmt::Display for StrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StrError {}

async fn run_task<S: Send + 'static, T: Send + 'static>(
    shared: &Arc<Shared<S, T>>,
    id: &str,
    args: T,
    waiting: Count,
) -> Finish {
    let c = &shared.counters;
    let mut acquire = shared
        .manager
        .acquire_owned()
        .owner(format!("queue:{}:{id}", shared.name))
        .timeout(shared.lease_wait);
    if let Some(d) = shared.lease_for {
        acquire = acquire.lease_for(d);
    }
    let give_up = shared.give_up.notified();
    tokio::pin!(give_up);
    give_up.as_mut().enable();
    let lease = if shared.stopping.load(Ordering::SeqCst) {
        None
    } else {
        tokio::select! {
            lease = acquire => Some(lease),
            () = &mut give_up => None,
        }
    };
    let lease = match lease {
        None => return Finish::Defer(HANDED_BACK),
        Some(Err(e)) => {
            tracing::debug!(task = id, error = %e, "no lease for a queue task: put back");
            let mut pause = shared.claim_pause.lock().unwrap_or_else(|e| e.into_inner());
            let step = (pause.1 * 2).clamp(Duration::from_millis(50), Duration::from_secs(2));
            *pause = (Some(std::time::Instant::now() + step), step);
            return Finish::Defer("put back: no lease came (overload)");
        }
        Some(Ok(lease)) => {
            *shared.claim_pause.lock().unwrap_or_else(|e| e.into_inner()) = (None, Duration::ZERO);
            c.leased.fetch_add(1, Ordering::SeqCst);
            drop(waiting);
            lease
        }
    };
    let running = Count::up(&c.running);
    let job = (shared.run)(lease, args);
    tokio::pin!(job);
    // A stop that ran out of time hands running tasks back (their work may go on: at least
    // once).
    let outcome = loop {
        let give_up = shared.give_up.notified();
        tokio::pin!(give_up);
        give_up.as_mut().enable();
        if shared.gave_up.load(Ordering::SeqCst) {
            break None;
        }
        tokio::select! {
            r = &mut job => break Some(r),
            () = give_up => {}
        }
    };
    drop(running);
    match outcome {
        None => Finish::Defer(HANDED_BACK),
        Some(Ok(Ok(()))) => Finish::Done,
        Some(Ok(Err(why))) => Finish::Failed(why),
        Some(Err(LeaseError::Panicked(why))) => Finish::Failed(format!("panicked: {why}")),
        Some(Err(e @ (LeaseError::WorkerLost | LeaseError::Expired))) => {
            Finish::Retry(e.to_string())
        }
        Some(Err(e @ (LeaseError::InvalidArgument(_) | LeaseError::ProcessJob(_)))) => {
            Finish::Kill(e.to_string())
        }
        Some(Err(_)) => Finish::Defer("put back: the lease could not run the task"),
    }
}
