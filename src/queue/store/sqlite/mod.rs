//! The SQLite store: apalis-sqlite's `Jobs` table in one file shared by the processes of a
//! machine, plus what apalis 1.0 does not do (see the [`Store`] methods): giving back a
//! deferred task's attempt, handing a stopped worker's tasks back, retry times, failing
//! unreadable rows alone, fresh planner statistics, and following the path when the file under
//! it is deleted or replaced.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apalis_core::backend::ext::BackendExt as _;
use apalis_sqlite::{Config, SqliteStorage};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, SinkExt as _};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::apalis::run_apalis;
use super::shield::SqlBackend;
use super::{Intent, NewTask, RunSpec, Settled, Store};
use crate::queue::{QueueCounts, QueueError, TaskInfo};

mod backend;
mod file;
pub(crate) mod judge;
mod sql;

use file::FileId;

/// Rows pushed at once above which a push looks at the planner's statistics.
const BIG_PUSH: usize = 1000;

pub(crate) struct SqliteStore {
    path: PathBuf,
    current: Mutex<Current>,
    /// One reopen at a time.
    reopening: tokio::sync::Mutex<()>,
}

/// The pool and the file its connections are on: replaced together, never one without the
/// other.
struct Current {
    pool: SqlitePool,
    file: FileId,
}

impl SqliteStore {
    pub(crate) async fn open(path: PathBuf) -> Result<SqliteStore, QueueError> {
        let (pool, file) = connect(&path).await?;
        Ok(SqliteStore {
            path,
            current: Mutex::new(Current { pool, file }),
            reopening: tokio::sync::Mutex::new(()),
        })
    }

    fn pool(&self) -> SqlitePool {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pool
            .clone()
    }

    fn file(&self) -> FileId {
        self.current.lock().unwrap_or_else(|e| e.into_inner()).file
    }
}

/// Opens (creating it if missing) the file at `path`, brings its tables up to date, and opens
/// a pool whose every connection checks that it is on the file the pool was made for.
async fn connect(path: &Path) -> Result<(SqlitePool, FileId), QueueError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30));
    let opening = |e: sqlx::Error| QueueError::Store(format!("opening {}: {e}", path.display()));
    // apalis' setup runs the migrations (and sets `synchronous = OFF` on its connection): on a
    // pool of its own, closed before ours is used. Processes starting together meet each other's
    // locks and may race on the migrations: `judge::setup_again` says whether to try again.
    let mut tries = 0;
    let began = std::time::Instant::now();
    loop {
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(opening)?;
        let result = SqliteStorage::setup(&setup).await;
        setup.close().await;
        let Err(e) = result else { break };
        tries += 1;
        let code = match &e {
            apalis_sqlite::Error::Database(e) => e.as_database_error().and_then(|d| d.code()),
            _ => None,
        };
        let again = judge::setup_again(code.as_deref(), &e.to_string(), tries, began.elapsed());
        let Some(pause) = again else {
            return Err(QueueError::Store(format!(
                "setting up {}: {e}",
                path.display()
            )));
        };
        tracing::debug!(error = %e, tries, "queue setup raced another process; again");
        tokio::time::sleep(pause).await;
    }
    let file = FileId::of(path).map_err(QueueError::Store)?;
    let guarded = path.to_path_buf();
    // Never create the file again from this pool, and never connect to another file at this
    // path: a connection that would is refused, the worker's fetch fails, and the worker is
    // replaced on a new pool (`reopen`). One pool, one file.
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .after_connect(move |_, _| {
            let checked = file.check(&guarded);
            Box::pin(async move { checked.map_err(|e| sqlx::Error::Configuration(e.into())) })
        })
        .connect_with(options.create_if_missing(false))
        .await
        .map_err(opening)?;
    if let Err(e) = sql::refresh_statistics(&pool).await {
        tracing::debug!(error = %e, "refreshing the planner's statistics failed");
    }
    Ok((pool, file))
}

impl Store for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }

    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    fn push<'a>(
        &'a self,
        queue: &'a str,
        tasks: Vec<NewTask>,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        async move {
            self.reopen().await?;
            let pool = self.pool();
            let big = tasks.len() >= BIG_PUSH;
            let mut storage =
                SqliteStorage::<Vec<u8>>::new(&pool).with_config(Config::default().queue(queue));
            let mut tasks =
                futures_util::stream::iter(tasks.into_iter().map(|t| Ok(t.into_apalis())));
            storage
                .send_all(&mut tasks)
                .await
                .map_err(|e| QueueError::Store(e.to_string()))?;
            if big {
                if let Err(e) = sql::refresh_statistics(&pool).await {
                    tracing::debug!(error = %e, "refreshing the planner's statistics failed");
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn counts<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueCounts, QueueError>> {
        async move {
            self.reopen().await?;
            sql::counts(&self.pool(), queue).await
        }
        .boxed()
    }

    fn task<'a>(
        &'a self,
        queue: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<TaskInfo>, QueueError>> {
        async move {
            self.reopen().await?;
            sql::task(&self.pool(), queue, id).await
        }
        .boxed()
    }

    fn run(self: Arc<Self>, spec: RunSpec) -> BoxFuture<'static, Result<(), String>> {
        let config = Config::default()
            .queue(&spec.queue)
            .batch_size(1)
            .heartbeat_interval(spec.heartbeat)
            .missed_heartbeats(3);
        let dialect = backend::SqliteDialect {
            pool: self.pool(),
            config,
            path: Arc::new(self.path.clone()),
            file: self.file(),
        };
        let backend = SqlBackend::new(dialect, Arc::clone(&spec.on_unreadable))
            .poll_with_interval(spec.poll_interval);
        run_apalis(backend, spec).boxed()
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
                // The row stays locked by this worker until `settle` unlocks it.
                Intent::GiveBack { .. } => Ok(Settled::NotYet),
                Intent::RetryAt { at, .. } => {
                    sql::retry_at(&self.pool(), worker, id, *at).await?;
                    Ok(Settled::Done)
                }
            }
        }
        .boxed()
    }

    // `counted_attempt`, `started`: the trait's defaults. A deferred row stays locked by its
    // worker until it is given back (nothing is owed), and apalis' orphan re-run counts the
    // attempt of a run that never answered.

    fn settle<'a>(
        &'a self,
        _queue: &'a str,
        worker: &'a str,
        id: &'a str,
        intent: &'a Intent,
    ) -> BoxFuture<'a, Result<Settled, QueueError>> {
        async move {
            match intent {
                Intent::GiveBack { .. } => sql::unlock_deferred(&self.pool(), worker, id).await,
                Intent::RetryAt { .. } => Ok(Settled::Done),
            }
        }
        .boxed()
    }

    fn release_worker<'a>(
        &'a self,
        _queue: &'a str,
        worker: &'a str,
        _unsettled: &'a [(String, Intent)],
    ) -> BoxFuture<'a, Result<u64, QueueError>> {
        // Its deferred rows are still locked by it: the statement finds them all.
        async move { sql::release_worker(&self.pool(), worker).await }.boxed()
    }

    fn sweep<'a>(
        &'a self,
        queue: &'a str,
        orphan_timeout: Duration,
    ) -> BoxFuture<'a, Result<u64, QueueError>> {
        async move {
            let pool = self.pool();
            let freed = sql::free_dead_deferrals(&pool, queue, orphan_timeout).await?;
            if freed > 0 {
                tracing::info!(
                    queue,
                    tasks = freed,
                    "gave back the deferred tasks of workers that died"
                );
            }
            sql::refresh_statistics(&pool).await?;
            Ok(freed)
        }
        .boxed()
    }

    fn reopen(&self) -> BoxFuture<'_, Result<bool, QueueError>> {
        async move {
            if self.file().check(&self.path).is_ok() {
                return Ok(false);
            }
            let _one = self.reopening.lock().await;
            if let Err(why) = self.file().check(&self.path) {
                let (pool, file) = connect(&self.path).await?;
                let old = std::mem::replace(
                    &mut *self.current.lock().unwrap_or_else(|e| e.into_inner()),
                    Current { pool, file },
                );
                tracing::warn!(path = %self.path.display(), reason = %why, "the queue file changed under us: all connections now on the file the path names");
                // Its connections are on the old file: closed once given back.
                tokio::spawn(async move { old.pool.close().await });
            }
            Ok(true)
        }
        .boxed()
    }
}
