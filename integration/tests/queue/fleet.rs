//! Worker processes sharing one queue: exactly once, fair shares, SIGKILL and orphan re-runs,
//! a fleet on Redis and on PostgreSQL, big due backlogs.

#![allow(unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

use crate::fixtures::*;

// ---- tests across processes -------------------------------------------------------------------

#[testkit::test]
async fn two_worker_processes_do_2000_tasks_exactly_once() {
    let dir = temp_dir("2000");
    let db = dir.join("queue.db");
    let results = dir.join("results.db");
    let queue = Queue::sqlite(&db).await.unwrap();
    queue.push_all("numbers", 0..2000_u64).await.unwrap();
    assert_eq!(queue.counts("numbers").await.unwrap().pending, 2000);
    let a = Worker::spawn(db.to_str().unwrap(), "numbers", &results, 2, 1, 60, 2000);
    let b = Worker::spawn(db.to_str().unwrap(), "numbers", &results, 2, 1, 60, 2000);
    assert!(a.wait(Duration::from_secs(80)).success());
    assert!(b.wait(Duration::from_secs(10)).success());
    let (rows, distinct, per_pid) = results_of(&results);
    println!("    results: {rows} rows, {distinct} distinct tasks, per process {per_pid:?}");
    assert_eq!(distinct, 2000, "every task done");
    assert_eq!(rows, 2000, "no task done twice");
    let counts = queue.counts("numbers").await.unwrap();
    assert_eq!(counts.done, 2000, "{counts:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test]
async fn the_bigger_instance_takes_its_fair_share() {
    let dir = temp_dir("fair");
    let db = dir.join("queue.db");
    fair_share(db.to_str().unwrap(), &dir).await;
}

#[testkit::test]
async fn the_bigger_instance_takes_its_fair_share_on_postgres() {
    let dir = temp_dir("fair-pg");
    fair_share(&crate::postgres_server::postgres_url(), &dir).await;
}

/// One instance with 1 pool, one with 4; slow tasks: the bigger takes >= 3x as many.
async fn fair_share(store: &str, dir: &std::path::Path) {
    let results = dir.join("results.db");
    let queue = open(store).await;
    let small = Worker::spawn(store, "fair", &results, 1, 50, 60, 200);
    let big = Worker::spawn(store, "fair", &results, 4, 50, 60, 200);
    let small_pid = small.child.id() as i64;
    queue.push_all("fair", 0..200_u64).await.unwrap();
    assert!(small.wait(Duration::from_secs(80)).success());
    assert!(big.wait(Duration::from_secs(10)).success());
    let (rows, distinct, per_pid) = results_of(&results);
    println!("    results: {rows} rows, per process {per_pid:?} (small = {small_pid})");
    assert_eq!((rows, distinct), (200, 200));
    let small_n = per_pid
        .iter()
        .find(|(p, _)| *p == small_pid)
        .map_or(0, |(_, n)| *n);
    let big_n = rows - small_n;
    assert!(
        big_n >= 3 * small_n,
        "the 4-pool instance did {big_n}, the 1-pool one {small_n}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test]
async fn a_killed_instance_tasks_are_run_by_another_after_the_orphan_timeout() {
    let dir = temp_dir("orphan");
    let db = dir.join("queue.db");
    let results = dir.join("results.db");
    let queue = Queue::sqlite(&db).await.unwrap();
    queue.push_all("orphans", 0..4_u64).await.unwrap();
    // The victim claims 2 tasks (2 pools) and sleeps in them far longer than the test.
    let mut victim = Worker::spawn(db.to_str().unwrap(), "orphans", &results, 2, 600_000, 5, 0);
    eventually("the victim holds 2 tasks", || async {
        queue.counts("orphans").await.unwrap().claimed == 2
    })
    .await;
    victim.child.kill().unwrap(); // SIGKILL
    victim.child.wait().unwrap();
    let killed_at = Instant::now();
    assert_eq!(
        queue.counts("orphans").await.unwrap().claimed,
        2,
        "the dead instance's tasks stay claimed"
    );
    let rescuer = Worker::spawn(db.to_str().unwrap(), "orphans", &results, 2, 1, 5, 4);
    assert!(rescuer.wait(Duration::from_secs(60)).success());
    let (rows, distinct, _) = results_of(&results);
    assert_eq!(
        (rows, distinct),
        (4, 4),
        "all four done once, the victim's two re-run"
    );
    let took = killed_at.elapsed();
    println!("    the victim's tasks were done {took:.1?} after the kill (orphan timeout 5 s)");
    // Heartbeats are stored in whole seconds and the victim's last one was up to a third of the
    // timeout before the kill: the re-run comes between about 2.3 s and 5 s after it.
    assert!(
        took >= Duration::from_secs(2),
        "re-run before the orphan timeout: {took:?}"
    );
    assert_eq!(queue.counts("orphans").await.unwrap().done, 4);
    let _ = std::fs::remove_dir_all(dir);
}

/// Also the regression test for pushing more than ~8 000 tasks at once to Redis (apalis-redis
/// 1.0 then fails every fetch: see `redis::promote`).
#[testkit::test]
async fn redis_three_workers_share_10000_tasks_and_survive_a_sigkill() {
    let dir = temp_dir("redis-fleet");
    three_workers_and_a_sigkill(&redis_url(), &dir).await;
}

#[testkit::test]
async fn postgres_three_workers_share_10000_tasks_and_survive_a_sigkill() {
    let dir = temp_dir("pg-fleet");
    three_workers_and_a_sigkill(&crate::postgres_server::postgres_url(), &dir).await;
}

/// 3 worker processes, 10 000 tasks, one SIGKILLed once a third is done: nothing lost, at most
/// the victim's 2 tasks done twice.
async fn three_workers_and_a_sigkill(url: &str, dir: &std::path::Path) {
    let url = url.to_owned();
    let results = dir.join("results.db");
    let queue = open(&url).await;
    const N: u64 = 10_000;
    queue.push_all("fleet", 0..N).await.unwrap();
    let mut victim = Worker::spawn(&url, "fleet", &results, 2, 0, 5, 0);
    let b = Worker::spawn(&url, "fleet", &results, 2, 0, 5, N);
    let c = Worker::spawn(&url, "fleet", &results, 2, 0, 5, N);
    // Kill one mid-run, without warning.
    let victim_pid = victim.child.id() as i64;
    let begun = Instant::now();
    loop {
        let c = queue.counts("fleet").await.unwrap();
        if c.done >= N / 3 {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(80),
            "a third of the tasks not done in 80 s: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("    a third done in {:.1?}", begun.elapsed());
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let killed_at_done = queue.counts("fleet").await.unwrap().done;
    assert!(b.wait(Duration::from_secs(100)).success());
    assert!(c.wait(Duration::from_secs(20)).success());
    let (rows, distinct, per_pid) = results_of(&results);
    let lost = N as i64 - distinct;
    let duplicates = rows - distinct;
    println!(
        "    10 000 tasks, 3 workers, one (pid {victim_pid}) SIGKILLed at {killed_at_done} done: \
         lost {lost}, duplicates {duplicates}, per process {per_pid:?}"
    );
    assert_eq!(lost, 0, "every task done");
    let counts = queue.counts("fleet").await.unwrap();
    assert_eq!(counts.done, N, "{counts:?}");
    assert_eq!(
        (counts.pending, counts.claimed, counts.failed),
        (0, 0, 0),
        "{counts:?}"
    );
    // What the victim held when it died is at most its 2 leases' tasks (batch size 1, no
    // prefetch), done at most once more each.
    assert!(duplicates <= 2, "{duplicates} duplicates");
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test]
async fn a_large_due_backlog_on_redis_does_not_stop_fetching() {
    // apalis-redis' fetch moves every due scheduled task with one Lua `unpack`, which fails
    // beyond ~8 000: a producer's large apalis push (or a burst of retries) left every worker
    // failing each fetch. Put 9 000 due tasks in the schedule the way apalis' own push does.
    let url = redis_url();
    let queue = open(&url).await;
    const N: u64 = 9_000;
    queue.push_all("backlog", 0..N).await.unwrap();
    let moved = redis_cli(&[
        "EVAL",
        "local ids = redis.call('LRANGE', KEYS[1], 0, -1) \
         for i = 1, #ids do redis.call('ZADD', KEYS[2], 0, ids[i]) end \
         redis.call('DEL', KEYS[1]) return #ids",
        "2",
        "backlog:active",
        "backlog:scheduled",
    ]);
    assert_eq!(moved, N.to_string());
    let m = manager("q-backlog", 4).await;
    let worker = QueueWorker::builder(&m, &queue, "backlog")
        .poll_interval(Duration::from_millis(2))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    let begun = Instant::now();
    loop {
        let c = queue.counts("backlog").await.unwrap();
        if c.done >= N {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(80),
            "not done in 80 s: {c:?}, {:?}, last error {:?}",
            worker.stats(),
            worker.last_error()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = worker.stop().await;
    println!(
        "    9 000 due tasks done in {:.1?}; restarts {}",
        begun.elapsed(),
        st.restarts
    );
    m.stop().await;
}

/// A job that takes its process down runs at most `max_attempts` times across the fleet, then
/// fails for good. (Before, on Redis, apalis' re-run of a dead worker's tasks counted no
/// attempt: such a task killed every worker that took it, for ever.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn a_job_that_kills_its_process_runs_at_most_max_attempts(kind: Kind) {
    let dir = temp_dir(&format!("abort-{kind:?}"));
    let results = dir.join("results.db");
    let store = match kind {
        Kind::Sqlite => dir.join("queue.db").to_str().unwrap().to_owned(),
        Kind::Redis => redis_url(),
        Kind::Postgres => crate::postgres_server::postgres_url(),
    };
    let queue = open(&store).await;
    let name = format!("abort{kind:?}");
    let id = queue
        .push_with_attempts(&name, ABORT_TASK, 2)
        .await
        .unwrap();
    let begun = Instant::now();
    let mut deaths = 0;
    'fleet: while deaths < 5 {
        // One worker process at a time: it takes the task (after the orphan timeout, once a
        // previous one died holding it) and dies, or finds it failed.
        let mut w = Worker::spawn(&store, &name, &results, 1, 0, 5, 0);
        loop {
            if w.child.try_wait().unwrap().is_some() {
                deaths += 1;
                break;
            }
            let t = queue.task(&name, &id).await.unwrap().unwrap();
            if t.status == "Killed" {
                break 'fleet;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(80),
                "{kind:?}: {t:?} after {deaths} deaths"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let t = queue.task(&name, &id).await.unwrap().unwrap();
    let (runs, _, _) = results_of(&results);
    println!(
        "    {kind:?}: {runs} runs, {deaths} worker processes died, then {:?}",
        t.status
    );
    assert_eq!((runs, deaths), (2, 2), "{kind:?}: {t:?}");
    assert!(
        t.status == "Killed"
            && t.last_result
                .as_deref()
                .unwrap_or("")
                .contains("out of attempts (2)"),
        "{kind:?}: {t:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
