//! Supervision: dead workers are replaced with backoff, unhealthy pools are never handed out,
//! crashed pool and lease actors are replaced and nothing hangs.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::{Lease, LeaseError, LeaseManager};
use testkit::{assert_invariant, stats_until, EVENTUALLY};

/// A factory that succeeds on call 1, panics on calls 2..=1+failures, then succeeds again.
fn flaky_factory(failures: usize) -> (Arc<AtomicUsize>, impl Fn() -> u32 + Send + Sync + 'static) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let factory = move || {
        let n = c.fetch_add(1, SeqCst) + 1;
        if (2..=1 + failures).contains(&n) {
            panic!("state factory failure #{}", n - 1);
        }
        0u32
    };
    (calls, factory)
}

/// Retries `run` until it succeeds; every failure must be `NeverRan` or `WorkerLost` (never a
/// hang).
async fn run_until_ok(lease: &Lease<u32>) -> Duration {
    let begun = Instant::now();
    loop {
        match lease.run_with(|n| *n).await {
            Ok(_) => return begun.elapsed(),
            Err(LeaseError::NeverRan | LeaseError::WorkerLost) => {}
            Err(other) => panic!("unexpected {other}"),
        }
        assert!(begun.elapsed() < EVENTUALLY, "the pool never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_that_panics_n_times_then_recovers_brings_the_pool_back() {
    let _deadline = testkit::deadline();
    let (calls, factory) = flaky_factory(3);
    let manager = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("sup-flaky")
        .worker_state(factory)
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    assert_eq!(lease.run_with(|n| *n).await.unwrap(), 0);

    // The panic makes the worker rebuild its state; the factory then fails, killing the thread.
    let panicking = lease.submit(|| panic!("job panic")).unwrap();
    let queued_a = lease.submit(|| 1).unwrap();
    let queued_b = lease.submit(|| 2).unwrap();
    assert!(matches!(panicking.await, Err(LeaseError::Panicked(_))));
    assert_eq!(
        queued_a.await.unwrap_err(),
        LeaseError::NeverRan,
        "queued jobs must not hang"
    );
    assert_eq!(queued_b.await.unwrap_err(), LeaseError::NeverRan);

    run_until_ok(&lease).await;
    assert_eq!(calls.load(SeqCst), 5, "1 ok + 3 failures + 1 ok");
    let stats = manager.stats().await;
    assert_eq!(
        stats.counters.workers_replaced, 3,
        "one replacement per failure"
    );
    assert_eq!(stats.counters.worker_states_rebuilt, 1);
    assert_eq!(stats.unhealthy, 0);
    assert_invariant(&stats);
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_build_its_workers_is_never_handed_out() {
    let _deadline = testkit::deadline();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let manager = LeaseManager::builder()
        .workers_per_pool(2)
        .name_prefix("sup-dead")
        .start_degraded(true)
        .worker_state(move || -> u32 {
            c.fetch_add(1, SeqCst);
            panic!("no database today")
        })
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let stats = stats_until(&manager, "unhealthy pool", |s| s.unhealthy == 1).await;
    assert_eq!((stats.available, stats.total), (0, 0), "{stats:?}");
    // No pool can serve: acquires fail at once with the factory's last failure (a panic).
    let failure =
        LeaseError::NoHealthyPool("worker state factory panicked: no database today".into());
    let err = manager
        .acquire()
        .timeout(Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(err, failure);
    assert_eq!(manager.acquire().no_wait().await.unwrap_err(), failure);
    // It keeps trying, with backoff (10 ms, 20 ms, 40 ms, ...): a few attempts, not a storm.
    let before = calls.load(SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tried = calls.load(SeqCst) - before;
    assert!(tried >= 2, "no retry within 300 ms ({tried})");
    assert!(
        tried <= 20,
        "retrying without backoff ({tried} factory calls in 300 ms)"
    );
    manager.stop().await;
}

/// Fault injection through the `testing` feature (always on for this crate's tests).
mod fault_injection {
    use super::*;

    /// How a round kills the pool its lease holds, and lets the lease go.
    type Kill = for<'a> fn(
        &'a LeaseManager,
        Lease,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>;

    /// 60 rounds on a fresh manager of two one-worker pools, both leased here, with 8 waiters
    /// queued: `kill` kills one lease's pool and lets that lease go; the other goes back 20 ms
    /// later. Returns the rounds in which more than `allowed` waiters were handed a dead pool
    /// (their job failed), with how many.
    async fn dead_pool_rounds(prefix: &str, kill: Kill, allowed: usize) -> Vec<(usize, usize)> {
        const WAITERS: usize = 8;
        let mut failed_rounds = Vec::new();
        for round in 0..60 {
            // A fresh manager each round: a pool that keeps losing workers backs off longer.
            let manager = LeaseManager::builder()
                .name_prefix(prefix)
                .max_pools(2)
                .min_pools(2)
                .workers_per_pool(1)
                .build()
                .unwrap();
            manager.start().await.unwrap();
            let holder = manager.acquire().await.unwrap();
            let other = manager.acquire().await.unwrap();
            let failures = Arc::new(AtomicUsize::new(0));
            let mut waiters = Vec::new();
            for _ in 0..WAITERS {
                let m = manager.clone();
                let failures = Arc::clone(&failures);
                waiters.push(tokio::spawn(async move {
                    let lease = m.acquire().timeout(EVENTUALLY).await.unwrap();
                    match lease.run(|| ()).await {
                        Ok(()) => {}
                        Err(LeaseError::NeverRan | LeaseError::WorkerLost) => {
                            failures.fetch_add(1, SeqCst);
                        }
                        Err(e) => panic!("round {round}: {e}"),
                    }
                }));
            }
            stats_until(&manager, "waiters queued", |s| s.waiting == WAITERS).await;
            kill(&manager, holder).await;
            // The other pool goes back once the first waiters had their chance at the dead one.
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(other);
            for w in waiters {
                w.await.unwrap();
            }
            let n = failures.load(SeqCst);
            if n > allowed {
                failed_rounds.push((round, n));
            }
            manager.stop().await;
        }
        failed_rounds
    }

    /// A pool whose only worker dies is never handed to a waiter: the books learn of the death
    /// in the same step as the pool's queue. At most the one waiter already holding the pool
    /// when it died sees its job fail (`NeverRan`: it never started); every other waiter gets a
    /// live pool. (Before, the pool's queue was marked dead and emptied first, and in that
    /// window the release of the job that just failed handed the "healthy" pool on: up to the
    /// whole waiter queue failed at once, one after another.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_whose_worker_died_is_never_handed_to_a_waiter() {
        let _deadline = testkit::deadline();
        // The only worker dies (it takes a poison job); the lease goes back at once, racing
        // the pool's learning of the death.
        let failed = dead_pool_rounds(
            "sup-dead",
            |m, holder| {
                Box::pin(async move {
                    assert!(m.kill_worker(holder.pool(), 1).await);
                    drop(holder);
                })
            },
            1,
        )
        .await;
        assert!(
            failed.is_empty(),
            "a dead pool was handed on to waiters: (round, waiters failed) {failed:?}"
        );
    }

    /// The same for a pool whose *actor* crashed: the books learn it in the actor's last hook,
    /// before its queue goes, so the lease that held it — released as soon as its job was
    /// refused — hands nothing on. (Before, the books learned it from the supervisor's message,
    /// and a release in between handed the dead pool to the next waiter: seen in the chaos run.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pool_whose_actor_crashed_is_never_handed_to_a_waiter() {
        let _deadline = testkit::deadline();
        let failed = dead_pool_rounds(
            "sup-crashed",
            |m, holder| {
                Box::pin(async move {
                    assert!(m.kill_pool(holder.pool()).await);
                    // The holder learns of the crash from its next job, and lets go at once.
                    let deadline = Instant::now() + EVENTUALLY;
                    while holder.run(|| ()).await.is_ok() {
                        assert!(Instant::now() < deadline, "the pool never died");
                        tokio::task::yield_now().await;
                    }
                    drop(holder);
                })
            },
            0,
        )
        .await;
        assert!(
            failed.is_empty(),
            "a crashed pool was handed on to waiters: (round, waiters failed) {failed:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn killed_workers_are_replaced_and_the_lease_keeps_working() {
        let _deadline = testkit::deadline();
        let manager = testkit::started("sup-killw", 1, 2).await;
        let lease = manager.acquire().await.unwrap();
        assert!(manager.kill_worker(lease.pool(), 1).await);
        stats_until(&manager, "replacement", |s| {
            s.counters.workers_replaced == 1
        })
        .await;
        for i in 0..20 {
            assert_eq!(lease.run(move || i).await.unwrap(), i);
        }
        let deadline = Instant::now() + EVENTUALLY;
        while manager.live_worker_threads() != 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(manager.live_worker_threads(), 2);
        lease.release().await;
        manager.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_pool_actor_revokes_its_lease_and_capacity_is_rebuilt() {
        let _deadline = testkit::deadline();
        let manager = testkit::started("sup-killp", 1, 1).await;
        let lease = manager.acquire().await.unwrap();
        let dead_pool = lease.pool();
        assert!(manager.kill_pool(dead_pool).await);
        let stats = stats_until(&manager, "replacement pool", |s| {
            s.counters.revoked == 1 && s.available == 1
        })
        .await;
        assert_invariant(&stats);
        // A new job on the lost lease never starts.
        assert_eq!(lease.run(|| ()).await.unwrap_err(), LeaseError::NeverRan);
        let next = manager.acquire().no_wait().await.unwrap();
        assert_ne!(next.pool(), dead_pool);
        assert_eq!(next.run(|| 5).await.unwrap(), 5);
        assert!(!manager.kill_pool(dead_pool).await, "the dead pool is gone");
        drop((lease, next));
        manager.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_idle_pool_actor_is_replaced() {
        let _deadline = testkit::deadline();
        let manager = testkit::started("sup-killi", 1, 1).await;
        let pool = {
            let lease = manager.acquire().await.unwrap();
            let pool = lease.pool();
            lease.release().await;
            pool
        };
        assert!(manager.kill_pool(pool).await);
        let stats = stats_until(&manager, "replacement", |s| {
            s.counters.pools_replaced == 1 && s.available == 1
        })
        .await;
        assert_eq!(stats.counters.revoked, 0);
        let lease = manager.acquire().no_wait().await.unwrap();
        assert_ne!(lease.pool(), pool);
        lease.release().await;
        manager.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_lease_actor_revokes_the_lease_and_retires_its_pool() {
        let _deadline = testkit::deadline();
        let manager = testkit::started("sup-killl", 1, 1).await;
        let lease = manager.acquire().await.unwrap();
        lease.run(|| ()).await.unwrap();
        assert!(manager.kill_lease_actor(lease.id()).await);
        let stats = stats_until(&manager, "replacement", |s| {
            s.counters.revoked == 1 && s.available == 1
        })
        .await;
        assert_invariant(&stats);
        assert_eq!(lease.run(|| ()).await.unwrap_err(), LeaseError::NeverRan);
        let next = manager.acquire().no_wait().await.unwrap();
        assert_ne!(
            next.pool(),
            lease.pool(),
            "a pool of a dead lease is not reused"
        );
        drop((lease, next));
        manager.stop().await;
    }
}
