//! Jobs: parallelism inside a lease, draining release, submit, cancel safety, panic isolation.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use leasepool::{Handle, LeaseError, LeaseManager};
use testkit::{started, stats_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_jobs_run_in_parallel_in_one_four_worker_lease() {
    let _deadline = testkit::deadline();
    let manager = started("par", 1, 4).await;
    let lease = manager.acquire().await.unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..4 {
        let arrived = Arc::clone(&arrived);
        // Each job waits until all four are running at once; run serially they would give up.
        handles.push(
            lease
                .submit(move || {
                    arrived.fetch_add(1, SeqCst);
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while arrived.load(SeqCst) < 4 && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    (
                        arrived.load(SeqCst) == 4,
                        std::thread::current().name().map(str::to_owned),
                    )
                })
                .unwrap(),
        );
    }
    let mut threads = std::collections::HashSet::new();
    for h in handles {
        let (all_four, thread) = h.await.unwrap();
        assert!(all_four, "a job never saw the other three running");
        threads.insert(thread.unwrap());
    }
    assert_eq!(
        threads.len(),
        4,
        "expected four distinct worker threads: {threads:?}"
    );
    assert!(
        threads.iter().all(|t| t.starts_with("par-0-")),
        "{threads:?}"
    );
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_with_a_running_job_drains_before_the_pool_returns() {
    let _deadline = testkit::deadline();
    let manager = started("drain", 1, 1).await;
    let lease = manager.acquire().owner("drainer").await.unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let job = lease
        .submit(move || {
            started_tx.send(()).unwrap();
            go_rx.recv_timeout(Duration::from_secs(30)).is_ok()
        })
        .unwrap();
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    lease.release().await;

    let stats = manager.stats().await;
    assert_eq!(
        (stats.available, stats.leased),
        (0, 1),
        "pool returned while a job runs"
    );
    let info = &stats.leases[0];
    assert!(info.draining);
    assert_eq!(info.in_flight, 1);
    assert_eq!(info.owner.as_deref(), Some("drainer"));
    assert_eq!(
        manager.acquire().no_wait().await.unwrap_err(),
        LeaseError::Unavailable,
        "a draining pool must not be handed out"
    );

    go_tx.send(()).unwrap();
    assert!(
        job.await.unwrap(),
        "the running job delivers its result after release"
    );
    let stats = stats_until(&manager, "pool back", |s| s.available == 1).await;
    assert_eq!(stats.leased, 0);
    assert_eq!(stats.counters.released, 1);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_job_runs_even_if_its_handle_and_lease_are_dropped() {
    let _deadline = testkit::deadline();
    let manager = started("submit-drop", 1, 1).await;
    let lease = manager.acquire().await.unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let flag = Arc::clone(&ran);
    drop(
        lease
            .submit(move || {
                let _ = go_rx.recv_timeout(Duration::from_secs(30));
                flag.store(true, SeqCst);
            })
            .unwrap(),
    );
    drop(lease);
    stats_until(&manager, "draining", |s| {
        s.leases.first().is_some_and(|l| l.draining)
    })
    .await;
    go_tx.send(()).unwrap();
    stats_until(&manager, "drained", |s| s.available == 1 && s.leased == 0).await;
    assert!(ran.load(SeqCst));
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_future_dropped_before_a_worker_starts_it_skips_the_job() {
    let _deadline = testkit::deadline();
    let manager = started("skip", 1, 1).await;
    let lease = manager.acquire().await.unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let blocker = lease
        .submit(move || {
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
        })
        .unwrap();
    let skipped_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&skipped_ran);
    {
        let mut fut = Box::pin(lease.run(move || flag.store(true, SeqCst)));
        // One poll sends the job; it queues behind the blocker.
        assert!((&mut fut).now_or_never().is_none());
        assert_eq!(lease.in_flight(), 2);
    }
    go_tx.send(()).unwrap();
    blocker.await.unwrap();
    // A job sent after the skipped one proves the worker has passed it.
    lease.run(|| ()).await.unwrap();
    assert!(
        !skipped_ran.load(SeqCst),
        "a cancelled run() still executed"
    );
    assert_eq!(lease.in_flight(), 0);
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_fails_alone_and_the_worker_restarts_with_fresh_state() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("panic")
        .worker_state(|| 0u32)
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    let thread_of = || std::thread::current().name().map(str::to_owned);
    for expected in 1..=3 {
        assert_eq!(
            lease
                .run_with(|n| {
                    *n += 1;
                    *n
                })
                .await
                .unwrap(),
            expected
        );
    }
    let before = lease.run(thread_of).await.unwrap();
    let err = lease
        .run(|| -> u32 { panic!("boom {}", 7) })
        .await
        .unwrap_err();
    assert_eq!(err, LeaseError::Panicked("boom 7".to_owned()));
    assert_eq!(
        lease
            .run_with(|n| {
                *n += 1;
                *n
            })
            .await
            .unwrap(),
        1,
        "state must be rebuilt after a panic"
    );
    for _ in 0..20 {
        lease
            .run(|| 1 + 1)
            .await
            .expect("jobs keep succeeding after a panic");
    }
    assert_eq!(
        lease.run(thread_of).await.unwrap(),
        before,
        "the worker thread must survive"
    );
    let counters = manager.stats().await.counters;
    assert_eq!(counters.jobs_panicked, 1);
    assert_eq!(counters.worker_states_rebuilt, 1);
    assert!(counters.jobs_completed >= 25);
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_string_panic_payloads_are_reported() {
    let _deadline = testkit::deadline();
    let manager = started("payload", 1, 1).await;
    let lease = manager.acquire().await.unwrap();
    let err = lease.run(|| std::panic::panic_any(42u8)).await.unwrap_err();
    assert!(
        matches!(err, LeaseError::Panicked(ref m) if m.contains("non-string")),
        "{err:?}"
    );
    lease.release().await;
    manager.stop().await;
}

struct Account {
    balance: i64,
}
struct Deposit(i64);
struct Balance;

impl Handle<Deposit> for Account {
    type Output = i64;
    fn handle(&mut self, msg: Deposit) -> i64 {
        self.balance += msg.0;
        self.balance
    }
}

impl Handle<Balance> for Account {
    type Output = i64;
    fn handle(&mut self, _: Balance) -> i64 {
        self.balance
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_messages_run_on_the_worker_state() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("msg")
        .worker_state(|| Account { balance: 100 })
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    assert_eq!(lease.send(Deposit(5)).await.unwrap(), 105);
    assert_eq!(lease.send(Deposit(-10)).await.unwrap(), 95);
    assert_eq!(lease.send(Balance).await.unwrap(), 95);
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_submitted_job_resolves_exactly_once() {
    let _deadline = testkit::deadline();
    let manager = started("once", 2, 2).await;
    let lease = manager.acquire().await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for i in 0..500usize {
        let runs = Arc::clone(&runs);
        handles.push(
            lease
                .submit(move || {
                    runs.fetch_add(1, SeqCst);
                    if i % 50 == 0 {
                        panic!("planned panic {i}");
                    }
                    i
                })
                .unwrap(),
        );
    }
    let (mut ok, mut panicked) = (0, 0);
    for (i, h) in handles.into_iter().enumerate() {
        match h.await {
            Ok(v) => {
                assert_eq!(v, i);
                ok += 1;
            }
            Err(LeaseError::Panicked(m)) => {
                assert_eq!(m, format!("planned panic {i}"));
                panicked += 1;
            }
            Err(e) => panic!("job {i}: unexpected {e}"),
        }
    }
    assert_eq!((ok, panicked), (490, 10));
    assert_eq!(runs.load(SeqCst), 500);
    lease.release().await;
    manager.stop().await;
}
