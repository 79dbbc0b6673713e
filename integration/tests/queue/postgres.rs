//! What only the PostgreSQL store does: idle workers woken by `NOTIFY` (not by their poll), one
//! listening connection per queue outside the pool (many workers leave the pool to pushes,
//! acknowledgements and heartbeats), a listener that reconnects, and a claim of its own (one
//! statement that commits on its own: a fetch that fails after it ends the worker; text read as
//! bytes, so text that is not UTF-8 fails its task alone).

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueWorker};

use crate::fixtures::*;
use crate::hostile::{early_id, run_among_hostile, Hostile};
use crate::hostile_pg_rows::raw_postgres_row;
use crate::postgres_server::{postgres_url, psql, psql_in};

/// A worker that polls once an hour, and the times its job started.
async fn deaf_worker(
    queue: &Queue,
    name: &str,
    prefix: &str,
) -> (
    QueueWorker<(), u64>,
    leasepool::LeaseManager,
    Arc<std::sync::Mutex<Vec<Instant>>>,
) {
    let m = manager(prefix, 2).await;
    let started = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&started);
    let worker = QueueWorker::builder(&m, queue, name)
        .poll_interval(Duration::from_secs(3600))
        .build_blocking(move |_: u64| -> Result<(), String> {
            seen.lock().unwrap().push(Instant::now());
            Ok(())
        })
        .unwrap();
    worker.start().unwrap();
    // Past its first fetch: from here only a wake-up makes it fetch.
    tokio::time::sleep(Duration::from_millis(500)).await;
    (worker, m, started)
}

/// Pushes one task and waits (at most 10 s: the poll is an hour away) until it started;
/// how long that took.
async fn push_and_wait(
    queue: &Queue,
    name: &str,
    n: u64,
    started: &std::sync::Mutex<Vec<Instant>>,
) -> Duration {
    let before = started.lock().unwrap().len();
    let pushed = Instant::now();
    queue.push(name, n).await.unwrap();
    loop {
        if let Some(at) = started.lock().unwrap().get(before) {
            return at.saturating_duration_since(pushed);
        }
        assert!(
            pushed.elapsed() < Duration::from_secs(10),
            "task {n} did not start within 10 s of its push: no wake-up"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[testkit::test]
async fn an_idle_worker_is_woken_by_notify_not_its_poll() {
    let queue = Queue::postgres(&postgres_url()).await.unwrap();
    let name = "woken";
    let (worker, m, started) = deaf_worker(&queue, name, "q-woken").await;
    let mut waits = Vec::new();
    for n in 0..5 {
        waits.push(push_and_wait(&queue, name, n, &started).await);
        // Idle again (the fetch that follows a task's end is behind it).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("    push → start with an hour's poll: {waits:?}");
    assert_eq!(worker.stop().await.done, 5);
    m.stop().await;
}

#[testkit::test]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let queue = Queue::postgres(&postgres_url()).await.unwrap();
    let name = "relisten";
    let (worker, m, started) = deaf_worker(&queue, name, "q-relisten").await;
    push_and_wait(&queue, name, 1, &started).await;
    // Idle again (the fetch that follows a task's end is behind it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed = psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN %apalis::job::insert%'",
    );
    assert_ne!(killed, "0", "no listening connection found");
    // Reconnected with a backoff of 100 ms first: the next push wakes the worker again.
    let wait = push_and_wait(&queue, name, 2, &started).await;
    println!("    push → start after the listener's connection was killed: {wait:?}");
    assert_eq!(worker.stop().await.done, 2);
    m.stop().await;
}

/// (Before, each worker's listener held a connection of the queue's pool of 8 for its whole
/// life: with 8 workers a push waited out the pool's 30 s timeout and failed.)
#[testkit::test]
async fn many_workers_leave_the_pool_to_pushes_and_acknowledgements() {
    let queue = Queue::postgres(&postgres_url()).await.unwrap();
    let name = "crowd";
    let m = manager("q-crowd", 12).await;
    let mut workers = Vec::new();
    for _ in 0..12 {
        let w = QueueWorker::builder(&m, &queue, name)
            .poll_interval(Duration::from_millis(50))
            .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
            .unwrap();
        w.start().unwrap();
        workers.push(w);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let begun = Instant::now();
    for n in 0..24_u64 {
        queue.push(name, n).await.unwrap();
    }
    let pushing = begun.elapsed();
    testkit::until(
        "every task done",
        || async { queue.counts(name).await.unwrap() },
        |c| c.done == 24,
    )
    .await;
    println!(
        "    12 workers: 24 pushes took {pushing:?}, all done after {:?}",
        begun.elapsed()
    );
    assert!(
        pushing < Duration::from_secs(10),
        "pushes waited for the pool: {pushing:?}"
    );
    for w in workers {
        let st = w.stop().await;
        assert_eq!(st.restarts, 0, "{st:?}, {:?}", w.last_error());
    }
    m.stop().await;
}

/// A claimed row whose text does not decode (not UTF-8: a `SQL_ASCII` database stores bytes as
/// they come) fails alone, named; the other tasks run once and the worker never restarts.
/// (Without a row-by-row read, the claim failed after it committed: the worker was replaced,
/// the row put back, and claimed again, for ever.)
#[testkit::test]
async fn a_row_whose_text_does_not_decode_fails_alone() {
    let base = postgres_url();
    let db = "lp_ascii";
    psql(&format!("DROP DATABASE IF EXISTS {db}"));
    psql(&format!(
        "CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' \
         TEMPLATE template0"
    ));
    let url = format!("{}/{db}", base.rsplit_once('/').unwrap().0);
    let queue = Queue::postgres(&url).await.unwrap();
    let name = "undecodable";
    let mut hostile = Vec::new();
    for (n, column, value, what) in [
        (
            70,
            "idempotency_key",
            "E'\\xff'",
            "an idempotency_key not UTF-8",
        ),
        (
            71,
            "metadata",
            "hstore('k', E'\\xfe')",
            "a metadata value not UTF-8",
        ),
    ] {
        let id = early_id(n);
        psql_in(
            db,
            &format!(
                "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, \
                 run_at, priority, {column}) VALUES ('{}', '{id}', '{name}', 'Pending', 0, 25, \
                 now() - interval '1 hour', 0, {value})",
                1000 + n
            ),
        );
        hostile.push(Hostile {
            id,
            what,
            reason: Some("is not UTF-8 text"),
        });
    }
    queue.push_all(name, 0..10_u64).await.unwrap();
    run_among_hostile(Kind::Postgres, &queue, name, &hostile, 10).await;
    drop(queue);
    psql(&format!("DROP DATABASE {db} WITH (FORCE)"));
}

/// A fetch that fails after its claim committed (here the statement that fails a row that
/// cannot run fails once, as any statement may: a dropped connection, a timeout) ends the
/// worker: its release hands the row back, and the next worker fails it with its reason.
/// (Before, the fetch was tried again in the same worker, and the row stayed claimed by a worker
/// that lived on: not run, not failed, until the worker stopped.)
#[testkit::test]
async fn a_fetch_that_fails_after_its_claim_leaves_nothing_claimed() {
    let queue = Queue::postgres(&postgres_url()).await.unwrap();
    let name = "kill-fails-once";
    let bad = "task-kill-fails-once";
    psql(
        "CREATE SEQUENCE kill_fails_once; \
         CREATE FUNCTION kill_fails_once() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN IF nextval('kill_fails_once') = 1 THEN \
         RAISE EXCEPTION 'one transient failure'; END IF; RETURN NEW; END $$",
    );
    psql(&format!(
        "CREATE TRIGGER kill_fails_once BEFORE UPDATE ON apalis.jobs FOR EACH ROW \
         WHEN (NEW.status = 'Killed' AND NEW.job_type = '{name}') \
         EXECUTE FUNCTION kill_fails_once()"
    ));
    raw_postgres_row(name, "'999'", bad, "25");
    queue.push_all(name, 0..10_u64).await.unwrap();
    let m = manager("q-kill-fails", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, name)
        .poll_interval(std::time::Duration::from_millis(20))
        .build_blocking(counting_job(&seen, 0))
        .unwrap();
    worker.start().unwrap();
    let settled = testkit::until(
        "every task settled, the row that cannot run failed",
        || async { queue.counts(name).await.unwrap() },
        |c| c.done == 10 && c.failed == 1 && c.claimed == 0,
    )
    .await;
    let st = worker.stop().await;
    m.stop().await;
    psql("DROP TRIGGER kill_fails_once ON apalis.jobs");
    assert_eq!(tally(&seen, 10), (0, 0), "{settled:?}");
    assert_eq!(st.restarts, 1, "the failed fetch ended its worker once");
    let t = queue.task(name, bad).await.unwrap().unwrap();
    assert!(
        t.status == "Killed" && t.last_result.unwrap_or_default().contains("is not a ULID"),
        "{}",
        t.status
    );
}
