//! Adaptive sizing: desired = min(max_pools, max(min_pools, ceil(units / units_per_pool))),
//! evaluated at start, every check_interval and on notify_scale_changed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use leasepool::LeaseManager;
use testkit::{assert_invariant, stats_until};

fn sized(prefix: &str, units: &Arc<AtomicUsize>, check: Duration) -> LeaseManager {
    let units = Arc::clone(units);
    LeaseManager::builder()
        .max_pools(5)
        .min_pools(1)
        .units_per_pool(10)
        .workers_per_pool(1)
        .check_interval(check)
        .size_provider(move || units.load(SeqCst))
        .name_prefix(prefix)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grows_one_to_four_to_five_and_shrinks_back_without_revoking_leases() {
    let _deadline = testkit::deadline();
    let units = Arc::new(AtomicUsize::new(0));
    let manager = sized("sz-grow", &units, Duration::from_secs(120));
    manager.start().await.unwrap();
    assert_eq!(manager.stats().await.total, 1);

    units.store(35, SeqCst); // ceil(35 / 10) = 4
    manager.notify_scale_changed();
    let s = stats_until(&manager, "4 pools", |s| s.total == 4).await;
    assert_eq!((s.desired, s.available), (4, 4));

    units.store(1_000, SeqCst); // capped at max_pools
    manager.notify_scale_changed();
    let s = stats_until(&manager, "5 pools", |s| s.total == 5).await;
    assert_eq!(s.desired, 5);

    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(manager.acquire().no_wait().await.unwrap());
    }
    units.store(0, SeqCst);
    manager.notify_scale_changed();
    let s = stats_until(&manager, "idle pools retired", |s| s.total == 3).await;
    assert_eq!((s.desired, s.available, s.leased), (1, 0, 3));
    assert_eq!(
        s.counters.revoked, 0,
        "a shrinking target never revokes a lease"
    );
    for lease in &held {
        lease.run(|| ()).await.expect("held leases keep working");
    }

    // Released pools above the target are retired instead of parked.
    for lease in held {
        lease.release().await;
    }
    let s = stats_until(&manager, "back to min_pools", |s| s.total == 1).await;
    assert_eq!((s.available, s.leased), (1, 0));
    assert_invariant(&s);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_is_re_evaluated_every_check_interval() {
    let _deadline = testkit::deadline();
    let units = Arc::new(AtomicUsize::new(0));
    let manager = sized("sz-tick", &units, Duration::from_millis(50));
    manager.start().await.unwrap();
    units.store(20, SeqCst);
    // No notify: only the periodic check can grow it.
    let s = stats_until(&manager, "2 pools from the periodic check", |s| {
        s.total == 2
    })
    .await;
    assert_eq!(s.desired, 2);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_creates_the_desired_number_of_pools() {
    let _deadline = testkit::deadline();
    let units = Arc::new(AtomicUsize::new(30));
    let manager = sized("sz-start", &units, Duration::from_secs(120));
    manager.start().await.unwrap();
    let s = manager.stats().await;
    assert_eq!((s.desired, s.total, s.available), (3, 3, 3));
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_size_provider_counts_as_zero_and_recovers() {
    let _deadline = testkit::deadline();
    let failing = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let (f, c) = (Arc::clone(&failing), Arc::clone(&calls));
    let manager = LeaseManager::builder()
        .max_pools(4)
        .min_pools(1)
        .units_per_pool(1)
        .workers_per_pool(1)
        .size_provider(move || {
            c.fetch_add(1, SeqCst);
            if f.load(SeqCst) {
                panic!("size provider broke");
            }
            3
        })
        .name_prefix("sz-panic")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    assert_eq!(manager.stats().await.total, 3);
    failing.store(true, SeqCst);
    let before = calls.load(SeqCst);
    manager.notify_scale_changed();
    let s = stats_until(&manager, "failure counted as 0 units", |s| s.desired == 1).await;
    assert!(calls.load(SeqCst) > before);
    assert_eq!(s.total, 1, "idle pools above min_pools are retired");
    failing.store(false, SeqCst);
    manager.notify_scale_changed();
    stats_until(&manager, "recovered", |s| s.desired == 3 && s.total == 3).await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_grow_the_pool_count_up_to_max_pools_on_demand() {
    let _deadline = testkit::deadline();
    let units = Arc::new(AtomicUsize::new(0));
    let manager = sized("sz-demand", &units, Duration::from_secs(120));
    manager.start().await.unwrap();
    let mut leases = Vec::new();
    for _ in 0..5 {
        leases.push(
            manager
                .acquire()
                .timeout(Duration::from_secs(20))
                .await
                .unwrap(),
        );
    }
    let s = manager.stats().await;
    assert_eq!((s.total, s.leased, s.desired), (5, 5, 1));
    assert_eq!(
        manager.acquire().no_wait().await.unwrap_err(),
        leasepool::LeaseError::Unavailable
    );
    drop(leases);
    stats_until(&manager, "shrunk back to desired", |s| {
        s.total == 1 && s.leased == 0
    })
    .await;
    manager.stop().await;
}
