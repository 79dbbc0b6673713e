//! Claiming by capacity: within the manager's free leases plus the prefetch, nothing while it
//! is busy, overload puts back, an idle worker still hears new tasks.

#![allow(unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

use crate::fixtures::*;

#[testkit::test(each = crate::fixtures::STORES)]
async fn claims_stay_within_capacity_plus_prefetch(kind: Kind) {
    let (queue, dir) = queue_for(kind, "cap").await;
    queue.push_all("cap", 0..20_u64).await.unwrap();
    let m = manager("q-cap", 2).await;
    let gate = testkit::Gate::new();
    let worker = QueueWorker::builder(&m, &queue, "cap")
        .prefetch(1)
        .poll_interval(Duration::from_millis(5))
        .build_blocking(gated(&gate))
        .unwrap();
    worker.start().unwrap();
    eventually("two tasks running", || async {
        worker.stats().running == 2
    })
    .await;
    // Let it try to claim more for a while: it must stop at 2 running + 1 prefetched.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = worker.stats();
    let c = queue.counts("cap").await.unwrap();
    assert_eq!((s.claimed, s.running, s.waiting), (3, 2, 1), "{s:?}");
    assert_eq!((c.claimed, c.pending), (3, 17), "{c:?}");
    gate.open();
    eventually("all done", || async { worker.stats().done == 20 }).await;
    let s = worker.stop().await;
    assert_eq!(
        (s.claimed, s.done, s.failed, s.put_back),
        (20, 20, 0, 0),
        "{s:?}"
    );
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn a_busy_manager_claims_nothing_and_leaves_tasks_for_others(kind: Kind) {
    let (queue, dir) = queue_for(kind, "busy").await;
    let m = manager("q-busy", 1).await;
    let held = m.acquire().owner("someone else").await.unwrap();
    queue.push_all("busy", 0..3_u64).await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, "busy")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(worker.stats().claimed, 0, "claimed with no lease free");
    assert_eq!(queue.counts("busy").await.unwrap().pending, 3);
    held.release().await;
    eventually("all done", || async { worker.stats().done == 3 }).await;
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn overload_puts_the_task_back_without_counting_an_attempt(kind: Kind) {
    // Prefetch 1 on a 1-pool manager whose pool someone else takes: the prefetched task waits
    // `lease_wait`, then goes back for anyone with its attempts unchanged.
    let (queue, dir) = queue_for(kind, "over").await;
    let m = manager("q-over", 1).await;
    let gate = testkit::Gate::new();
    let g = gate.clone();
    let worker = QueueWorker::builder(&m, &queue, "over")
        .prefetch(1)
        .lease_wait(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |n: u64| -> Result<(), String> {
            if n == 0 {
                g.wait();
            }
            Ok(())
        })
        .unwrap();
    let first = queue.push("over", 0_u64).await.unwrap();
    worker.start().unwrap();
    eventually("task 0 running", || async { worker.stats().running == 1 }).await;
    let second = queue.push("over", 1_u64).await.unwrap();
    eventually("task 1 put back", || async { worker.stats().put_back >= 1 }).await;
    testkit::until(
        "task 1 unlocked",
        || async {
            (
                queue.task("over", &second).await.unwrap().unwrap(),
                worker.stats(),
            )
        },
        |(t, _)| t.locked_by.is_none() && t.status == "Pending",
    )
    .await;
    let t = queue.task("over", &second).await.unwrap().unwrap();
    assert_eq!(t.attempts, 0, "a put-back is not an attempt: {t:?}");
    gate.open();
    eventually("both done", || async {
        queue.counts("over").await.unwrap().done == 2
    })
    .await;
    assert_eq!(
        queue.task("over", &first).await.unwrap().unwrap().attempts,
        1
    );
    assert_eq!(
        queue.task("over", &second).await.unwrap().unwrap().attempts,
        1
    );
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn an_idle_worker_takes_tasks_pushed_later(kind: Kind) {
    // Heartbeats every 20 s: nothing but the poll interval may wake an idle worker. A poll
    // interval as short as a fetch makes apalis' interval tick often fire while a fetch is
    // in flight (the case where its strategy armed no timer and the worker went deaf).
    let (queue, dir) = queue_for(kind, "idle").await;
    let m = manager("q-idle", 2).await;
    let worker = QueueWorker::builder(&m, &queue, "idle")
        .poll_interval(Duration::from_millis(1))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    for round in 1..=10_u64 {
        // Idle long enough for many empty fetches, then one task.
        tokio::time::sleep(Duration::from_millis(300)).await;
        queue.push("idle", round).await.unwrap();
        let pushed = Instant::now();
        while worker.stats().done < round {
            assert!(
                pushed.elapsed() < Duration::from_secs(5),
                "round {round}: a task pushed to an idle worker was not taken within 5 s (poll interval 1 ms)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
