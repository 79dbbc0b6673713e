//! Lease expiry: soft lifetime + grace, then hard revocation driven by each lease's own
//! deadline (not by `check_interval`), with the revoked pool retired and capacity rebuilt.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use leasepool::{LeaseError, LeaseManager};
use testkit::{assert_invariant, stats_until};

fn manager(prefix: &str, workers: usize, grace: Duration) -> LeaseManager {
    LeaseManager::builder()
        .max_pools(1)
        .workers_per_pool(workers)
        .lease_grace(grace)
        .check_interval(Duration::from_secs(120))
        .name_prefix(prefix)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_short_lease_frees_capacity_for_a_waiter_without_waiting_for_check_interval() {
    let _deadline = testkit::deadline();
    let manager = manager("exp-free", 1, Duration::ZERO);
    manager.start().await.unwrap();
    let _idle = manager
        .acquire()
        .lease_for(Duration::from_millis(150))
        .await
        .unwrap();
    let begun = Instant::now();
    let next = manager
        .acquire()
        .timeout(Duration::from_secs(30))
        .await
        .expect("served");
    let waited = begun.elapsed();
    assert!(
        waited >= Duration::from_millis(100),
        "served before expiry: {waited:?}"
    );
    // check_interval is 120 s: only the lease's own deadline can explain this.
    assert!(
        waited < Duration::from_secs(5),
        "revocation took {waited:?}"
    );
    assert_eq!(
        next.run(|| 1).await.unwrap(),
        1,
        "the replacement pool works"
    );
    let stats = manager.stats().await;
    assert_eq!(stats.counters.revoked, 1);
    assert_invariant(&stats);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_normally_during_grace() {
    let _deadline = testkit::deadline();
    let manager = manager("exp-grace", 1, Duration::from_secs(30));
    manager.start().await.unwrap();
    let lease = manager
        .acquire()
        .lease_for(Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Instant::now() > lease.soft_expires_at());
    assert_eq!(lease.run(|| "still fine").await.unwrap(), "still fine");
    let info = manager.stats().await.leases[0].clone();
    assert_eq!(info.until_soft_expiry, Duration::ZERO);
    assert!(info.until_hard_expiry > Duration::from_secs(20));
    assert_eq!(manager.stats().await.counters.revoked, 0);
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_hard_expiry_new_jobs_fail_queued_jobs_are_lost_and_running_jobs_finish() {
    let _deadline = testkit::deadline();
    let manager = manager("exp-revoke", 1, Duration::ZERO);
    manager.start().await.unwrap();
    let lease = manager
        .acquire()
        .lease_for(Duration::from_millis(200))
        .await
        .unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let running = lease
        .submit(move || {
            started_tx.send(()).unwrap();
            go_rx.recv_timeout(Duration::from_secs(30)).is_ok()
        })
        .unwrap();
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    let queued = lease.submit(|| "must not run").unwrap();

    let stats = stats_until(&manager, "revocation", |s| s.counters.revoked == 1).await;
    assert_eq!(stats.leased, 0, "a revoked lease leaves the lease table");
    assert_eq!(lease.run(|| ()).await.unwrap_err(), LeaseError::Expired);
    assert_eq!(lease.submit(|| ()).unwrap_err(), LeaseError::Expired);

    go_tx.send(()).unwrap();
    assert!(
        running.await.unwrap(),
        "the running job finishes and delivers its result"
    );
    // It never started: `NeverRan` (safe to retry), not `WorkerLost`.
    assert_eq!(queued.await.unwrap_err(), LeaseError::NeverRan);
    drop(lease);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_pool_is_retired_never_reused_and_capacity_is_rebuilt() {
    let _deadline = testkit::deadline();
    let manager = manager("exp-retire", 2, Duration::ZERO);
    manager.start().await.unwrap();
    let first_pool = manager.stats().await.leases.len();
    assert_eq!(first_pool, 0);
    let lease = manager
        .acquire()
        .lease_for(Duration::from_millis(100))
        .await
        .unwrap();
    let old_pool = manager.stats().await.leases[0].pool;
    let stats = stats_until(&manager, "a fresh idle pool", |s| {
        s.counters.revoked == 1 && s.available == 1
    })
    .await;
    assert_invariant(&stats);
    assert_eq!(stats.total, 1);
    let next = manager.acquire().no_wait().await.unwrap();
    let new_pool = manager.stats().await.leases[0].pool;
    assert_ne!(
        new_pool, old_pool,
        "a revoked pool must never be handed out again"
    );
    // The retired pool's threads exit (nothing is running on them).
    let stats = stats_until(&manager, "retired threads gone", |s| s.retiring == 0).await;
    assert_eq!(
        manager.live_worker_threads(),
        2,
        "only the new pool's threads: {stats:?}"
    );
    drop((lease, next));
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_pool_is_counted_apart_until_its_running_job_ends() {
    let _deadline = testkit::deadline();
    let manager = manager("exp-count", 1, Duration::ZERO);
    manager.start().await.unwrap();
    let lease = manager
        .acquire()
        .lease_for(Duration::from_millis(100))
        .await
        .unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let running = lease
        .submit(move || {
            started_tx.send(()).unwrap();
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
        })
        .unwrap();
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    let stats = stats_until(&manager, "revoked and replaced", |s| {
        s.counters.revoked == 1 && s.total == 1
    })
    .await;
    assert_eq!(
        stats.retiring, 1,
        "the busy revoked pool is still retiring: {stats:?}"
    );
    assert_invariant(&stats);
    go_tx.send(()).unwrap();
    running.await.unwrap();
    stats_until(&manager, "retirement done", |s| s.retiring == 0).await;
    drop(lease);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_lease_past_hard_expiry_is_revoked() {
    let _deadline = testkit::deadline();
    let manager = manager("exp-drain", 1, Duration::ZERO);
    manager.start().await.unwrap();
    let lease = manager
        .acquire()
        .lease_for(Duration::from_millis(200))
        .await
        .unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let job = lease
        .submit(move || {
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
            7
        })
        .unwrap();
    drop(lease); // draining
    stats_until(&manager, "revocation of the draining lease", |s| {
        s.counters.revoked == 1
    })
    .await;
    let stats = stats_until(&manager, "capacity back", |s| s.available == 1).await;
    assert_eq!(stats.counters.released, 0, "revoked, not released");
    go_tx.send(()).unwrap();
    assert_eq!(job.await.unwrap(), 7);
    manager.stop().await;
}

/// A lease actor starts at a sweep, up to 50 ms after its lease is made — but never after the
/// lease's hard expiry: a lease that must be revoked sooner, made beside a long one whose sweep
/// is already asked for, is revoked in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_shorter_than_the_sweep_delay_is_still_revoked() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .max_pools(2)
        .min_pools(2)
        .lease_grace(Duration::ZERO)
        .check_interval(Duration::from_secs(120))
        .name_prefix("exp-sweep")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let long = manager
        .acquire()
        .lease_for(Duration::from_secs(60))
        .await
        .unwrap();
    let short = manager
        .acquire()
        .lease_for(Duration::from_millis(5))
        .await
        .unwrap();
    let answer = short
        .run(|| std::thread::sleep(Duration::from_millis(300)))
        .await;
    let stats = stats_until(&manager, "the short lease revoked", |s| {
        s.counters.revoked == 1
    })
    .await;
    assert_invariant(&stats);
    assert_eq!(
        long.run(|| 7).await,
        Ok(7),
        "the long lease lives on (short one answered {answer:?})"
    );
    manager.stop().await;
}
