//! Stats: every snapshot is consistent, and per-lease details are right.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use leasepool::LeaseManager;
use testkit::assert_invariant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_lease_details_are_reported() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(2)
        .lease_grace(Duration::from_secs(7))
        .name_prefix("st-detail")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let before = manager.stats().await;
    assert_invariant(&before);
    assert_eq!(
        (
            before.available,
            before.leased,
            before.total,
            before.desired
        ),
        (1, 0, 1, 1)
    );

    let a = manager
        .acquire()
        .owner("alpha")
        .lease_for(Duration::from_secs(60))
        .await
        .unwrap();
    let b = manager.acquire().await.unwrap();
    let stats = manager.stats().await;
    assert_invariant(&stats);
    assert_eq!((stats.available, stats.leased, stats.total), (0, 2, 2));
    let info = stats.leases.iter().find(|l| l.id == a.id()).unwrap();
    assert_eq!(info.owner.as_deref(), Some("alpha"));
    assert!(info.until_soft_expiry <= Duration::from_secs(60));
    assert!(info.until_soft_expiry > Duration::from_secs(30));
    let grace = info.until_hard_expiry - info.until_soft_expiry;
    assert!(
        grace >= Duration::from_secs(6) && grace <= Duration::from_secs(8),
        "{grace:?}"
    );
    assert_eq!(
        a.hard_expires_at() - a.soft_expires_at(),
        Duration::from_secs(7)
    );
    let other = stats.leases.iter().find(|l| l.id == b.id()).unwrap();
    assert_eq!(other.owner, None);
    assert!(
        other.until_soft_expiry > Duration::from_secs(200),
        "default_lease is 300 s"
    );
    assert_eq!(stats.counters.acquired, 2);

    a.release().await;
    b.release().await;
    let after = manager.stats().await;
    assert_invariant(&after);
    // Above desired (1), the second pool is retired on release.
    assert_eq!((after.available, after.leased, after.total), (1, 0, 1));
    assert_eq!(after.counters.released, 2);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_stay_consistent_under_churn() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(3)
        .min_pools(1)
        .workers_per_pool(1)
        .name_prefix("st-churn")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (m, done) = (manager.clone(), done.clone());
        tokio::spawn(async move {
            let mut samples = 0u32;
            while !done.load(SeqCst) {
                let s = m.stats().await;
                assert_invariant(&s);
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    let mut workers = Vec::new();
    for i in 0..6u32 {
        let m = manager.clone();
        workers.push(tokio::spawn(async move {
            for j in 0..40u32 {
                let lease = match m
                    .acquire()
                    .timeout(Duration::from_millis(1 + u64::from(j % 3)))
                    .await
                {
                    Ok(lease) => lease,
                    Err(_) => continue,
                };
                if (i + j) % 2 == 0 {
                    let _ = lease.submit(|| std::thread::sleep(Duration::from_micros(300)));
                    drop(lease);
                } else {
                    lease.run(|| ()).await.unwrap();
                    lease.release().await;
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    done.store(true, SeqCst);
    let samples = sampler.await.unwrap();
    assert!(samples > 10, "sampler barely ran ({samples})");
    let end = testkit::stats_until(&manager, "all released", |s| s.leased == 0).await;
    assert_invariant(&end);
    let c = end.counters;
    assert_eq!(
        c.acquired, c.released,
        "every acquired lease was released: {c:?}"
    );
    manager.stop().await;
}

/// `capacity()` — the cheap snapshot a queue's admission gate reads on every decision — tells
/// the same counts as `stats()`, and `free()` is what is left under `max_pools`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_agrees_with_stats() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(3)
        .workers_per_pool(1)
        .name_prefix("st-cap")
        .build()
        .unwrap();
    let idle = manager.capacity();
    assert_eq!((idle.max_pools, idle.leased, idle.free()), (3, 0, 3));
    manager.start().await.unwrap();
    let a = manager.acquire().await.unwrap();
    let b = manager.acquire().await.unwrap();
    let (cap, s) = (manager.capacity(), manager.stats().await);
    assert_eq!(
        (
            cap.available,
            cap.leased,
            cap.unhealthy,
            cap.starting,
            cap.waiting
        ),
        (s.available, s.leased, s.unhealthy, s.starting, s.waiting)
    );
    assert_eq!((cap.leased, cap.free()), (2, 1));
    let c = manager.acquire().await.unwrap();
    assert_eq!(manager.capacity().free(), 0);
    let waiter = {
        let m = manager.clone();
        tokio::spawn(async move { m.acquire().await.map(|l| l.id()) })
    };
    testkit::stats_until(&manager, "a waiter", |s| s.waiting == 1).await;
    assert_eq!(manager.capacity().waiting, 1);
    drop((a, b, c));
    waiter.await.unwrap().unwrap();
    testkit::stats_until(&manager, "all released", |s| s.leased == 0).await;
    assert_eq!(manager.capacity().free(), 3);
    manager.stop().await;
}
