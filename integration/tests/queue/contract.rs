//! The store contract: what leasepool's SQL and Lua rely on in apalis' own storage layout,
//! pinned so that an apalis release that moves it fails here instead of counting attempts
//! wrong. Cargo.toml pins apalis to the minor version these tests pass on (`~1.0`); a new
//! minor version is taken only once this file passes on it.
//!
//! Each store is read raw (rusqlite, a plain Redis connection, `psql`) at the three moments the
//! queue depends on: a task pushed, a task claimed by a worker, a task done.

use std::collections::BTreeSet;
use std::time::Duration;

use leasepool::queue::QueueWorker;

use crate::fixtures::*;
use crate::postgres_server::psql;

/// SQLite: the `Jobs` and `Workers` columns our statements name (`store/sqlite/sql.rs`,
/// `judge.rs`), and the values apalis writes in them.
const JOBS_COLUMNS: [&str; 13] = [
    "job",
    "id",
    "job_type",
    "status",
    "attempts",
    "max_attempts",
    "run_at",
    "last_result",
    "lock_at",
    "lock_by",
    "done_at",
    "priority",
    "metadata",
];
const WORKERS_COLUMNS: [&str; 2] = ["id", "last_seen"];

/// PostgreSQL: the `apalis.jobs` and `apalis.workers` columns our statements name
/// (`store/postgres/sql.rs`), and the values apalis writes in them.
const PG_WORKERS_COLUMNS: [&str; 3] = ["id", "last_seen", "worker_type"];

fn pg_columns(table: &str) -> BTreeSet<String> {
    psql(&format!(
        "SELECT column_name FROM information_schema.columns \
         WHERE table_schema = 'apalis' AND table_name = '{table}'"
    ))
    .lines()
    .map(str::to_owned)
    .collect()
}

/// (status, attempts, max_attempts, lock_by) of task `id`, as `psql` prints them.
fn pg_row(id: &str) -> (String, i64, i64, Option<String>) {
    let line = psql(&format!(
        "SELECT status, attempts, max_attempts, coalesce(lock_by, '') FROM apalis.jobs \
         WHERE id = '{id}'"
    ));
    let f: Vec<&str> = line.split('|').collect();
    assert_eq!(f.len(), 4, "no row {id}: {line:?}");
    let by = Some(f[3].to_owned()).filter(|b| !b.is_empty());
    (
        f[0].into(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        by,
    )
}

fn sqlite_columns(db: &std::path::Path, table: &str) -> BTreeSet<String> {
    let c = raw_sqlite(db);
    let mut stmt = c.prepare(&format!("PRAGMA table_info({table})")).unwrap();
    stmt.query_map([], |row| row.get::<_, String>(1))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// (status, attempts, max_attempts, lock_by) of a row, as stored.
fn sqlite_row(db: &std::path::Path, id: &str) -> (String, i64, i64, Option<String>) {
    raw_sqlite(db)
        .query_row(
            "SELECT status, attempts, max_attempts, lock_by FROM Jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
}

/// Redis: a task's meta hash fields our scripts read and write (`attempts`, `max_attempts`,
/// `status`), and which of apalis' sets and lists holds its id.
fn redis_meta(queue: &str, id: &str) -> std::collections::HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(format!("{queue}:meta:{id}"))
        .query(&mut redis_conn())
        .unwrap()
}

fn redis_holds(key: &str, id: &str) -> bool {
    let mut c = redis_conn();
    let kind: String = redis::cmd("TYPE").arg(key).query(&mut c).unwrap();
    match kind.as_str() {
        "list" => {
            let items: Vec<String> = redis::cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .query(&mut c)
                .unwrap();
            items.iter().any(|i| i == id)
        }
        "set" => redis::cmd("SISMEMBER")
            .arg(key)
            .arg(id)
            .query(&mut c)
            .unwrap(),
        "zset" => {
            let score: Option<f64> = redis::cmd("ZSCORE").arg(key).arg(id).query(&mut c).unwrap();
            score.is_some()
        }
        _ => false,
    }
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn the_storage_layout_we_rely_on_is_apalis_own(kind: Kind) {
    let (queue, dir) = queue_for(kind, "contract").await;
    let name = "contract";
    let id = queue.push_with_attempts(name, 1_u64, 3).await.unwrap();
    // Pushed: waiting for anyone, no attempt yet.
    match kind {
        Kind::Sqlite => {
            let db = queue.path().unwrap();
            let jobs = sqlite_columns(db, "Jobs");
            for column in JOBS_COLUMNS {
                assert!(
                    jobs.contains(column),
                    "Jobs has no column {column}: {jobs:?}"
                );
            }
            let workers = sqlite_columns(db, "Workers");
            for column in WORKERS_COLUMNS {
                assert!(
                    workers.contains(column),
                    "Workers has no column {column}: {workers:?}"
                );
            }
            assert_eq!(sqlite_row(db, &id), ("Pending".into(), 0, 3, None));
        }
        Kind::Redis => {
            let meta = redis_meta(name, &id);
            assert_eq!(
                meta.get("attempts").map(String::as_str),
                Some("0"),
                "{meta:?}"
            );
            assert_eq!(
                meta.get("max_attempts").map(String::as_str),
                Some("3"),
                "{meta:?}"
            );
            assert!(
                redis_holds(&format!("{name}:active"), &id),
                "not in {name}:active"
            );
            let data: Option<Vec<u8>> = redis::cmd("HGET")
                .arg(format!("{name}:data"))
                .arg(&id)
                .query(&mut redis_conn())
                .unwrap();
            assert!(data.is_some(), "no payload in {name}:data");
        }
        Kind::Postgres => {
            for (table, want) in [
                ("jobs", &JOBS_COLUMNS[..]),
                ("workers", &PG_WORKERS_COLUMNS),
            ] {
                let have = pg_columns(table);
                for column in want {
                    assert!(
                        have.contains(*column),
                        "apalis.{table} has no column {column}: {have:?}"
                    );
                }
            }
            assert_eq!(pg_row(&id), ("Pending".into(), 0, 3, None));
            // apalis' migration history is its own (`apalis._sqlx_migrations`): an application's
            // sqlx migrations in `public` on the same database never see it.
            let history = psql(
                "SELECT table_schema FROM information_schema.tables \
                 WHERE table_name = '_sqlx_migrations'",
            );
            assert_eq!(
                history, "apalis",
                "the migration history is not apalis' own"
            );
        }
    }
    // Claimed: locked by the worker that runs it.
    let m = manager("q-contract", 1).await;
    let gate = testkit::Gate::new();
    let worker = QueueWorker::builder(&m, &queue, name)
        .poll_interval(Duration::from_millis(5))
        .build_blocking(gated(&gate))
        .unwrap();
    worker.start().unwrap();
    eventually("the task running", || async { worker.stats().running == 1 }).await;
    let me = worker.instance_name();
    match kind {
        Kind::Sqlite => {
            let db = queue.path().unwrap();
            testkit::until(
                "the row locked by the worker",
                || async { sqlite_row(db, &id) },
                |(status, _, _, by)| {
                    ["Queued", "Running"].contains(&status.as_str())
                        && by.as_deref() == Some(me.as_str())
                },
            )
            .await;
            let alive: i64 = raw_sqlite(db)
                .query_row("SELECT count(*) FROM Workers WHERE id = ?1", [&me], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(alive, 1, "the worker is not registered in Workers as {me}");
        }
        Kind::Redis => {
            let inflight = format!("{name}:inflight:{me}");
            assert!(redis_holds(&inflight, &id), "not in {inflight}");
            assert!(
                !redis_holds(&format!("{name}:active"), &id),
                "still in {name}:active"
            );
        }
        Kind::Postgres => {
            testkit::until(
                "the row locked by the worker",
                || async { pg_row(&id) },
                |(status, _, _, by)| {
                    status == "Running" // (the claim marks it running)
                        && by.as_deref() == Some(me.as_str())
                },
            )
            .await;
            let alive = psql(&format!(
                "SELECT count(*) FROM apalis.workers WHERE id = '{me}' AND worker_type = '{name}'"
            ));
            assert_eq!(alive, "1", "the worker is not registered as {me}");
        }
    }
    // Done: acknowledged as apalis writes it, one attempt counted.
    gate.open();
    testkit::until(
        "the task done",
        || async { queue.task(name, &id).await.unwrap().unwrap() },
        |t| t.status == "Done",
    )
    .await;
    match kind {
        Kind::Sqlite => {
            let (status, attempts, _, _) = sqlite_row(queue.path().unwrap(), &id);
            assert_eq!((status.as_str(), attempts), ("Done", 1));
        }
        Kind::Redis => {
            testkit::until(
                "the meta hash done",
                || async { redis_meta(name, &id) },
                |meta| meta.get("status").map(String::as_str) == Some("Done"),
            )
            .await;
            assert!(
                redis_holds(&format!("{name}:done"), &id),
                "not in {name}:done"
            );
            assert_eq!(
                redis_meta(name, &id).get("attempts").map(String::as_str),
                Some("1")
            );
        }
        Kind::Postgres => {
            let (status, attempts, _, _) = pg_row(&id);
            assert_eq!((status.as_str(), attempts), ("Done", 1));
        }
    }
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
