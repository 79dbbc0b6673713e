//! The statements leasepool runs on apalis-sqlite's `Jobs` and `Workers` tables, each one
//! statement (atomic against apalis' own). The columns they rely on are pinned by the store
//! contract test.

use std::time::Duration;

use sqlx::SqlitePool;

use super::judge::{self, StoredRow};
use crate::queue::store::{unix_now, Settled};
use crate::queue::{QueueCounts, QueueError, TaskInfo};

pub(super) async fn counts(pool: &SqlitePool, queue: &str) -> Result<QueueCounts, QueueError> {
    // Read as stored, whatever another producer wrote: bytes and SQLite's own conversions.
    let rows: Vec<(Vec<u8>, i64, i64)> = sqlx::query_as(
        "SELECT CAST(status AS BLOB), coalesce(attempts >= max_attempts, 1), count(*) FROM Jobs \
         WHERE job_type = ?1 GROUP BY 1, 2",
    )
    .bind(queue)
    .fetch_all(pool)
    .await?;
    let mut counts = QueueCounts::default();
    for (status, spent, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        counts.add_rows(&String::from_utf8_lossy(&status), spent != 0, n);
    }
    Ok(counts)
}

pub(super) async fn task(
    pool: &SqlitePool,
    queue: &str,
    id: &str,
) -> Result<Option<TaskInfo>, QueueError> {
    type Row = (
        Vec<u8>,
        Option<i64>,
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<i64>,
    );
    // Read as stored, whatever another producer wrote: bytes and SQLite's own conversions.
    let row: Option<Row> = sqlx::query_as(
        "SELECT CAST(status AS BLOB), CAST(attempts AS INTEGER), CAST(max_attempts AS INTEGER), \
         CAST(lock_by AS BLOB), CAST(last_result AS BLOB), CAST(run_at AS INTEGER) \
         FROM Jobs WHERE id = ?1 AND job_type = ?2",
    )
    .bind(id)
    .bind(queue)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(status, attempts, max_attempts, locked_by, last_result, run_at)| {
            let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
            let count = |n: Option<i64>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            TaskInfo::from_row(
                text(status),
                (count(attempts), count(max_attempts)),
                locked_by.map(text),
                last_result.map(text),
                run_at.and_then(|t| u64::try_from(t).ok()),
                unix_now(),
            )
        },
    ))
}

/// Before a failed attempt is acknowledged: the task runs again no sooner than `at`. apalis'
/// acknowledgement leaves `run_at` alone and its fetch takes a failed row only once `run_at`
/// has passed, so this is the whole backoff.
pub(super) async fn retry_at(
    pool: &SqlitePool,
    worker: &str,
    id: &str,
    at: u64,
) -> Result<(), QueueError> {
    sqlx::query("UPDATE Jobs SET run_at = ?1 WHERE id = ?2 AND lock_by = ?3")
        .bind(i64::try_from(at).unwrap_or(i64::MAX))
        .bind(id)
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

/// Gives back a task that `worker` deferred (apalis left it `Pending` and locked by `worker`):
/// unlocks it for anyone and takes back the attempt that deferring counted.
pub(super) async fn unlock_deferred(
    pool: &SqlitePool,
    worker: &str,
    id: &str,
) -> Result<Settled, QueueError> {
    let done = sqlx::query(
        "UPDATE Jobs SET lock_by = NULL, lock_at = NULL, done_at = NULL, \
         attempts = max(attempts - 1, 0) \
         WHERE id = ?1 AND lock_by = ?2 AND status = 'Pending'",
    )
    .bind(id)
    .bind(worker)
    .execute(pool)
    .await?;
    if done.rows_affected() == 1 {
        return Ok(Settled::Done);
    }
    // Not yet acknowledged (still claimed by us), acknowledged just now, or moved on.
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT status, lock_by FROM Jobs WHERE id = ?1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let row = row.as_ref().map(|(s, h)| (s.as_str(), h.as_deref()));
    Ok(judge::unlock_missed(row, worker))
}

/// Gives back the deferred tasks (`Pending`, still locked) of workers that are gone: no
/// heartbeat for `orphan_timeout`. apalis' fetch takes only unlocked `Pending` rows and its
/// orphan re-run only `Queued`/`Running` ones, so a worker that died between apalis' write of
/// a deferral and its own unlock would strand the row for good.
pub(super) async fn free_dead_deferrals(
    pool: &SqlitePool,
    queue: &str,
    orphan_timeout: Duration,
) -> Result<u64, QueueError> {
    let secs = i64::try_from(orphan_timeout.as_secs()).unwrap_or(i64::MAX);
    let done = sqlx::query(
        "UPDATE Jobs SET lock_by = NULL, lock_at = NULL, done_at = NULL, \
         attempts = max(attempts - 1, 0) \
         WHERE job_type = ?1 AND status = 'Pending' AND lock_by IS NOT NULL \
         AND lock_by NOT IN \
           (SELECT id FROM Workers WHERE strftime('%s', 'now') - last_seen < ?2)",
    )
    .bind(queue)
    .bind(secs)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// After `worker` stopped for good: every task it still holds (claimed, running, or
/// deferred) goes back to the queue without counting an attempt. One statement, so that an
/// acknowledgement landing late cannot slip between two: a row still claimed or running goes
/// back as it is; a row whose deferral was acknowledged (`Pending`, still ours) also gets its
/// attempt back. An acknowledgement that lands after this finds the row no longer ours and
/// changes nothing.
pub(super) async fn release_worker(pool: &SqlitePool, worker: &str) -> Result<u64, QueueError> {
    let done = sqlx::query(
        "UPDATE Jobs SET \
           attempts = CASE WHEN status = 'Pending' THEN max(attempts - 1, 0) ELSE attempts END, \
           status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL \
         WHERE lock_by = ?1 AND status IN ('Queued', 'Running', 'Pending')",
    )
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The rows the next fetch of `queue` would claim (apalis' order: priority, then run time,
/// then id; waiting rows and failed rows with attempts left, due now), each column as stored,
/// for the [judge](super::judge).
pub(super) async fn next_candidates(
    pool: &SqlitePool,
    queue: &str,
    batch: usize,
) -> Result<Vec<StoredRow>, QueueError> {
    type Bytes = Option<Vec<u8>>;
    type Row = (
        i64,
        Bytes,
        Bytes,
        Bytes,
        Bytes,
        Bytes,
        String,
        String,
        String,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT ROWID, CAST(id AS BLOB), CAST(job_type AS BLOB), \
             CAST(last_result AS BLOB), CAST(metadata AS BLOB), CAST(idempotency_key AS BLOB), \
             typeof(attempts), typeof(run_at), typeof(job) \
             FROM Jobs WHERE ROWID IN ( \
               SELECT ROWID FROM ( \
                 SELECT ROWID, priority, run_at, id FROM Jobs WHERE job_type = ?1 \
                   AND status = 'Pending' AND lock_by IS NULL AND (run_at IS NULL OR run_at <= ?2) \
                 UNION ALL \
                 SELECT ROWID, priority, run_at, id FROM Jobs WHERE job_type = ?1 \
                   AND status = 'Failed' AND attempts < max_attempts \
                   AND (run_at IS NULL OR run_at <= ?2)) \
               ORDER BY priority DESC, run_at ASC, id ASC LIMIT ?3)",
    )
    .bind(queue)
    .bind(i64::try_from(unix_now()).unwrap_or(i64::MAX))
    .bind(i64::try_from(batch).unwrap_or(1))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(rowid, id, job_type, last_result, metadata, key, attempts, run_at, job)| {
                StoredRow {
                    rowid,
                    id,
                    texts: vec![
                        // (Not lock_by: the fetch writes it before apalis reads it.)
                        ("job_type", job_type),
                        ("last_result", last_result),
                        ("metadata", metadata),
                        ("idempotency_key", key),
                    ],
                    attempts_type: attempts,
                    run_at_type: run_at,
                    job_type: job,
                }
            },
        )
        .collect())
}

/// Whether the row with id `id` (exactly) is claimed by `worker` and not started.
pub(super) async fn claimed_by(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    worker: &str,
) -> Result<bool, QueueError> {
    let found: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM Jobs WHERE id = ?1 AND lock_by = ?2 AND status = 'Queued'")
            .bind(id)
            .bind(worker)
            .fetch_optional(conn)
            .await?;
    Ok(found.is_some())
}

/// The ids of the rows `worker` claimed and has not started, as stored.
pub(super) async fn claims(
    conn: &mut sqlx::SqliteConnection,
    worker: &str,
) -> Result<Vec<String>, QueueError> {
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as(
        "SELECT CAST(id AS BLOB) FROM Jobs WHERE lock_by = ?1 AND status = 'Queued' \
         AND id IS NOT NULL",
    )
    .bind(worker)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id,)| String::from_utf8_lossy(&id).into_owned())
        .collect())
}

/// Fails for good the rows `ids` (as stored) that `worker` claimed and has not started; their
/// ids.
pub(super) async fn kill_claimed(
    conn: &mut sqlx::SqliteConnection,
    ids: &[String],
    worker: &str,
    why: &str,
) -> Result<Vec<String>, QueueError> {
    let mut killed = Vec::new();
    for id in ids {
        let done = sqlx::query(
            "UPDATE Jobs SET status = 'Killed', last_result = json_object('Err', ?3), \
             done_at = strftime('%s', 'now'), lock_by = NULL, lock_at = NULL \
             WHERE id = ?1 AND lock_by = ?2 AND status = 'Queued'",
        )
        .bind(id)
        .bind(worker)
        .bind(why)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() > 0 {
            killed.push(id.clone());
        }
    }
    Ok(killed)
}

/// apalis' lock of tasks `ids` that `worker` is starting, only where `worker` holds them
/// claimed (apalis' own statement takes them from any holder: a lock landing late, after
/// another worker took the task over, would take it back).
pub(super) async fn lock(
    conn: &mut sqlx::SqliteConnection,
    ids: &[String],
    worker: &str,
) -> Result<(), QueueError> {
    let ids = serde_json::to_string(ids).map_err(|e| QueueError::Store(e.to_string()))?;
    sqlx::query(
        "UPDATE Jobs SET status = 'Running', lock_at = strftime('%s', 'now') \
         WHERE id IN (SELECT value FROM json_each(?1)) AND lock_by = ?2 AND status = 'Queued'",
    )
    .bind(ids)
    .bind(worker)
    .execute(conn)
    .await?;
    Ok(())
}

/// Fails the row `rowid` for good with `why` (apalis' result format: `{"Err": why}`), if it
/// is still unclaimed; whether it was.
pub(super) async fn kill_unclaimed(
    pool: &SqlitePool,
    rowid: i64,
    why: &str,
) -> Result<bool, QueueError> {
    let done = sqlx::query(
        "UPDATE Jobs SET status = 'Killed', last_result = json_object('Err', ?1), \
         done_at = strftime('%s', 'now'), lock_by = NULL, lock_at = NULL \
         WHERE ROWID = ?2 AND ((status = 'Pending' AND lock_by IS NULL) OR status = 'Failed')",
    )
    .bind(why)
    .bind(rowid)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Keeps the query planner's statistics current: without them SQLite walks the status index
/// for apalis' lock statement, 33 ms per task with 100 000 pending (0.2 ms with statistics).
/// Analyzes when the `Jobs` table has no statistics or has more than doubled since (its
/// largest rowid against the row count the statistics were taken at); `analysis_limit` keeps
/// one `ANALYZE` to a few milliseconds at any size.
pub(super) async fn refresh_statistics(pool: &SqlitePool) -> Result<bool, QueueError> {
    let mut conn = pool.acquire().await?;
    let stat: Option<(String,)> = sqlx::query_as(
        "SELECT stat FROM sqlite_stat1 WHERE tbl = 'Jobs' AND stat IS NOT NULL LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .unwrap_or(None); // no sqlite_stat1 table before the first ANALYZE
    let analyzed: Option<i64> = stat.and_then(|(s,)| s.split(' ').next()?.parse().ok());
    let (rows,): (Option<i64>,) = sqlx::query_as("SELECT max(ROWID) FROM Jobs")
        .fetch_one(&mut *conn)
        .await?;
    if !judge::statistics_stale(analyzed, rows.unwrap_or(0)) {
        return Ok(false);
    }
    sqlx::query("PRAGMA analysis_limit = 1000")
        .execute(&mut *conn)
        .await?;
    sqlx::query("ANALYZE Jobs").execute(&mut *conn).await?;
    tracing::debug!(rows, "refreshed the queue's planner statistics");
    Ok(true)
}
