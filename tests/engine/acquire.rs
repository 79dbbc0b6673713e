//! Acquire: FIFO waiters, timeouts, no_wait, max_waiters, abandoned acquires, the max_pools bound.

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use leasepool::{LeaseError, LeaseManager};
use testkit::{assert_invariant, started, stats_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_waiters_are_served_in_arrival_order() {
    let _deadline = testkit::deadline();
    let manager = started("fifo", 1, 1).await;
    let held = manager.acquire().owner("holder").await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (m, order) = (manager.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let lease = m.acquire().owner(format!("waiter-{i}")).await.unwrap();
            order.lock().unwrap().push(i);
            lease.release().await;
        }));
        // Queue them one at a time so arrival order is known.
        stats_until(&manager, "waiter to queue", |s| s.waiting == i + 1).await;
    }
    held.release().await;
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..16).collect::<Vec<_>>());
    let stats = manager.stats().await;
    assert_eq!(stats.counters.acquired_after_wait, 16);
    assert_eq!(stats.waiting, 0);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_after_the_bound_and_leaves_the_queue() {
    let _deadline = testkit::deadline();
    let manager = started("tmo", 1, 1).await;
    let _held = manager.acquire().await.unwrap();
    let limit = Duration::from_millis(300);
    let begun = Instant::now();
    let err = manager.acquire().timeout(limit).await.unwrap_err();
    let waited = begun.elapsed();
    assert_eq!(err, LeaseError::Timeout(limit));
    assert!(waited >= limit, "gave up early: {waited:?}");
    assert!(
        waited < limit + Duration::from_secs(10),
        "gave up far too late: {waited:?}"
    );
    let stats = manager.stats().await;
    assert_eq!(stats.waiting, 0);
    assert_eq!(stats.counters.timed_out, 1);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_not_hit_when_a_pool_frees_up_in_time() {
    let _deadline = testkit::deadline();
    let manager = started("tmo-ok", 1, 1).await;
    let held = manager.acquire().await.unwrap();
    let m = manager.clone();
    let waiter = tokio::spawn(async move {
        m.acquire()
            .timeout(Duration::from_secs(30))
            .await
            .map(|l| l.id())
    });
    stats_until(&manager, "waiter", |s| s.waiting == 1).await;
    let first = held.id();
    held.release().await;
    let second = waiter.await.unwrap().expect("served before the timeout");
    assert_ne!(first, second);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_fails_at_once_when_everything_is_leased() {
    let _deadline = testkit::deadline();
    let manager = started("nowait", 1, 1).await;
    let _held = manager.acquire().await.unwrap();
    let err = manager.acquire().no_wait().await.unwrap_err();
    assert_eq!(err, LeaseError::Unavailable);
    let stats = manager.stats().await;
    assert_eq!(stats.counters.rejected, 1);
    assert_eq!(stats.waiting, 0);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_grows_a_pool_when_max_pools_allows() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(2)
        .min_pools(1)
        .workers_per_pool(1)
        .name_prefix("nowait-grow")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let a = manager.acquire().no_wait().await.expect("idle pool");
    let b = manager
        .acquire()
        .no_wait()
        .await
        .expect("a second pool is created");
    assert_ne!(a.id(), b.id());
    assert_eq!(
        manager.acquire().no_wait().await.unwrap_err(),
        LeaseError::Unavailable
    );
    assert_invariant(&manager.stats().await);
    drop((a, b));
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_waiter_queue_refuses_at_once() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(1)
        .max_waiters(2)
        .workers_per_pool(1)
        .name_prefix("maxw")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let held = manager.acquire().await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..2 {
        let m = manager.clone();
        waiters.push(tokio::spawn(async move { m.acquire().await.map(drop) }));
    }
    stats_until(&manager, "two waiters", |s| s.waiting == 2).await;
    let begun = Instant::now();
    let err = manager.acquire().await.unwrap_err();
    assert_eq!(err, LeaseError::Unavailable);
    assert!(
        begun.elapsed() < Duration::from_secs(5),
        "refusal was not immediate"
    );
    drop(held);
    for w in waiters {
        w.await.unwrap().expect("queued waiters are still served");
    }
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_waiters_zero_never_queues() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_waiters(0)
        .workers_per_pool(1)
        .name_prefix("maxw0")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let _held = manager.acquire().await.unwrap();
    let err = manager
        .acquire()
        .timeout(Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err, LeaseError::Unavailable);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acquire_leaves_the_queue_and_gets_no_pool() {
    let _deadline = testkit::deadline();
    let manager = started("abandon", 1, 1).await;
    let held = manager.acquire().await.unwrap();
    let mut pending = Box::pin(manager.acquire().owner("abandoned").into_future());
    assert!((&mut pending).now_or_never().is_none(), "must be queued");
    assert_eq!(manager.stats().await.waiting, 1);
    drop(pending);
    assert_eq!(manager.stats().await.waiting, 0);
    held.release().await;
    // The pool went back to the idle set, not to the abandoned waiter.
    let stats = manager.stats().await;
    assert_eq!((stats.available, stats.leased), (1, 0));
    let again = manager.acquire().no_wait().await.expect("the pool is free");
    drop(again);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_cancelled_at_random_moments_lose_no_pool() {
    let _deadline = testkit::deadline();
    let manager = started("cancel-storm", 2, 1).await;
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move {
            // Alternate between giving up quickly and holding the lease briefly.
            let wait = Duration::from_micros(50 * (i % 7));
            match tokio::time::timeout(wait, m.acquire().into_future()).await {
                Ok(Ok(lease)) => {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    drop(lease);
                }
                Ok(Err(e)) => panic!("unexpected error {e}"),
                Err(_) => {}
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = stats_until(&manager, "every pool idle", |s| s.leased == 0).await;
    assert_invariant(&stats);
    assert_eq!(stats.waiting, 0);
    assert!(stats.available >= 1);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_never_exceed_max_pools_under_24_competing_tasks() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(3)
        .min_pools(1)
        .workers_per_pool(1)
        .name_prefix("bound")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let holding = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (m, holding, peak) = (manager.clone(), holding.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let lease = m.acquire().owner(format!("task-{i}")).await.unwrap();
            let now = holding.fetch_add(1, SeqCst) + 1;
            peak.fetch_max(now, SeqCst);
            let stats = m.stats().await;
            assert!(stats.leased <= 3, "leased {} > max_pools", stats.leased);
            lease
                .run(|| std::thread::sleep(Duration::from_millis(5)))
                .await
                .unwrap();
            holding.fetch_sub(1, SeqCst);
            lease.release().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peak = peak.load(SeqCst);
    assert!(peak <= 3, "{peak} leases held at once with max_pools 3");
    assert!(
        peak >= 2,
        "expected contention to use more than one pool, peak {peak}"
    );
    let stats = manager.stats().await;
    assert_eq!(stats.counters.acquired, 24);
    assert_invariant(&stats);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_lease_for_is_refused_with_a_clear_error() {
    let _deadline = testkit::deadline();
    let manager = started("zero-lease", 1, 1).await;
    let err = manager
        .acquire()
        .lease_for(Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, LeaseError::InvalidArgument(_)));
    assert!(err.to_string().contains("lease_for"), "{err}");
    assert_eq!(manager.stats().await.leased, 0);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_before_start_and_after_stop_is_not_started() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder().name_prefix("ns").build().unwrap();
    assert_eq!(manager.acquire().await.unwrap_err(), LeaseError::NotStarted);
    manager.start().await.unwrap();
    manager.stop().await;
    assert_eq!(manager.acquire().await.unwrap_err(), LeaseError::NotStarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_an_idle_lease_frees_its_pool_before_drop_returns() {
    let _deadline = testkit::deadline();
    let manager = testkit::started("acq-drop-now", 1, 1).await;
    for round in 0..50 {
        let lease = manager.acquire().await.unwrap();
        lease.run(|| ()).await.unwrap();
        drop(lease);
        let s = manager.stats().await;
        assert_eq!(
            (s.leased, s.available),
            (0, 1),
            "round {round}: the pool is back the moment the lease is dropped: {s:?}"
        );
        // And the next acquire takes it without waiting.
        let again = manager.acquire().no_wait().await.unwrap();
        drop(again);
    }
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_answered_and_then_dropped_unpolled_releases_its_lease_and_leaves_no_answer() {
    let _deadline = testkit::deadline();
    let manager = started("answer-left", 1, 1).await;
    let held = manager.acquire().await.unwrap();
    let mut pending = Box::pin(manager.acquire().owner("slow poller").into_future());
    assert!((&mut pending).now_or_never().is_none(), "must be queued");
    drop(held);
    // The pool was handed to the waiter, whose answer waits for a poll that never comes.
    let stats = stats_until(&manager, "the pool handed on", |s| s.waiting == 0).await;
    assert_eq!((stats.leased, stats.counters.acquired_after_wait), (1, 1));
    drop(pending);
    let stats = manager.stats().await;
    assert_eq!(
        (stats.available, stats.leased),
        (1, 0),
        "its lease released"
    );
    manager.stop().await;
    assert_eq!(manager.book_entries(), 0, "no answer left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_first_polled_elsewhere_wakes_the_task_that_polls_it_last() {
    let _deadline = testkit::deadline();
    let manager = started("rewake", 1, 1).await;
    let held = manager.acquire().await.unwrap();
    let mut pending = Box::pin(manager.acquire_owned().into_future());
    // Queued from a poll whose waker nobody listens to...
    assert!((&mut pending).now_or_never().is_none(), "must be queued");
    // ...then awaited by a task: the task's waker must be the one woken.
    let task = tokio::spawn(async move { pending.await.map(|lease| lease.id()) });
    stats_until(&manager, "the task to poll", |s| s.waiting == 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(held);
    let answer = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the task was never woken")
        .unwrap();
    assert!(answer.is_ok(), "{answer:?}");
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_answers_every_queued_acquirer_and_keeps_no_answer() {
    let _deadline = testkit::deadline();
    let manager = started("stop-answers", 1, 1).await;
    let held = manager.acquire().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move { m.acquire().await.map(|_| ()) }));
    }
    stats_until(&manager, "every acquirer to queue", |s| s.waiting == 200).await;
    manager.stop().await;
    for t in tasks {
        assert_eq!(t.await.unwrap(), Err(LeaseError::Stopped));
    }
    drop(held);
    assert_eq!(manager.book_entries(), 0, "every answer was taken");
}

/// A waker whose `wake` panics: an executor's bug, which must not cost anyone else an answer.
struct PanickingWaker;

impl std::task::Wake for PanickingWaker {
    fn wake(self: Arc<Self>) {
        panic!("this waker panics on purpose");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_waker_neither_strands_the_waiters_after_it_nor_escapes_stop() {
    let _deadline = testkit::deadline();
    let manager = started("boom-waker", 1, 1).await;
    let held = manager.acquire().await.unwrap();
    let boom = std::task::Waker::from(Arc::new(PanickingWaker));
    let mut first = Box::pin(manager.acquire_owned().into_future());
    let polled = first
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&boom));
    assert!(polled.is_pending(), "must be queued");
    let m = manager.clone();
    let second = tokio::spawn(async move { m.acquire().await.map(|_| ()) });
    stats_until(&manager, "both queued", |s| s.waiting == 2).await;
    // stop() answers both: waking the first panics, the second must be woken all the same.
    let stopped = std::panic::AssertUnwindSafe(manager.stop())
        .catch_unwind()
        .await;
    assert!(stopped.is_ok(), "a waker's panic escaped stop()");
    let second = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("the waiter after the panicking waker was never woken")
        .unwrap();
    assert_eq!(second, Err(LeaseError::Stopped));
    // The first one's answer waits for it, as for any waiter not polled yet.
    let first = first.now_or_never().expect("answered");
    assert_eq!(first.map(|_| ()), Err(LeaseError::Stopped));
    drop(held);
    assert_eq!(manager.book_entries(), 0, "every answer was taken");
}
