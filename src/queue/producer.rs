//! The producer's side: [`Queue`], a handle on a store, and what it pushes.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::limits::{check_attempts, check_payload_limit, check_queue_name, DEFAULT_PAYLOAD_LIMIT};
use super::store::postgres::PostgresStore;
use super::store::redis::RedisStore;
use super::store::sqlite::SqliteStore;
use super::store::{NewTask, Store, RETRY_META};
use super::trace::{BadTraceParent, TraceParent};
use super::{payload, QueueCounts, QueueError, RetryPolicy, TaskInfo};

/// Attempts a task gets unless its push says otherwise.
pub const DEFAULT_ATTEMPTS: usize = 25;

/// A durable queue shared by producers and workers of any number of processes: a SQLite file
/// (one machine, [`Queue::sqlite`]), a Redis server or a PostgreSQL database (a fleet,
/// [`Queue::redis`], [`Queue::postgres`]). Cheap to clone.
#[derive(Clone)]
pub struct Queue {
    store: Arc<dyn Store>,
    payload_limit: usize,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("store", &self.store.describe())
            .field("payload_limit", &self.payload_limit)
            .finish()
    }
}

/// How a task is pushed ([`Queue::push_with`]): its attempts and retry policy.
///
/// ```
/// use std::time::Duration;
/// use leasepool::queue::{PushOptions, RetryPolicy};
///
/// let urgent = PushOptions::new()
///     .max_attempts(5)
///     .retry(RetryPolicy::fixed(Duration::from_secs(2)));
/// # let _ = urgent;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushOptions {
    max_attempts: usize,
    retry: Option<RetryPolicy>,
    traceparent: Option<Result<TraceParent, BadTraceParent>>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            max_attempts: DEFAULT_ATTEMPTS,
            retry: None,
            traceparent: None,
        }
    }
}

impl PushOptions {
    /// 25 attempts, the worker's retry policy.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many times the task may be tried: 1 to [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS)
    /// (checked at push).
    pub fn max_attempts(mut self, n: usize) -> Self {
        self.max_attempts = n;
        self
    }

    /// The task's own retry policy, over the worker's
    /// ([`QueueWorkerBuilder::retry`](super::QueueWorkerBuilder::retry)).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The producer's trace context, a W3C `traceparent` value
    /// (`00-<trace id>-<parent id>-<flags>`, checked at push), stored with the task under
    /// [`TRACE_META`](super::TRACE_META): the worker that runs it, on any machine, runs it in
    /// a `queue_task` span that carries it (see
    /// [`QueueWorkerBuilder::on_task_span`](super::QueueWorkerBuilder::on_task_span)).
    pub fn trace_parent(mut self, traceparent: &str) -> Self {
        self.traceparent = Some(TraceParent::parse(traceparent));
        self
    }

    fn check(&self) -> Result<u32, QueueError> {
        if let Some(policy) = &self.retry {
            policy.check()?;
        }
        if let Some(Err(why)) = self.traceparent {
            return Err(QueueError::InvalidArgument(format!("trace_parent: {why}")));
        }
        check_attempts(self.max_attempts)
    }

    fn metadata(&self) -> Vec<(String, String)> {
        let retry = self.retry.map(|p| (RETRY_META.to_owned(), p.to_meta()));
        let trace = match self.traceparent {
            Some(Ok(t)) => Some((super::TRACE_META.to_owned(), t.render())),
            _ => None,
        };
        retry.into_iter().chain(trace).collect()
    }
}

impl Queue {
    /// Opens (creating it if missing) the SQLite queue at `path` and brings its tables up to
    /// date. Several processes may open the same file at once.
    ///
    /// The file is in WAL mode with `synchronous = NORMAL`: a crashed process loses nothing;
    /// a power loss may lose the last acknowledgements (their tasks then run again). If the
    /// file is deleted or replaced while the queue is open, the next operation (and every
    /// worker's next fetch) moves all connections to the file the path names then.
    pub async fn sqlite(path: impl AsRef<Path>) -> Result<Queue, QueueError> {
        let store = SqliteStore::open(path.as_ref().to_path_buf()).await?;
        Ok(Queue::on(Arc::new(store)))
    }

    /// Connects to the Redis server at `url` (`redis://host:port/db`), for a fleet of
    /// machines. The connection reconnects on its own after a network error.
    pub async fn redis(url: &str) -> Result<Queue, QueueError> {
        let store = RedisStore::connect(url).await?;
        Ok(Queue::on(Arc::new(store)))
    }

    /// Connects to the PostgreSQL server at `url` (`postgres://user:password@host:port/db`),
    /// for a fleet of machines, with a pool of its own (8 connections), and brings apalis'
    /// tables (schema `apalis`) up to date. Processes starting together wait for each other's
    /// set-up. The set-up creates the extensions `hstore` and `pgcrypto`: the user needs the
    /// right to (the database's owner has it), or an administrator creates them first.
    ///
    /// The queue also holds one listening connection of its own (outside the pool, opened when
    /// its first worker starts), through which PostgreSQL's `NOTIFY` wakes idle workers when a
    /// task is pushed.
    pub async fn postgres(url: &str) -> Result<Queue, QueueError> {
        let store = PostgresStore::connect(url).await?;
        Ok(Queue::on(Arc::new(store)))
    }

    /// The same on the application's own pool (`sqlx` 0.9, re-exported as
    /// [`PgPool`](super::PgPool)): the queue shares its connections (the listening one is
    /// opened outside it, with its settings).
    pub async fn postgres_pool(pool: super::PgPool) -> Result<Queue, QueueError> {
        let options = pool.connect_options();
        let shown = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("")
        );
        let store = PostgresStore::on_pool(pool, shown).await?;
        Ok(Queue::on(Arc::new(store)))
    }

    fn on(store: Arc<dyn Store>) -> Queue {
        Queue {
            store,
            payload_limit: DEFAULT_PAYLOAD_LIMIT,
        }
    }

    /// The same queue with another cap on one task's encoded payload (default
    /// [`DEFAULT_PAYLOAD_LIMIT`](super::DEFAULT_PAYLOAD_LIMIT), 16 MiB; at most
    /// [`MAX_PAYLOAD_LIMIT`](super::MAX_PAYLOAD_LIMIT)). Pushes over it are refused; a worker
    /// built on this queue fails a stored task over it (written by another producer) alone.
    pub fn with_payload_limit(mut self, bytes: usize) -> Result<Queue, QueueError> {
        check_payload_limit(bytes)?;
        self.payload_limit = bytes;
        Ok(self)
    }

    /// The cap on one task's encoded payload.
    pub fn payload_limit(&self) -> usize {
        self.payload_limit
    }

    /// The SQLite file this queue lives in (`None` for Redis and PostgreSQL).
    pub fn path(&self) -> Option<&Path> {
        self.store.path()
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Adds `task` to the queue named `queue`; returns its task id. The task may be tried up to
    /// 25 times with the worker's retry policy ([`push_with`](Self::push_with) sets both).
    ///
    /// # Errors
    /// [`QueueError::Payload`] if a worker could not read the task back (see
    /// [`push_with`](Self::push_with)), [`QueueError::InvalidArgument`] for a bad queue name,
    /// [`QueueError::Store`] if the store failed.
    pub async fn push<T>(&self, queue: &str, task: T) -> Result<String, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        self.push_with(queue, task, PushOptions::new()).await
    }

    /// Like [`push`](Self::push), with the number of times the task may be tried (1 to
    /// [`MAX_ATTEMPTS`](super::MAX_ATTEMPTS)).
    pub async fn push_with_attempts<T>(
        &self,
        queue: &str,
        task: T,
        max_attempts: usize,
    ) -> Result<String, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        let options = PushOptions::new().max_attempts(max_attempts);
        self.push_with(queue, task, options).await
    }

    /// Adds `task` with `options`; returns its task id.
    ///
    /// The payload is JSON. It is refused ([`QueueError::Payload`], naming why) if a worker
    /// could not read it back: over the [payload limit](Self::with_payload_limit), nested
    /// deeper than [`MAX_DEPTH`](super::MAX_DEPTH) levels, or JSON that does not decode as `T`
    /// again (a `NaN` float, a map with non-string keys). Attempts out of range are
    /// [`QueueError::InvalidArgument`].
    pub async fn push_with<T>(
        &self,
        queue: &str,
        task: T,
        options: PushOptions,
    ) -> Result<String, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
    {
        let mut ids = self.push_all_with(queue, [task], options).await?;
        Ok(ids.pop().unwrap_or_default())
    }

    /// Pushes many tasks (far faster than one [`push`](Self::push) each); returns their ids in
    /// order. Every payload is checked first: one refused payload pushes none. On SQLite they
    /// are pushed in one transaction, on PostgreSQL in one statement: all or none. On Redis
    /// they go in chunks of 1 000, each in
    /// one script: an error after the first chunk says how many tasks were queued before it
    /// (those run; pushing them again would run them twice).
    pub async fn push_all<T, I>(&self, queue: &str, tasks: I) -> Result<Vec<String>, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
        I: IntoIterator<Item = T>,
    {
        self.push_all_with(queue, tasks, PushOptions::new()).await
    }

    /// [`push_all`](Self::push_all) with `options` for every task.
    pub async fn push_all_with<T, I>(
        &self,
        queue: &str,
        tasks: I,
        options: PushOptions,
    ) -> Result<Vec<String>, QueueError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static,
        I: IntoIterator<Item = T>,
    {
        check_queue_name(queue)?;
        let max_attempts = options.check()?;
        let metadata = options.metadata();
        let mut new = Vec::new();
        for (n, task) in tasks.into_iter().enumerate() {
            let payload = payload::encode(&task, self.payload_limit).map_err(|e| match e {
                QueueError::Payload(why) if n > 0 => {
                    QueueError::Payload(format!("task {n} of the batch: {why}"))
                }
                other => other,
            })?;
            new.push(NewTask {
                id: ulid::Ulid::generate().to_string(),
                payload,
                max_attempts,
                metadata: metadata.clone(),
            });
        }
        let ids = new.iter().map(|t| t.id.clone()).collect();
        if !new.is_empty() {
            self.store.push(queue, new).await?;
        }
        Ok(ids)
    }

    /// How many tasks of the queue named `queue` are in each state: one snapshot of the store
    /// (one SQL statement, or one Lua script on Redis), so every task is counted exactly once
    /// even while workers move tasks between states.
    pub async fn counts(&self, queue: &str) -> Result<QueueCounts, QueueError> {
        check_queue_name(queue)?;
        self.store.counts(queue).await
    }

    /// Where the task with id `id` of the queue named `queue` stands (`None`: no such task in
    /// that queue).
    pub async fn task(&self, queue: &str, id: &str) -> Result<Option<TaskInfo>, QueueError> {
        check_queue_name(queue)?;
        self.store.task(queue, id).await
    }
}
