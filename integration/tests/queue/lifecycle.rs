//! start and stop: graceful hand-back, churn, a stopped manager, a start during a stop.

#![allow(unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

use crate::fixtures::*;

#[testkit::test(each = crate::fixtures::STORES)]
async fn stop_lets_running_tasks_finish_and_hands_back_the_rest(kind: Kind) {
    let (queue, dir) = queue_for(kind, "stop").await;
    let m = manager("q-stop", 2).await;
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = Arc::clone(&started);
    let gate = testkit::Gate::new();
    let g = gate.clone();
    let worker = QueueWorker::builder(&m, &queue, "stop")
        .prefetch(1)
        .shutdown_timeout(Duration::from_millis(400))
        .poll_interval(Duration::from_millis(5))
        .build_blocking(move |n: u64| -> Result<(), String> {
            s2.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                std::thread::sleep(Duration::from_millis(150)); // finishes within the timeout
            } else {
                g.wait(); // outruns it
            }
            Ok(())
        })
        .unwrap();
    let ids = [
        queue.push("stop", 0_u64).await.unwrap(),
        queue.push("stop", 1_u64).await.unwrap(),
        queue.push("stop", 2_u64).await.unwrap(),
    ];
    worker.start().unwrap();
    eventually("2 running, 1 waiting", || async {
        let s = worker.stats();
        s.running == 2 && s.waiting == 1
    })
    .await;
    let begun = Instant::now();
    let st = worker.stop().await;
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(8), "stop took {took:?}");
    assert_eq!((st.done, st.handed_back), (1, 2), "{st:?}");
    assert!(!worker.is_running());
    let t0 = queue.task("stop", &ids[0]).await.unwrap().unwrap();
    assert_eq!(t0.status, "Done");
    for id in &ids[1..] {
        let t = queue.task("stop", id).await.unwrap().unwrap();
        assert_eq!(
            (t.status.as_str(), t.attempts, t.locked_by.as_deref()),
            ("Pending", 0, None),
            "{t:?}"
        );
    }
    gate.open();
    // The handed-back tasks run on the next start.
    worker.start().unwrap();
    eventually("all done", || async {
        queue.counts("stop").await.unwrap().done == 3
    })
    .await;
    worker.stop().await;
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn start_then_stop_at_once_is_prompt_and_leaves_nothing_claimed(kind: Kind) {
    // `stop` right after a restart once found the last run's stopped apalis worker, took it
    // for this run's, and waited out its timeouts while the new one claimed and handed back
    // hundreds of tasks.
    let (queue, dir) = queue_for(kind, "once").await;
    queue.push_all("once", 0..30_u64).await.unwrap();
    let m = manager("q-once", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "once")
        .poll_interval(Duration::from_millis(5))
        .shutdown_timeout(Duration::from_secs(1))
        .build_blocking(counting_job(&seen, 100))
        .unwrap();
    worker.start().unwrap();
    eventually("one done", || async { worker.stats().done >= 1 }).await;
    worker.stop().await;
    for round in 0..3 {
        let before = worker.stats();
        worker.start().unwrap();
        let begun = Instant::now();
        let after = worker.stop().await;
        let took = begun.elapsed();
        let c = queue.counts("once").await.unwrap();
        assert!(
            took < Duration::from_millis(1500),
            "round {round}: stop took {took:?}"
        );
        assert!(
            after.claimed - before.claimed <= 3,
            "round {round}: {} claims in a start+stop",
            after.claimed - before.claimed
        );
        assert_eq!(
            c.claimed, 0,
            "round {round}: tasks still claimed after stop: {c:?}"
        );
    }
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn a_stopped_manager_pauses_claiming_and_loses_nothing(kind: Kind) {
    // Its manager stopped under it, a worker once claimed and put back tasks in a busy loop,
    // and on SQLite a put-back acknowledged after the stop's hand-back stayed locked for good.
    let (queue, dir) = queue_for(kind, "mstop").await;
    const N: u64 = 100;
    queue.push_all("mstop", 0..N).await.unwrap();
    let m = manager("q-mstop", 2).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "mstop")
        .prefetch(1)
        .poll_interval(Duration::from_millis(5))
        .shutdown_timeout(Duration::from_secs(2))
        .build_blocking(counting_job(&seen, 20))
        .unwrap();
    worker.start().unwrap();
    eventually("20 done", || async { worker.stats().done >= 20 }).await;
    m.stop().await;
    let before = worker.stats();
    let cpu = cpu_over(Duration::from_secs(3)).await;
    let after = worker.stats();
    assert!(
        cpu < 15.0,
        "{cpu:.1} % of a core while its manager is stopped"
    );
    assert!(
        after.claimed - before.claimed <= 12,
        "{} claims in 3 s with the manager stopped",
        after.claimed - before.claimed
    );
    let begun = Instant::now();
    worker.stop().await;
    assert!(begun.elapsed() < Duration::from_secs(8));
    // A new manager and worker finish every task; none failed, none lost.
    let m2 = manager("q-mstop2", 2).await;
    let w2 = QueueWorker::builder(&m2, &queue, "mstop")
        .poll_interval(Duration::from_millis(5))
        .build_blocking(counting_job(&seen, 0))
        .unwrap();
    w2.start().unwrap();
    testkit::until(
        "every task done by the new worker",
        || async { queue.counts("mstop").await.unwrap() },
        |c| c.done >= N,
    )
    .await;
    w2.stop().await;
    let c = queue.counts("mstop").await.unwrap();
    assert_eq!(
        (c.done, c.failed, c.pending, c.claimed),
        (N, 0, 0, 0),
        "{c:?}"
    );
    assert_eq!(tally(&seen, N).0, 0, "lost tasks");
    m2.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn start_stop_churn_loses_and_repeats_nothing(kind: Kind) {
    let (queue, dir) = queue_for(kind, "churn").await;
    const N: u64 = 300;
    queue.push_all("churn", 0..N).await.unwrap();
    let m = manager("q-churn", 3).await;
    let seen: Seen = Arc::default();
    let worker = QueueWorker::builder(&m, &queue, "churn")
        .prefetch(2)
        .poll_interval(Duration::from_millis(2))
        .shutdown_timeout(Duration::from_secs(3))
        .build_blocking(counting_job(&seen, 3))
        .unwrap();
    let mut max_stop = Duration::ZERO;
    for round in 0..400_u64 {
        worker.start().unwrap();
        tokio::time::sleep(Duration::from_millis(round * 7 % 60)).await;
        let begun = Instant::now();
        let st = worker.stop().await;
        max_stop = max_stop.max(begun.elapsed());
        let c = queue.counts("churn").await.unwrap();
        assert_eq!(
            (st.running, st.waiting, c.claimed),
            (0, 0, 0),
            "round {round}: {st:?} {c:?}"
        );
        if c.done >= N {
            break;
        }
    }
    let (lost, repeated) = tally(&seen, N);
    println!("    {kind:?}: longest stop {max_stop:?}, lost {lost}, run twice {repeated}");
    assert!(
        max_stop < Duration::from_secs(2),
        "a stop took {max_stop:?}"
    );
    assert_eq!((lost, repeated), (0, 0));
    let c = queue.counts("churn").await.unwrap();
    assert_eq!(
        (c.done, c.pending, c.claimed, c.failed),
        (N, 0, 0, 0),
        "{c:?}"
    );
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn start_while_a_stop_is_under_way_is_refused(kind: Kind) {
    // A start that slipped in while a stop ran got a second supervisor beside the first:
    // tasks were stranded locked, others ran twice.
    let (queue, dir) = queue_for(kind, "race").await;
    const N: u64 = 200;
    queue.push_all("race", 0..N).await.unwrap();
    let m = manager("q-race", 2).await;
    let seen: Seen = Arc::default();
    let worker = Arc::new(
        QueueWorker::builder(&m, &queue, "race")
            .poll_interval(Duration::from_millis(2))
            .shutdown_timeout(Duration::from_secs(3))
            .build_blocking(counting_job(&seen, 20))
            .unwrap(),
    );
    let mut refused = 0;
    for round in 0..40_u64 {
        worker.start().unwrap();
        tokio::time::sleep(Duration::from_millis(10 + round % 20)).await;
        let w = Arc::clone(&worker);
        let stop = actix_rt::spawn(async move { w.stop().await });
        tokio::time::sleep(Duration::from_millis(round % 5)).await;
        match worker.start() {
            Err(QueueError::Stopping(_)) => refused += 1,
            // The stop had already finished: this start is a normal one.
            Ok(()) => {}
            Err(e) => panic!("round {round}: {e}"),
        }
        stop.await.unwrap();
        worker.stop().await;
        let c = queue.counts("race").await.unwrap();
        assert_eq!(
            c.claimed, 0,
            "round {round}: claimed after both stops: {c:?}"
        );
        if c.done >= N {
            break;
        }
    }
    assert!(
        refused > 0,
        "no start was ever refused: the race was not exercised"
    );
    // Whatever is left runs on one more worker.
    worker.start().unwrap();
    testkit::until(
        "all done",
        || async { queue.counts("race").await.unwrap() },
        |c| c.done >= N,
    )
    .await;
    let st = worker.stop().await;
    assert_eq!(st.restarts, 0, "{st:?}");
    let (lost, repeated) = tally(&seen, N);
    assert_eq!((lost, repeated), (0, 0));
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
