//! How a run maps to the queue: done, failed, retried, killed, undecodable; counts that add up;
//! process jobs that crash or run away.

#![allow(unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::process::ProcessJob as _;
use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

use crate::fixtures::*;

#[testkit::test(each = crate::fixtures::STORES)]
async fn outcomes_map_to_the_queue(kind: Kind) {
    let (queue, dir) = queue_for(kind, "outcomes").await;
    let m = manager("q-out", 2).await;
    let worker = QueueWorker::builder(&m, &queue, "outcomes")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |job: String| -> Result<(), String> {
            match job.as_str() {
                "panic" => panic!("job panicked on purpose"),
                "error" => Err("job said no".into()),
                _ => Ok(()),
            }
        })
        .unwrap();
    let panics = queue
        .push_with_attempts("outcomes", "panic".to_string(), 2)
        .await
        .unwrap();
    let errors = queue
        .push_with_attempts("outcomes", "error".to_string(), 3)
        .await
        .unwrap();
    let fine = queue.push("outcomes", "fine".to_string()).await.unwrap();
    worker.start().unwrap();
    // Redis retries after `attempt` seconds: the "error" task's three attempts take 3 s.
    testkit::until(
        "everything settled",
        || async { queue.counts("outcomes").await.unwrap() },
        |c| c.pending == 0 && c.claimed == 0,
    )
    .await;
    // Out of attempts: `Failed` on SQLite, `Killed` (the dead set) on Redis.
    let spent = |status: &str| matches!(status, "Failed" | "Killed");
    let p = queue.task("outcomes", &panics).await.unwrap().unwrap();
    assert!(spent(&p.status) && p.attempts == 2, "{p:?}");
    assert!(
        p.last_result
            .as_deref()
            .unwrap_or("")
            .contains("job panicked on purpose"),
        "{p:?}"
    );
    let e = queue.task("outcomes", &errors).await.unwrap().unwrap();
    assert!(spent(&e.status) && e.attempts == 3, "{e:?}");
    assert!(
        e.last_result
            .as_deref()
            .unwrap_or("")
            .contains("job said no"),
        "{e:?}"
    );
    let f = queue.task("outcomes", &fine).await.unwrap().unwrap();
    assert_eq!((f.status.as_str(), f.attempts), ("Done", 1), "{f:?}");
    let st = worker.stop().await;
    assert_eq!((st.done, st.failed, st.retried), (1, 5, 0), "{st:?}");
    let c = queue.counts("outcomes").await.unwrap();
    assert_eq!((c.done, c.failed), (1, 2), "{c:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// `counts()` is one snapshot: while tasks are claimed, fail, wait for their retry and finish,
/// every reading adds up to the tasks pushed. (Read key by key, Redis' counts missed a task
/// acknowledged between two reads: a CI run saw a queue "settled" with a task still scheduled.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn counts_add_up_while_tasks_move(kind: Kind) {
    const N: u64 = 60;
    let (queue, dir) = queue_for(kind, "snapshot").await;
    let m = manager("q-snap", 2).await;
    let tried = Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let worker = QueueWorker::builder(&m, &queue, "snapshot")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |n: u64| -> Result<(), String> {
            // Each task fails its first attempt, so every task also moves through the retries.
            if tried.lock().unwrap().insert(n) {
                Err(format!("task {n}: again, please"))
            } else {
                Ok(())
            }
        })
        .unwrap();
    queue.push_all("snapshot", 0..N).await.unwrap();
    worker.start().unwrap();
    let begun = Instant::now();
    let mut readings = 0;
    loop {
        let c = queue.counts("snapshot").await.unwrap();
        readings += 1;
        assert_eq!(c.total(), N, "reading {readings} does not add up: {c:?}");
        if c.done == N {
            break;
        }
        assert!(
            begun.elapsed() < testkit::EVENTUALLY * 3,
            "not done after {:?}: {c:?}",
            begun.elapsed()
        );
    }
    println!("    {kind:?}: {readings} readings, each adding up to {N}");
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn a_task_killed_at_hard_expiry_is_retried(kind: Kind) {
    // Process backend: a runaway attempt is killed when its lease is revoked (`Expired`); the
    // queue runs it again.
    let (queue, dir) = queue_for(kind, "expiry").await;
    let m = LeaseManager::builder()
        .backend(leasepool::Backend::Process)
        .process_jobs(process_jobs())
        .name_prefix("q-expiry")
        .max_pools(1)
        .workers_per_pool(1)
        .lease_grace(Duration::from_millis(50))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, RunawayOnce::NAME)
        .poll_interval(Duration::from_millis(5))
        .lease_for(Duration::from_millis(300))
        .build_calls::<RunawayOnce>()
        .unwrap();
    let id = queue
        .push(
            RunawayOnce::NAME,
            RunawayOnce {
                marker: dir.join("ran"),
            },
        )
        .await
        .unwrap();
    worker.start().unwrap();
    testkit::until(
        "the runaway task done on its second attempt",
        || async { queue.task(RunawayOnce::NAME, &id).await.unwrap().unwrap() },
        |t| t.status == "Done",
    )
    .await;
    let t = queue.task(RunawayOnce::NAME, &id).await.unwrap().unwrap();
    assert_eq!(t.attempts, 2, "{t:?}");
    let st = worker.stop().await;
    assert_eq!((st.retried, st.done, st.failed), (1, 1, 0), "{st:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn process_jobs_from_the_queue_retry_a_crash_in_a_child(kind: Kind) {
    let (queue, dir) = queue_for(kind, "proc").await;
    let m = LeaseManager::builder()
        .backend(leasepool::Backend::Process)
        .process_jobs(process_jobs())
        .name_prefix("q-proc")
        .max_pools(2)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, CrashOnce::NAME)
        .poll_interval(Duration::from_millis(5))
        .build_calls::<CrashOnce>()
        .unwrap();
    let crashes = queue
        .push(
            CrashOnce::NAME,
            CrashOnce {
                marker: dir.join("crashed"),
                n: 1,
            },
        )
        .await
        .unwrap();
    let fine = queue
        .push(
            CrashOnce::NAME,
            CrashOnce {
                marker: dir.join("missing-dir/never"),
                n: 2,
            },
        )
        .await
        .unwrap();
    worker.start().unwrap();
    eventually("both done", || async {
        queue.counts(CrashOnce::NAME).await.unwrap().done == 2
    })
    .await;
    let c = queue
        .task(CrashOnce::NAME, &crashes)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.status.as_str(), c.attempts),
        ("Done", 2),
        "crashed once, then done: {c:?}"
    );
    let f = queue.task(CrashOnce::NAME, &fine).await.unwrap().unwrap();
    assert_eq!((f.status.as_str(), f.attempts), ("Done", 1), "{f:?}");
    let st = worker.stop().await;
    assert_eq!((st.done, st.retried, st.failed), (2, 1, 0), "{st:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn a_task_that_does_not_decode_fails_alone(kind: Kind) {
    // apalis decoded payloads before our service: one bad task failed every fetch, and each
    // replacement worker met it first again — the whole queue stalled.
    let (queue, dir) = queue_for(kind, "decode").await;
    queue.push_all("decode", 0..5_u64).await.unwrap();
    let bad = queue
        .push_with_attempts("decode", "not a number".to_string(), 2)
        .await
        .unwrap();
    queue.push_all("decode", 5..10_u64).await.unwrap();
    let m = manager("q-decode", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "decode")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(counting_job(&seen, 0))
        .unwrap();
    worker.start().unwrap();
    testkit::until(
        "the ten numbers done and the string failed",
        || async { queue.counts("decode").await.unwrap() },
        |c| c.done == 10 && c.failed == 1,
    )
    .await;
    let t = queue.task("decode", &bad).await.unwrap().unwrap();
    assert!(
        t.last_result
            .as_deref()
            .unwrap_or("")
            .contains("payload is not a u64"),
        "{t:?}"
    );
    let st = worker.stop().await;
    assert_eq!((st.restarts, st.failed, st.done), (0, 1, 10), "{st:?}");
    assert_eq!(tally(&seen, 10), (0, 0));
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A process job whose output's `Serialize` panics fails for good at its first attempt, with a
/// text that says so. (Before, the child crashed each time: all its attempts in as many
/// children, each counted `retried`, and the stored error said "lost … before the job started"
/// though it ran.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn a_process_job_whose_output_cannot_be_encoded_fails_for_good(kind: Kind) {
    let (queue, dir) = queue_for(kind, "encode").await;
    let m = LeaseManager::builder()
        .backend(leasepool::Backend::Process)
        .process_jobs(process_jobs())
        .name_prefix("q-encode")
        .max_pools(1)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, PanicOnEncode::NAME)
        .poll_interval(Duration::from_millis(5))
        .build_calls::<PanicOnEncode>()
        .unwrap();
    let id = queue
        .push_with_attempts(PanicOnEncode::NAME, PanicOnEncode, 5)
        .await
        .unwrap();
    worker.start().unwrap();
    let t = testkit::until(
        "the task failed for good",
        || async { queue.task(PanicOnEncode::NAME, &id).await.unwrap().unwrap() },
        |t| t.status == "Killed",
    )
    .await;
    let st = worker.stop().await;
    m.stop().await;
    assert_eq!(t.attempts, 1, "{kind:?}: {t:?}");
    let result = t.last_result.unwrap_or_default();
    assert!(
        result.contains("encoding its output panicked"),
        "{kind:?}: {result}"
    );
    assert_eq!((st.failed, st.retried), (1, 0), "{kind:?}: {st:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `build_with` runs each task with its worker thread's state (a connection per worker, say).
#[testkit::test(each = crate::fixtures::STORES)]
async fn jobs_run_with_their_workers_state(kind: Kind) {
    let (queue, dir) = queue_for(kind, "state").await;
    let m = LeaseManager::builder()
        .name_prefix("q-state")
        .max_pools(2)
        .workers_per_pool(1)
        .worker_state(|| (std::thread::current().id(), 0_u64))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let worker = QueueWorker::builder(&m, &queue, "state")
        .poll_interval(Duration::from_millis(5))
        .build_with(
            move |state: &mut (std::thread::ThreadId, u64), n: u64| -> Result<(), String> {
                // The state was built on this very thread, and it persists between tasks.
                if state.0 != std::thread::current().id() {
                    return Err("another thread's state".into());
                }
                state.1 += 1;
                s2.lock().unwrap().push((n, state.1));
                Ok(())
            },
        )
        .unwrap();
    queue.push_all("state", 0..20_u64).await.unwrap();
    worker.start().unwrap();
    eventually("all done", || async { worker.stats().done == 20 }).await;
    let st = worker.stop().await;
    m.stop().await;
    assert_eq!(st.failed, 0, "{kind:?}: {st:?}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20);
    // Two worker threads: their counters add up to 20 and at least one counted past 1.
    assert!(seen.iter().any(|(_, count)| *count > 1), "{seen:?}");
    let _ = std::fs::remove_dir_all(dir);
}
