//! Start and stop at their edges: `Duration::MAX` everywhere, stop racing growth, a start
//! dropped midway or slow, a steady target with a short check interval, draining.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::{LeaseError, LeaseManager};
use testkit::{one_worker, stats_until, within, EVENTUALLY, PROMPTLY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_is_accepted_everywhere_and_stop_still_returns() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .name_prefix("hd-max")
        .shutdown_timeout(Duration::MAX)
        .check_interval(Duration::MAX)
        .default_lease(Duration::MAX)
        .lease_grace(Duration::MAX)
        .build()
        .unwrap();
    for round in 0..2 {
        within("start", m.start()).await.unwrap();
        let lease = within("acquire", m.acquire().timeout(Duration::MAX))
            .await
            .unwrap();
        assert_eq!(
            within("run", lease.run(move || round)).await.unwrap(),
            round
        );
        lease.release().await;
        within("stop with shutdown_timeout = Duration::MAX", m.stop()).await;
        assert!(
            testkit::wait_no_threads("hd-max", EVENTUALLY).is_empty(),
            "round {round}: threads left after stop"
        );
    }
    // Dropping a started manager with an unbounded shutdown still lets the host thread end.
    within("start", m.start()).await.unwrap();
    drop(m);
    assert!(
        testkit::wait_no_threads("hd-max", EVENTUALLY).is_empty(),
        "the host thread outlived its dropped manager"
    );
}

#[test]
fn stop_racing_acquires_that_grow_capacity_is_not_held_up() {
    let _deadline = testkit::deadline();
    testkit::block_on_tokio(async {
        for round in 0..150 {
            let m = LeaseManager::builder()
                .max_pools(8)
                .min_pools(0)
                .workers_per_pool(1)
                .name_prefix("hd-race")
                .shutdown_timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            m.start().await.unwrap();
            let go = Arc::new(std::sync::Barrier::new(5));
            let acquirers: Vec<_> = (0..4)
                .map(|_| {
                    let m = m.clone();
                    let go = Arc::clone(&go);
                    std::thread::spawn(move || {
                        go.wait();
                        for _ in 0..4 {
                            // Outcome does not matter; growing capacity while stopping does.
                            let _ = futures_executor::block_on(m.acquire().no_wait());
                        }
                    })
                })
                .collect();
            go.wait();
            let begun = Instant::now();
            within("stop", m.stop()).await;
            let took = begun.elapsed();
            for a in acquirers {
                a.join().unwrap();
            }
            assert!(
                took < Duration::from_secs(2),
                "round {round}: stop took {took:?} (a pool created during shutdown was never stopped)"
            );
        }
        assert!(testkit::wait_no_threads("hd-race", EVENTUALLY).is_empty());
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_target_with_a_short_check_interval_keeps_its_pool() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .max_pools(3)
        .min_pools(1)
        .workers_per_pool(1)
        .check_interval(Duration::from_millis(5))
        .name_prefix("hd-steady")
        .build()
        .unwrap();
    m.start().await.unwrap();
    let mut pools = Vec::new();
    for _ in 0..10 {
        let lease = m.acquire().await.unwrap();
        pools.push(lease.pool());
        // Several sizing ticks pass while the lease is held and while it is idle.
        tokio::time::sleep(Duration::from_millis(20)).await;
        lease.release().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        pools.iter().all(|p| *p == pools[0]),
        "the same pool is handed out again: {pools:?}"
    );
    let s = m.stats().await;
    assert_eq!((s.total, s.retiring, s.desired), (1, 0, 1), "{s:?}");
    assert_eq!(m.live_worker_threads(), 1, "no pool was churned");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_lease_with_a_running_job_is_not_draining() {
    let _deadline = testkit::deadline();
    let m = one_worker("hd-draining").await;
    let lease = m.acquire().await.unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let job = lease
        .submit(move || {
            started_tx.send(()).unwrap();
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
        })
        .unwrap();
    started_rx.recv_timeout(PROMPTLY).unwrap();
    let info = m.stats().await.leases[0].clone();
    assert_eq!((info.in_flight, info.draining), (1, false), "{info:?}");
    let releasing = tokio::spawn(lease.release());
    let info = stats_until(&m, "draining", |s| {
        s.leases.first().is_some_and(|l| l.draining)
    })
    .await
    .leases[0]
        .clone();
    assert_eq!(info.in_flight, 1);
    go_tx.send(()).unwrap();
    within("the job", job).await.unwrap();
    within("the release", releasing).await.unwrap();
    stats_until(&m, "the pool back", |s| s.available == 1 && s.leased == 0).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_dropped_midway_leaves_nothing_running_that_stop_cannot_end() {
    let _deadline = testkit::deadline();
    let prefix = "hd-cstart";
    let m = LeaseManager::builder()
        .workers_per_pool(2)
        .name_prefix(prefix)
        .shutdown_timeout(Duration::from_millis(500))
        .worker_state(|| std::thread::sleep(Duration::from_millis(400)))
        .build()
        .unwrap();
    for round in 0..3 {
        // Dropped while it waits for the (slow) initial pool.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), m.start())
                .await
                .is_err(),
            "round {round}: the start was still waiting"
        );
        within("stop after a dropped start", m.stop()).await;
        let left = testkit::wait_no_threads(prefix, EVENTUALLY);
        assert!(left.is_empty(), "round {round}: threads left: {left:?}");
        assert_eq!(
            m.acquire().no_wait().await.unwrap_err(),
            LeaseError::NotStarted,
            "round {round}: nothing runs after stop"
        );
    }
    // A dropped start does not prevent a real one, and that one stops cleanly.
    let _ = tokio::time::timeout(Duration::from_millis(50), m.start()).await;
    within("start", m.start()).await.unwrap();
    let lease = within("acquire", m.acquire()).await.unwrap();
    assert_eq!(within("run", lease.run(|| 1)).await, Ok(1));
    drop(lease);
    within("stop", m.stop()).await;
    assert!(testkit::wait_no_threads(prefix, EVENTUALLY).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_does_not_wait_behind_a_slow_start() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("hd-slowstart")
        .shutdown_timeout(Duration::from_millis(200))
        .worker_state(|| std::thread::sleep(Duration::from_secs(4)))
        .build()
        .unwrap();
    let starting = tokio::spawn({
        let m = m.clone();
        async move { m.start().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let begun = Instant::now();
    within("stop during a slow start", m.stop()).await;
    let took = begun.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "stop waited {took:?} behind a start whose factory takes 4 s"
    );
    match within("the start", starting).await.unwrap() {
        Err(LeaseError::StartFailed(_)) => {}
        other => panic!("a start stopped midway says so, got {other:?}"),
    }
}
