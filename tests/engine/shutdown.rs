//! Stop: waiters and leases are answered, every thread goes, a stuck job cannot hang stop,
//! and the manager starts again.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use leasepool::{LeaseError, LeaseManager};
use testkit::{started, stats_until, threads_named, wait_no_threads};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_leaves_no_thread_behind() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(3)
        .min_pools(2)
        .workers_per_pool(3)
        .name_prefix("sd-threads")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    lease.run(|| ()).await.unwrap();
    // 2 pools x 3 workers + the host thread.
    let deadline = Instant::now() + testkit::EVENTUALLY;
    while threads_named("sd-threads").len() < 7 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        threads_named("sd-threads").len(),
        7,
        "{:?}",
        threads_named("sd-threads")
    );
    assert_eq!(manager.live_worker_threads(), 6);
    manager.stop().await;
    assert_eq!(manager.live_worker_threads(), 0);
    let left =
        tokio::task::spawn_blocking(|| wait_no_threads("sd-threads", Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(left.is_empty(), "threads left after stop: {left:?}");
    // The lease was revoked by stop.
    assert_eq!(lease.run(|| ()).await.unwrap_err(), LeaseError::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_returns_within_shutdown_timeout_when_a_job_never_ends() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("sd-stuck")
        .shutdown_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let _running = lease
        .submit(move || {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(30));
        })
        .unwrap();
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    let begun = Instant::now();
    manager.stop().await;
    let took = begun.elapsed();
    assert!(
        took < Duration::from_secs(1) + Duration::from_secs(2),
        "stop took {took:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "stop did not wait for the job at all: {took:?}"
    );
    // Only the stuck worker is left; the host thread is joined.
    assert_eq!(threads_named("sd-stuck"), vec!["sd-stuck-0-0".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_answers_waiters_and_queued_jobs() {
    let _deadline = testkit::deadline();
    let manager = started("sd-answer", 1, 1).await;
    let lease = manager.acquire().await.unwrap();
    let m = manager.clone();
    let waiter = tokio::spawn(async move { m.acquire().await.map(drop) });
    stats_until(&manager, "waiter", |s| s.waiting == 1).await;

    let (started_tx, started_rx) = mpsc::channel();
    let running = lease
        .submit(move || {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            "finished"
        })
        .unwrap();
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    let queued = lease.submit(|| "must not run").unwrap();

    manager.stop().await;
    assert_eq!(waiter.await.unwrap().unwrap_err(), LeaseError::Stopped);
    assert_eq!(
        running.await.unwrap(),
        "finished",
        "a running job finishes and delivers"
    );
    // It never started: `NeverRan`.
    assert_eq!(queued.await.unwrap_err(), LeaseError::NeverRan);
    assert_eq!(lease.submit(|| ()).unwrap_err(), LeaseError::Stopped);
    let stats = manager.stats().await;
    assert_eq!((stats.total, stats.leased, stats.waiting), (0, 0, 0));
    assert_eq!(stats.counters.revoked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_are_idempotent_and_restartable() {
    let _deadline = testkit::deadline();
    let manager = started("sd-restart", 1, 2).await;
    manager.start().await.unwrap();
    for round in 0..3 {
        let lease = manager.acquire().await.unwrap();
        assert_eq!(lease.run(move || round).await.unwrap(), round);
        lease.release().await;
        manager.stop().await;
        manager.stop().await;
        assert_eq!(manager.acquire().await.unwrap_err(), LeaseError::NotStarted);
        manager.start().await.unwrap();
    }
    let stats = manager.stats().await;
    assert_eq!((stats.total, stats.available), (1, 1));
    manager.stop().await;
    let left =
        tokio::task::spawn_blocking(|| wait_no_threads("sd-restart", Duration::from_secs(5)))
            .await
            .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn dropping_the_last_handle_shuts_down_without_blocking() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(2)
        .min_pools(2)
        .name_prefix("sd-drop")
        .build()
        .unwrap();
    futures_executor::block_on(manager.start()).unwrap();
    assert!(!threads_named("sd-drop").is_empty());
    let begun = Instant::now();
    drop(manager);
    assert!(
        begun.elapsed() < Duration::from_secs(1),
        "Drop must not wait for threads"
    );
    let left = wait_no_threads("sd-drop", Duration::from_secs(10));
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_looks_is_told_to_stop_once_stop_is_overdue() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .shutdown_timeout(Duration::from_millis(200))
        .name_prefix("sd-overdue")
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let job = lease
        .submit(move || {
            let _ = started_tx.send(());
            let begun = Instant::now();
            loop {
                if let Some(why) = leasepool::job_stop_reason() {
                    return Some(why);
                }
                if begun.elapsed() > Duration::from_secs(30) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .unwrap();
    started_rx.recv().unwrap();
    // Only revoked by `stop`, not expired: the job may go on until stop is overdue.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(leasepool::job_stop_reason(), None);
    let begun = Instant::now();
    m.stop().await;
    let took = begun.elapsed();
    assert_eq!(job.await, Ok(Some(LeaseError::Stopped)));
    assert!(
        took >= Duration::from_millis(150),
        "stop waited for the job first: {took:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the job ended when told, and stop with it: {took:?}"
    );
    assert!(
        testkit::wait_no_threads("sd-overdue", Duration::from_secs(5)).is_empty(),
        "no thread left"
    );
    drop(lease);
}
