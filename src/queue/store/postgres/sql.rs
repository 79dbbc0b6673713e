//! The statements leasepool runs on apalis-postgres' `apalis.jobs` table, each one statement
//! (atomic against apalis' own). The columns they rely on are pinned by the store contract
//! test.

use sqlx::{PgConnection, PgPool, Row as _};

use super::judge::PgRow;
use crate::queue::store::shield::BackendError;
use crate::queue::store::unix_now;
use crate::queue::{QueueCounts, QueueError, TaskInfo};

pub(super) async fn counts(pool: &PgPool, queue: &str) -> Result<QueueCounts, QueueError> {
    let rows: Vec<(String, bool, i64)> = sqlx::query_as(
        "SELECT status, coalesce(attempts >= max_attempts, true), count(*) FROM apalis.jobs \
         WHERE job_type = $1 GROUP BY 1, 2",
    )
    .bind(queue)
    .fetch_all(pool)
    .await?;
    let mut counts = QueueCounts::default();
    for (status, spent, n) in rows {
        counts.add_rows(&status, spent, u64::try_from(n).unwrap_or(0));
    }
    Ok(counts)
}

pub(super) async fn task(
    pool: &PgPool,
    queue: &str,
    id: &str,
) -> Result<Option<TaskInfo>, QueueError> {
    type Row = (
        String,
        Option<i32>,
        Option<i32>,
        Option<String>,
        Option<String>,
        Option<f64>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT status, attempts, max_attempts, lock_by, last_result::text, \
         extract(epoch FROM run_at)::float8 FROM apalis.jobs WHERE id = $1 AND job_type = $2",
    )
    .bind(id)
    .bind(queue)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(status, attempts, max_attempts, locked_by, last_result, run_at)| {
            let count = |n: Option<i32>| n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
            TaskInfo::from_row(
                status,
                (count(attempts), count(max_attempts)),
                locked_by,
                last_result,
                run_at
                    .filter(|t| t.is_finite() && *t >= 0.0)
                    .map(|t| t as u64),
                unix_now(),
            )
        },
    ))
}

/// Before a failed attempt is acknowledged: the task runs again no sooner than `at`. apalis'
/// acknowledgement leaves `run_at` alone and its fetch takes a failed row only once `run_at`
/// has passed, so this is the whole backoff.
pub(super) async fn retry_at(
    pool: &PgPool,
    worker: &str,
    id: &str,
    at: u64,
) -> Result<(), QueueError> {
    sqlx::query("UPDATE apalis.jobs SET run_at = to_timestamp($1) WHERE id = $2 AND lock_by = $3")
        .bind(at as f64)
        .bind(id)
        .bind(worker)
        .execute(pool)
        .await?;
    Ok(())
}

/// In the transaction that wrote apalis' acknowledgement of `worker`'s deferral of task `id`
/// (`Pending`, still held by `worker`): frees the task and takes back the attempt that deferring
/// counted. Whether the row was there to free.
pub(super) async fn give_back(
    conn: &mut PgConnection,
    worker: &str,
    id: &str,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE apalis.jobs SET lock_by = NULL, lock_at = NULL, done_at = NULL, \
         attempts = greatest(attempts - 1, 0) \
         WHERE id = $1 AND lock_by = $2 AND status = 'Pending'",
    )
    .bind(id)
    .bind(worker)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The status and holder of task `id`.
pub(super) async fn holder(
    pool: &PgPool,
    id: &str,
) -> Result<Option<(String, Option<String>)>, QueueError> {
    Ok(
        sqlx::query_as("SELECT status, lock_by FROM apalis.jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// After `worker` stopped for good: every task it still holds (claimed, running, or deferred)
/// goes back to the queue without counting an attempt, in one statement (an acknowledgement
/// landing after it finds the row no longer the worker's and changes nothing).
pub(super) async fn release_worker(pool: &PgPool, worker: &str) -> Result<u64, QueueError> {
    let done = sqlx::query(
        "UPDATE apalis.jobs SET \
           attempts = CASE WHEN status = 'Pending' THEN greatest(attempts - 1, 0) \
                      ELSE attempts END, \
           status = 'Pending', lock_by = NULL, lock_at = NULL, done_at = NULL \
         WHERE lock_by = $1 AND status IN ('Queued', 'Running', 'Pending')",
    )
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The claim: up to `batch` tasks of `queue` due now, by apalis' `get_jobs` rule and order
/// (waiting rows and failed rows with attempts left; priority, then run time; rows another
/// session holds locked are skipped), marked running under `worker` in one statement (apalis
/// marks them `Queued` and then `Running` in a second transaction), read as the
/// [judge](super::judge) reads them: text as UTF-8 bytes (as the bytes stored, in a
/// `SQL_ASCII` database, which does not check them: sent as text, one that is not UTF-8 failed
/// the statement, for every worker, on the same row, for ever).
pub(super) async fn claim(
    pool: &PgPool,
    queue: &str,
    worker: &str,
    batch: usize,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH enc AS (SELECT \
           CASE getdatabaseencoding() WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END AS name), \
         next AS ( \
           SELECT id FROM apalis.jobs \
           WHERE (status = 'Pending' OR (status = 'Failed' AND attempts < max_attempts)) \
             AND run_at < now() AND job_type = $2 \
           ORDER BY priority DESC, run_at ASC LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE apalis.jobs AS j SET status = 'Running', lock_by = $1, lock_at = now() \
         FROM next, enc WHERE j.id = next.id \
         RETURNING convert_to(j.id, enc.name) AS id, j.job, j.attempts, j.max_attempts, \
           extract(epoch FROM j.run_at)::float8 AS run_at, \
           extract(epoch FROM j.lock_at)::float8 AS lock_at, \
           extract(epoch FROM j.done_at)::float8 AS done_at, \
           j.priority, convert_to(j.idempotency_key, enc.name) AS idempotency_key, \
           ARRAY(SELECT convert_to(e.key, enc.name) FROM each(j.metadata) AS e) AS keys, \
           ARRAY(SELECT convert_to(e.value, enc.name) FROM each(j.metadata) AS e) AS vals",
    )
    .bind(worker)
    .bind(queue)
    .bind(i64::try_from(batch).unwrap_or(1))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            // (Two walks of one hstore value meet its pairs in the same order.)
            let keys: Vec<Vec<u8>> = r.try_get("keys")?;
            let values: Vec<Option<Vec<u8>>> = r.try_get("vals")?;
            Ok(PgRow {
                id: r.try_get("id")?,
                job: r.try_get("job")?,
                attempts: r.try_get("attempts")?,
                max_attempts: r.try_get("max_attempts")?,
                run_at: r.try_get("run_at")?,
                lock_at: r.try_get("lock_at")?,
                done_at: r.try_get("done_at")?,
                priority: r.try_get("priority")?,
                idempotency_key: r.try_get("idempotency_key")?,
                metadata: keys.into_iter().zip(values).collect(),
            })
        })
        .collect()
}

/// Fails for good the tasks `ids` (as stored: the ids' bytes) that `worker` claimed and cannot
/// run; their ids (as text, lossily).
pub(super) async fn kill_claimed(
    pool: &PgPool,
    ids: &[Vec<u8>],
    worker: &str,
    why: &str,
) -> Result<Vec<String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let killed: Vec<(Vec<u8>,)> = sqlx::query_as(
        "UPDATE apalis.jobs SET status = 'Killed', \
           last_result = jsonb_build_object('Err', $3::text), \
           done_at = now(), lock_by = NULL, lock_at = NULL \
         WHERE lock_by = $2 AND status = 'Running' AND convert_to(id, \
           CASE getdatabaseencoding() WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END) = ANY($1) \
         RETURNING convert_to(id, \
           CASE getdatabaseencoding() WHEN 'SQL_ASCII' THEN 'SQL_ASCII' ELSE 'UTF8' END)",
    )
    .bind(ids)
    .bind(worker)
    .bind(why)
    .fetch_all(pool)
    .await?;
    Ok(killed
        .into_iter()
        .map(|(id,)| String::from_utf8_lossy(&id).into_owned())
        .collect())
}

/// Registers apalis worker `worker` of `queue` (apalis-postgres' row in `apalis.workers`).
pub(super) async fn register_worker(
    conn: &mut PgConnection,
    queue: &str,
    worker: &apalis_core::worker::context::WorkerContext,
) -> Result<(), BackendError> {
    let done = sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen) \
         VALUES ($1, $2, 'PgStorage', $3, now()) ON CONFLICT (id) DO NOTHING",
    )
    .bind(worker.name())
    .bind(queue)
    .bind(worker.get_service())
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(BackendError(format!(
            "a queue worker named {} is registered already",
            worker.name()
        )));
    }
    Ok(())
}
