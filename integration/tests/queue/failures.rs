//! Failing stores and settings at their edges: stop is bounded by one deadline while the store
//! is locked or paused, a deleted or replaced SQLite file is followed, every `Duration` setting
//! is taken or refused by name at 0, 1 ms and `Duration::MAX`, a panic inside apalis replaces
//! the worker instead of killing it silently, and the planner's statistics follow the table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{
    Queue, QueueError, QueueWorker, QueueWorkerBuilder, RetryPolicy, STOP_MARGIN,
};

use crate::fixtures::*;

/// Holds the store's write path until dropped: SQLite, another connection's write
/// transaction; Redis, `CLIENT PAUSE … WRITE` (scripts wait too); PostgreSQL, another
/// session's exclusive lock on `apalis.jobs`.
enum Locked {
    Sqlite(
        std::sync::mpsc::Sender<()>,
        Option<std::thread::JoinHandle<()>>,
    ),
    Redis,
    Postgres(#[allow(dead_code)] crate::postgres_server::Held),
}

/// Takes the store's write path. (Waits for the lock without blocking this thread: the
/// worker's transactions run on it and must end before anyone gets the lock.)
async fn lock_store(kind: Kind, queue: &Queue) -> Locked {
    match kind {
        Kind::Sqlite => {
            let db = queue.path().unwrap().to_path_buf();
            let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let holder = std::thread::spawn(move || {
                let c = raw_sqlite(&db);
                c.execute_batch("BEGIN IMMEDIATE").unwrap();
                locked_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(60));
                c.execute_batch("ROLLBACK").unwrap();
            });
            locked_rx.await.unwrap();
            Locked::Sqlite(release_tx, Some(holder))
        }
        Kind::Redis => {
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(60_000)
                .arg("WRITE")
                .query(&mut redis_conn())
                .unwrap();
            Locked::Redis
        }
        Kind::Postgres => {
            let sql = "LOCK TABLE apalis.jobs IN ACCESS EXCLUSIVE MODE";
            let held = tokio::task::spawn_blocking(move || crate::postgres_server::hold(sql));
            Locked::Postgres(held.await.unwrap())
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        match self {
            Locked::Sqlite(release, holder) => {
                let _ = release.send(());
                if let Some(holder) = holder.take() {
                    let _ = holder.join();
                }
            }
            Locked::Redis => {
                let _: redis::RedisResult<()> =
                    redis::cmd("CLIENT").arg("UNPAUSE").query(&mut redis_conn());
            }
            Locked::Postgres(_) => {}
        }
    }
}

/// (Before the fix a stop waited 2 + 5 + 10 s past its timeout: 15 s with a 3 s timeout.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn stop_is_bounded_while_the_store_is_locked(kind: Kind) {
    let (queue, dir) = queue_for(kind, "locked").await;
    let m = manager("q-locked", 1).await;
    let gate = testkit::Gate::new();
    const TIMEOUT: Duration = Duration::from_secs(2);
    let worker = QueueWorker::builder(&m, &queue, "locked")
        .poll_interval(Duration::from_millis(5))
        .shutdown_timeout(TIMEOUT)
        .build_blocking(gated(&gate))
        .unwrap();
    let id = queue.push("locked", 1_u64).await.unwrap();
    worker.start().unwrap();
    eventually("the task running", || async { worker.stats().running == 1 }).await;
    let locked = lock_store(kind, &queue).await;
    let begun = Instant::now();
    let st = worker.stop().await;
    let took = begun.elapsed();
    drop(locked);
    gate.open();
    println!("    {kind:?}: stop took {took:?} with the store locked (timeout {TIMEOUT:?})");
    // Generous slack for a loaded VM; the bound itself is TIMEOUT + STOP_MARGIN.
    assert!(
        took < TIMEOUT + STOP_MARGIN + Duration::from_millis(1500),
        "{kind:?}: stop took {took:?}"
    );
    assert!(st.not_handed_back >= 1, "{kind:?}: {st:?}");
    // What was not handed back runs again: handed back late, or after the orphan timeout.
    let w2 = QueueWorker::builder(&m, &queue, "locked")
        .poll_interval(Duration::from_millis(5))
        .orphan_timeout(Duration::from_secs(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    w2.start().unwrap();
    testkit::until(
        "the task done by another worker",
        || async { queue.task("locked", &id).await.unwrap().unwrap() },
        |t| t.status == "Done",
    )
    .await;
    w2.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// (Before the fix the worker served the deleted file: the new tasks never ran; or its
/// connections split between the two files: `FOREIGN KEY constraint failed` in a loop.)
#[testkit::test]
async fn a_replaced_queue_file_is_followed() {
    let dir = temp_dir("vanish");
    let db = dir.join("q.db");
    let queue = Queue::sqlite(&db).await.unwrap();
    queue.push_all("vanish", 0..300_u64).await.unwrap();
    let m = manager("q-vanish", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "vanish")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(counting_job(&seen, 10))
        .unwrap();
    worker.start().unwrap();
    eventually("20 done", || async { worker.stats().done >= 20 }).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    // A new producer at the same path: a new file.
    let fresh = Queue::sqlite(&db).await.unwrap();
    fresh.push_all("vanish", 1000..1050_u64).await.unwrap();
    testkit::until(
        "the 50 tasks of the new file done",
        || async { fresh.counts("vanish").await.unwrap() },
        |c| c.done == 50,
    )
    .await;
    let st = worker.stop().await;
    m.stop().await;
    let twice: Vec<_> = {
        let runs = seen.lock().unwrap();
        (1000..1050).filter(|k| runs.get(k) != Some(&1)).collect()
    };
    assert!(
        twice.is_empty(),
        "new tasks not run exactly once: {twice:?}"
    );
    assert!((1..=5).contains(&st.restarts), "{st:?}");
    let why = worker.last_error().unwrap_or_default();
    assert!(why.contains("queue file"), "{why}");
    let c = fresh.counts("vanish").await.unwrap();
    assert_eq!(
        (c.done, c.pending, c.claimed, c.failed),
        (50, 0, 0, 0),
        "{c:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

type Setting = fn(QueueWorkerBuilder<()>, Duration) -> QueueWorkerBuilder<()>;

/// A setting's name, how to set it, and values with whether each is taken.
type Row = (&'static str, Setting, Vec<(Duration, bool)>);

/// Every `Duration` setting at 0, 1 ms and `Duration::MAX` (and its bounds): either refused at
/// `build` naming the setting, or taken, and then a task runs and the worker stops in time.
/// (Before the fix `orphan_timeout(Duration::MAX)` was taken and overflowed in apalis-redis:
/// the worker died silently, `last_error` None.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn every_duration_setting_is_taken_or_refused_by_name(kind: Kind) {
    const MS: Duration = Duration::from_millis(1);
    const MAX: Duration = Duration::MAX;
    let table: Vec<Row> = vec![
        (
            "poll_interval",
            |b, d| b.poll_interval(d),
            vec![
                (Duration::ZERO, false),
                (MS, true),
                (Duration::from_secs(3600), true),
                (MAX, false),
            ],
        ),
        (
            "orphan_timeout",
            |b, d| b.orphan_timeout(d),
            vec![
                (Duration::ZERO, false),
                (MS, false),
                (Duration::from_secs(5), true),
                (Duration::from_secs(86_400), true),
                (MAX, false),
            ],
        ),
        (
            "lease_wait",
            |b, d| b.lease_wait(d),
            vec![(Duration::ZERO, false), (MS, true), (MAX, true)],
        ),
        (
            "lease_for",
            |b, d| b.lease_for(d),
            vec![(Duration::ZERO, false), (MS, true), (MAX, true)],
        ),
        (
            "shutdown_timeout",
            |b, d| b.shutdown_timeout(d),
            vec![(Duration::ZERO, true), (MS, true), (MAX, true)],
        ),
        (
            "retry delay",
            |b, d| b.retry(RetryPolicy::fixed(d)),
            vec![(Duration::ZERO, true), (MS, true), (MAX, false)],
        ),
    ];
    let (queue, dir) = queue_for(kind, "durations").await;
    let m = manager("q-durations", 1).await;
    let mut n = 0_u64;
    for (name, set, values) in table {
        for (value, taken) in values {
            let mut builder = QueueWorker::builder(&m, &queue, "durations");
            if name != "poll_interval" {
                builder = builder.poll_interval(Duration::from_millis(5));
            }
            let built =
                set(builder, value).build_blocking(|_: u64| -> Result<(), String> { Ok(()) });
            match (built, taken) {
                (Err(QueueError::InvalidArgument(t)), false) => {
                    assert!(
                        t.starts_with(&format!("{name} (")),
                        "{kind:?} {name} {value:?}: {t}"
                    )
                }
                (Ok(worker), true) => {
                    n += 1;
                    queue.push("durations", n).await.unwrap();
                    worker.start().unwrap();
                    let done = testkit::until(
                        &format!("{name} = {value:?}: the task done"),
                        || async { worker.stats() },
                        |s| s.done == 1 || s.restarts > 0,
                    )
                    .await;
                    let begun = Instant::now();
                    let st = worker.stop().await;
                    assert!(
                        done.restarts == 0
                            && st.restarts == 0
                            && begun.elapsed() < Duration::from_secs(5),
                        "{kind:?} {name} = {value:?}: {st:?}, {:?}",
                        worker.last_error()
                    );
                }
                (other, taken) => panic!(
                    "{kind:?} {name} = {value:?}: expected {}, got {:?}",
                    if taken {
                        "it taken"
                    } else {
                        "a refusal naming it"
                    },
                    other.map(|_| "a worker")
                ),
            }
        }
    }
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A panic inside apalis' worker future is caught, reported in `last_error`, and followed by a
/// new worker. (Before, the supervisor died with it: nothing ran, `last_error` None.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn a_panic_inside_apalis_replaces_the_worker(kind: Kind) {
    let (queue, dir) = queue_for(kind, "panics").await;
    let m = manager("q-panics", 1).await;
    let worker = QueueWorker::builder(&m, &queue, "panics")
        .poll_interval(Duration::from_millis(5))
        .panic_on_start(2)
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    queue.push_all("panics", 0..3_u64).await.unwrap();
    worker.start().unwrap();
    eventually("all done", || async { worker.stats().done == 3 }).await;
    assert!(worker.is_running());
    let st = worker.stop().await;
    m.stop().await;
    assert_eq!(st.restarts, 2, "{st:?}");
    let why = worker.last_error().unwrap_or_default();
    assert!(why.contains("panicked"), "{why}");
    let _ = std::fs::remove_dir_all(dir);
}

/// SQLite: the planner's statistics exist once the table has rows and are refreshed as it
/// grows (without them SQLite walked an index for apalis' lock statement: 33 ms per task at
/// 100 000 pending).
#[testkit::test]
async fn planner_statistics_follow_the_table() {
    let dir = temp_dir("stats");
    let db = dir.join("q.db");
    let queue = Queue::sqlite(&db).await.unwrap();
    let analyzed = || -> Option<i64> {
        let c = raw_sqlite(&db);
        c.query_row(
            "SELECT CAST(stat AS INTEGER) FROM sqlite_stat1 WHERE tbl = 'Jobs' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .ok()
    };
    assert_eq!(analyzed(), None, "an empty table has no statistics");
    queue.push_all("stats", 0..3000_u64).await.unwrap();
    let first = analyzed().expect("statistics after a big push");
    assert!(first >= 3000, "{first}");
    queue.push_all("stats", 0..10_000_u64).await.unwrap();
    let second = analyzed().unwrap();
    assert!(
        second >= 13_000,
        "statistics refreshed as the table grew: {second}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
