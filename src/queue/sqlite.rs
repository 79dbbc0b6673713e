//! The SQLite store: apalis-sqlite's `Jobs` table, plus the two things apalis 1.0 does not do
//! (giving back a deferred task's attempt, handing a stopped worker's tasks back).

use sqlx::SqlitePool;

use super::{QueueCounts, QueueError, TaskInfo};

pub(super) async fn counts(pool: &SqlitePool, queue: &str) -> Result<QueueCounts, QueueError> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT status, attempts >= max_attempts, count(*) FROM Jobs \
         WHERE job_type = ?1 GROUP BY status, attempts >= max_attempts",
    )
    .bind(queue)
    .fetch_all(pool)
    .await?;
    let mut counts = QueueCounts::default();
    for (status, spent, n) in rows {
        let n = u64::try_from(n).unwrap_or(0);
        match status.as_str() {
            "Pending" => counts.pending += n,
            "Queued" | "Running" => counts.claimed += n,
            "Done" => counts.done += n,
            "Failed" if spent == 0 => counts.pending += n,
            _ => counts.failed += n,
        }
    }
    Ok(counts)
}

pub(super) async fn task(pool: &SqlitePool, id: &str) -> Result<Option<TaskInfo>, QueueError> {
    type Row = (String, i64, i64, Option<String>, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT status, attempts, max_attempts, lock_by, CAST(last_result AS TEXT) \
         FROM Jobs WHERE id = ?1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(status, attempts, max_attempts, locked_by, last_result)| TaskInfo {
            status,
            attempts: u64::try_from(attempts).unwrap_or(0),
            max_attempts: u64::try_from(max_attempts).unwrap_or(0),
            locked_by,
            last_result,
        },
    ))
}

/// Gives back a task that `worker` holds in the state `Pending` because it deferred it:
/// unlocks it for anyone and takes back the attempt that deferring counted. Returns
/// whether the row was found in that state.
pub(super) async fn unlock_deferred(
    pool: &SqlitePool,
    task_id: &str,
    worker: &str,
) -> Result<bool, QueueError> {
    let done = sqlx::query(
        "UPDATE Jobs SET lock_by = NULL, lock_at = NULL, done_at = NULL, \
         attempts = max(attempts - 1, 0) \
         WHERE id = ?1 AND lock_by = ?2 AND status = 'Pending'",
    )
    .bind(task_id)
    .bind(worker)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives back the deferred tasks (`Pending`, still locked) of workers that are gone: no
/// heartbeat for `orphan_timeout`. apalis' fetch takes only unlocked `Pending` rows and its
/// orphan re-run only `Queued`/`Running` ones, so a worker that died between apalis' write of
/// a deferral and its own unlock would strand the row for good. The attempt the deferral
/// counted is given back, as the worker would have.
pub(super) async fn free_dead_deferrals(
    pool: &SqlitePool,
    queue: &str,
    orphan_timeout: std::time::Duration,
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
/// deferred) goes back to the queue without counting an attempt.
pub(super) async fn release_worker(pool: &SqlitePool, worker: &str) -> Result<u64, QueueError> {
    // One statement, so that an acknowledgement landing late cannot slip between two: a row
    // still claimed or running goes back as it is; a row whose deferral was acknowledged
    // (`Pending`, still ours) also gets its attempt back. An acknowledgement that lands after
    // this finds the row no longer ours and changes nothing.
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
