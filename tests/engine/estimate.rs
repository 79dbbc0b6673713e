//! `estimated_wait`: with deterministic job times, the estimate is within a stated tolerance
//! (250 ms on 600 ms holds) of the real time until a pool frees — for the first waiter and for
//! one behind another.

use std::time::{Duration, Instant};

use leasepool::LeaseManager;

const HOLD: Duration = Duration::from_millis(600);
const TOLERANCE: Duration = Duration::from_millis(250);

/// Holds a lease of `m` for `HOLD` (a job that sleeps it), then releases it.
async fn hold(m: LeaseManager) {
    let lease = m.acquire().await.unwrap();
    lease.run(|| std::thread::sleep(HOLD)).await.unwrap();
    lease.release().await;
}

fn close(estimate: Duration, real: Duration) -> bool {
    estimate.abs_diff(real) <= TOLERANCE
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_estimate_tracks_the_real_wait_for_a_pool() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .max_pools(2)
        .min_pools(2)
        .workers_per_pool(1)
        .name_prefix("est")
        .build()
        .unwrap();
    m.start().await.unwrap();
    // No basis yet: hold times are measured from the first call on.
    assert_eq!(m.estimated_wait(), None);
    // A free pool: no wait, once there is a basis.
    for _ in 0..2 {
        tokio::join!(hold(m.clone()), hold(m.clone()));
    }
    assert_eq!(m.estimated_wait(), Some(Duration::ZERO));

    // Both pools held from now for HOLD: a newcomer waits about HOLD.
    let holders = [tokio::spawn(hold(m.clone())), tokio::spawn(hold(m.clone()))];
    testkit::stats_until(&m, "both pools held", |s| s.leased == 2).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    let first = m.estimated_wait().unwrap();
    let lease = m.acquire().await.unwrap();
    let real = asked.elapsed();
    assert!(close(first, real), "estimate {first:?}, real {real:?}");

    lease.release().await;
    for h in holders {
        h.await.unwrap();
    }

    // Two pools held for HOLD from now, and one waiter ahead: a newcomer is served by the
    // second release.
    // The pools free 300 ms apart: the waiter ahead takes the first, the newcomer the second
    // (an estimate that ignored the waiter would be 300 ms short).
    let other = tokio::spawn(hold(m.clone()));
    testkit::stats_until(&m, "one pool held", |s| s.leased == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ours = m.acquire().await.unwrap();
    let granted = Instant::now();
    let ahead = tokio::spawn(hold(m.clone()));
    testkit::stats_until(&m, "one waiter", |s| s.waiting == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    let second = m.estimated_wait().unwrap();
    let m2 = m.clone();
    let newcomer = tokio::spawn(async move {
        let lease = m2.acquire().await.unwrap();
        let real = asked.elapsed();
        lease.release().await;
        real
    });
    testkit::stats_until(&m, "two waiters", |s| s.waiting == 2).await;
    tokio::time::sleep(HOLD.saturating_sub(granted.elapsed())).await;
    ours.release().await;
    let real = newcomer.await.unwrap();
    assert!(
        close(second, real),
        "one ahead: estimate {second:?}, real {real:?}"
    );
    other.await.unwrap();
    ahead.await.unwrap();
    m.stop().await;
}
