//! Put-backs and hand-backs cost no attempt, whoever runs the task next and whatever worker
//! died between the acknowledgement and the give-back.

#![allow(unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

use crate::fixtures::*;

/// Redis: the mark a deferral leaves before apalis acknowledges it (its attempt is owed back)
/// must not outlive an acknowledgement that never landed (the worker was killed, its apalis
/// worker failed or was aborted): a task allowed two attempts whose meta hash carries such a
/// mark — at an attempt above the count stored — runs twice, not three times, and the mark is
/// gone once it ran.
#[testkit::test]
async fn a_stale_owed_mark_gives_no_free_attempt() {
    let queue = open(&redis_url()).await;
    let id = queue
        .push_with_attempts("stale-mark", 1_u64, 2)
        .await
        .unwrap();
    let meta = format!("stale-mark:meta:{id}");
    assert_eq!(redis_cli(&["HSET", &meta, "leasepool_owed:1", "1"]), "1");
    let m = manager("q-stale", 1).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let worker = QueueWorker::builder(&m, &queue, "stale-mark")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |_: u64| -> Result<(), String> {
            r.fetch_add(1, Ordering::SeqCst);
            Err("fails every time".into())
        })
        .unwrap();
    worker.start().unwrap();
    // apalis-redis retries after `attempt` seconds.
    testkit::until(
        "the task out of attempts",
        || async { queue.counts("stale-mark").await.unwrap() },
        |c| c.failed == 1,
    )
    .await;
    let t = queue.task("stale-mark", &id).await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "{t:?}");
    assert_eq!(t.attempts, 2, "{t:?}");
    assert_eq!(redis_cli(&["HEXISTS", &meta, "leasepool_owed:1"]), "0");
    worker.stop().await;
    m.stop().await;
}

/// Redis: a worker whose task was taken from it (apalis re-enqueued it as an orphan: the
/// worker's heartbeat looked stale, a pause, a partition) and that hands it back later marks no
/// attempt as owed — the task may already have run elsewhere, and such a mark would give it a
/// run beyond `max_attempts`. A task allowed two attempts runs twice.
#[testkit::test]
async fn a_hand_back_of_a_task_taken_from_its_worker_marks_nothing() {
    let queue = open(&redis_url()).await;
    let busy = manager("q-moved-w", 1).await;
    let held = busy.acquire().await.unwrap();
    let w = QueueWorker::builder(&busy, &queue, "moved")
        .instance_name("w-moved")
        .prefetch(1)
        .lease_wait(Duration::from_secs(60))
        .poll_interval(Duration::from_millis(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    let id = queue.push_with_attempts("moved", 1_u64, 2).await.unwrap();
    w.start().unwrap();
    eventually("W holds the task", || async { w.stats().waiting == 1 }).await;
    // What apalis' orphan re-run does: out of W's in-flight set, back to the active list.
    let moved = redis_cli(&[
        "EVAL",
        "if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then \
           redis.call('RPUSH', KEYS[2], ARGV[1]) return 1 end return 0",
        "2",
        "moved:inflight:w-moved",
        "moved:active",
        &id,
    ]);
    assert_eq!(moved, "1");
    let free = manager("q-moved-x", 1).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    let x = QueueWorker::builder(&free, &queue, "moved")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |_: u64| -> Result<(), String> {
            r.fetch_add(1, Ordering::SeqCst);
            Err("fails every time".into())
        })
        .unwrap();
    x.start().unwrap();
    eventually("X's first run acknowledged", || async {
        queue.task("moved", &id).await.unwrap().unwrap().attempts >= 1
    })
    .await;
    // W stops: it hands its waiting copy back (a deferral).
    let st = w.stop().await;
    assert_eq!(st.handed_back, 1, "{st:?}");
    testkit::until(
        "the task out of attempts",
        || async { queue.counts("moved").await.unwrap() },
        |c| c.failed == 1,
    )
    .await;
    let t = queue.task("moved", &id).await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2, "{t:?}");
    assert!(
        !redis_cli(&["HKEYS", &format!("moved:meta:{id}")]).contains("leasepool_owed"),
        "a mark was left"
    );
    drop(held);
    x.stop().await;
    busy.stop().await;
    free.stop().await;
}

/// A put-back whose worker has not given its attempt back yet (it lost the race, or died) and
/// that another worker runs first still costs no attempt: a task allowed one attempt runs and is
/// done. On Redis the deferred task is due again within a second and anyone may take it (the
/// attempt is owed in the task); on SQLite the row stays locked until its worker gives it back.
/// (Before the fix, Redis killed the task unrun: "out of attempts (1)".)
#[testkit::test(each = crate::fixtures::STORES)]
async fn a_deferral_taken_first_by_another_worker_costs_no_attempt(kind: Kind) {
    let (queue, dir) = queue_for(kind, "owed").await;
    // Worker A: its only pool is held here, so its prefetched task is put back after 100 ms,
    // and it gives deferrals back only after 3 s.
    let busy = manager("q-owed-a", 1).await;
    let held = busy.acquire().await.unwrap();
    // A polls slowly: once its give-back frees the task (SQLite) B, polling every 2 ms, takes
    // it rather than A again (which would put it back, and hold it, once more).
    let a = QueueWorker::builder(&busy, &queue, "owed")
        .prefetch(1)
        .lease_wait(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(250))
        .hold_deferrals(Duration::from_secs(3))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    let id = queue.push_with_attempts("owed", 7_u64, 1).await.unwrap();
    a.start().unwrap();
    eventually("A put the task back", || async { a.stats().put_back >= 1 }).await;
    let free = manager("q-owed-b", 1).await;
    let b = QueueWorker::builder(&free, &queue, "owed")
        .poll_interval(Duration::from_millis(2))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    b.start().unwrap();
    testkit::until(
        "the task settled",
        || async { queue.counts("owed").await.unwrap() },
        |c| c.pending == 0 && c.claimed == 0,
    )
    .await;
    let t = queue.task("owed", &id).await.unwrap().unwrap();
    assert_eq!(
        t.status,
        "Done",
        "{t:?}; A {:?}, B {:?}",
        a.stats(),
        b.stats()
    );
    assert_eq!(t.attempts, 1, "one run, the put-backs not counted: {t:?}");
    assert_eq!((a.stats().failed, b.stats().failed), (0, 0));
    // A's late give-back finds the task done and changes nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = queue.task("owed", &id).await.unwrap().unwrap();
    assert_eq!(
        (later.status.as_str(), later.attempts),
        ("Done", 1),
        "{later:?}"
    );
    assert_eq!(queue.counts("owed").await.unwrap().done, 1);
    drop(held);
    a.stop().await;
    b.stop().await;
    busy.stop().await;
    free.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// SQLite: a worker that dies after apalis wrote its deferral (`Pending`, still locked by it)
/// but before it unlocked the row does not strand the task: apalis' fetch takes only unlocked
/// rows and its orphan re-run only claimed or running ones, so the other workers give such rows
/// back once the dead worker's heartbeat is older than the orphan timeout. (Before the fix the
/// task was never run and counted as pending forever.)
#[testkit::test]
async fn a_dead_workers_deferred_task_runs_again() {
    let dir = temp_dir("dead-deferral");
    let db = dir.join("q.db");
    let queue = open(db.to_str().unwrap()).await;
    let id = queue.push("ghost", 5_u64).await.unwrap();
    {
        // What a worker that died in that window leaves behind.
        let c = rusqlite::Connection::open(&db).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c.execute(
            "INSERT INTO Workers (id, worker_type, storage_name, layers, last_seen) \
             VALUES ('ghost-worker', 'ghost', 'SqliteStorage', '', strftime('%s', 'now') - 3600)",
            [],
        )
        .unwrap();
        let changed = c
            .execute(
                "UPDATE Jobs SET status = 'Pending', lock_by = 'ghost-worker', \
                 lock_at = strftime('%s', 'now') - 3600, attempts = 1 WHERE id = ?1",
                [&id],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let m = manager("q-ghost", 1).await;
    let worker = QueueWorker::builder(&m, &queue, "ghost")
        .poll_interval(Duration::from_millis(5))
        .orphan_timeout(Duration::from_secs(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    eventually("the stranded task done", || async {
        queue.counts("ghost").await.unwrap().done == 1
    })
    .await;
    let t = queue.task("ghost", &id).await.unwrap().unwrap();
    assert_eq!((t.status.as_str(), t.attempts), ("Done", 1), "{t:?}");
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
