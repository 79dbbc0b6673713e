//! The thread backend's metrics after a mixed workload: every acquire outcome, jobs that
//! return and panic, a queued waiter served, one answered `Stopped` — and they agree with the
//! manager's own `Counters`.

use std::time::Duration;

use leasepool::metrics::*;
use leasepool::{LeaseError, LeaseManager};

use crate::recorded::Recorded;

const M: &str = "obs-thread";

#[testkit::test]
async fn thread_backend_metrics_agree_with_the_counters() {
    let recorded = Recorded::new();
    let m = recorded
        .build(|| {
            LeaseManager::builder()
                .name_prefix(M)
                .max_pools(2)
                .min_pools(2)
                .workers_per_pool(1)
                .build()
        })
        .unwrap();
    m.start().await.unwrap();

    let lease = m.acquire().await.unwrap();
    for i in 0..10u64 {
        assert_eq!(lease.run(move || i + 1).await.unwrap(), i + 1);
    }
    for _ in 0..3 {
        let panicked = lease.run(|| -> u64 { panic!("on purpose") }).await;
        assert!(
            matches!(panicked, Err(LeaseError::Panicked(_))),
            "{panicked:?}"
        );
    }
    let other = m.acquire().await.unwrap();
    // Both pools held: refused at once, then after a bounded wait.
    assert!(matches!(
        m.acquire().no_wait().await,
        Err(LeaseError::Unavailable)
    ));
    let timed = m.acquire().timeout(Duration::from_millis(60)).await;
    assert!(matches!(timed, Err(LeaseError::Timeout(_))), "{timed:?}");
    // An acquirer that gives up (its future dropped while queued).
    let gave_up = tokio::time::timeout(Duration::from_millis(30), m.acquire()).await;
    assert!(gave_up.is_err());
    // Bad input.
    let invalid = m.acquire().lease_for(Duration::ZERO).await;
    assert!(matches!(invalid, Err(LeaseError::InvalidArgument(_))));
    // A queued waiter served by a release.
    let queued = {
        let m = m.clone();
        actix_rt::spawn(async move { m.acquire_owned().await.map(|l| l.id()) })
    };
    testkit::stats_until(&m, "one waiter", |s| s.waiting == 1).await;
    lease.release().await;
    queued.await.unwrap().unwrap();
    // A queued waiter answered Stopped by `stop`, then an acquire on the stopped manager.
    let held = m.acquire().await.unwrap();
    let stopped = {
        let m = m.clone();
        actix_rt::spawn(async move { m.acquire_owned().await.map(|l| l.id()) })
    };
    testkit::stats_until(&m, "one waiter", |s| s.waiting == 1).await;
    m.stop().await;
    assert!(matches!(stopped.await.unwrap(), Err(LeaseError::Stopped)));
    assert!(matches!(m.acquire().await, Err(LeaseError::NotStarted)));
    drop((other, held));

    let c = m.stats().await.counters;
    let s = recorded.snapshot();
    let acq = |outcome: &str| s.counter(ACQUIRES, &[("manager", M), ("outcome", outcome)]);
    assert_eq!(acq("acquired"), c.acquired, "keys: {:?}", s.keys());
    assert_eq!(acq("timeout"), c.timed_out);
    assert_eq!(acq("unavailable"), c.rejected);
    assert_eq!(
        [acq("timeout"), acq("unavailable"), acq("cancelled")],
        [1, 1, 1]
    );
    assert_eq!(
        [acq("invalid"), acq("stopped"), acq("not_started")],
        [1, 1, 1]
    );
    // Every acquire is in the wait histogram, the refused ones included.
    for outcome in [
        "acquired",
        "timeout",
        "unavailable",
        "cancelled",
        "invalid",
        "stopped",
        "not_started",
    ] {
        let waits = s.histogram(ACQUIRE_WAIT, &[("manager", M), ("outcome", outcome)]);
        assert_eq!(waits.len() as u64, acq(outcome), "{outcome}");
    }
    let timeout_wait = s.histogram(ACQUIRE_WAIT, &[("manager", M), ("outcome", "timeout")]);
    assert!(timeout_wait[0] >= 0.06, "{timeout_wait:?}");

    let jobs = |outcome: &str| {
        s.counter(
            JOBS,
            &[("manager", M), ("backend", "thread"), ("outcome", outcome)],
        )
    };
    assert_eq!((jobs("ok"), jobs("panicked")), (10, 3));
    assert_eq!(jobs("ok"), c.jobs_completed);
    assert_eq!(jobs("panicked"), c.jobs_panicked);
    let ok_times = s.histogram(
        JOB_SECONDS,
        &[("manager", M), ("backend", "thread"), ("outcome", "ok")],
    );
    assert_eq!(ok_times.len(), 10);
    let rebuilt = s.counter(
        WORKERS_REPLACED,
        &[
            ("manager", M),
            ("backend", "thread"),
            ("reason", "state_rebuilt"),
        ],
    );
    assert_eq!(rebuilt, c.worker_states_rebuilt);
    assert_eq!(rebuilt, 3);
    let held = s.histogram(LEASE_HELD, &[("manager", M)]);
    assert_eq!(held.len() as u64, c.released + c.revoked);
    assert_eq!(s.gauge(JOBS_IN_FLIGHT, &[("manager", M)]), 0.0);
    // After the stop: nothing in service, nobody waiting.
    for state in ["available", "leased", "starting", "unhealthy"] {
        assert_eq!(
            s.gauge(POOLS, &[("manager", M), ("state", state)]),
            0.0,
            "{state}"
        );
    }
    assert_eq!(s.gauge(WAITERS, &[("manager", M)]), 0.0);
}

#[testkit::test]
async fn the_gauges_follow_the_pools_and_the_waiters() {
    let recorded = Recorded::new();
    let name = "obs-gauges";
    let m = recorded
        .build(|| {
            LeaseManager::builder()
                .name_prefix(name)
                .max_pools(3)
                .min_pools(3)
                .workers_per_pool(1)
                .build()
        })
        .unwrap();
    m.start().await.unwrap();
    let a = m.acquire().await.unwrap();
    let b = m.acquire().await.unwrap();
    let gate = testkit::Gate::new();
    let job = {
        let gate = gate.clone();
        a.submit(move || gate.wait()).unwrap()
    };
    // The supervisor brings the gauges up to date every second (FLUSH_EVERY) ...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = recorded.snapshot();
    assert_eq!(
        s.gauge(POOLS, &[("manager", name), ("state", "leased")]),
        2.0
    );
    assert_eq!(s.gauge(JOBS_IN_FLIGHT, &[("manager", name)]), 1.0);
    // ... and `stats()` at once. (A snapshot of this recorder zeroes its gauges.)
    let c = m.acquire().await.unwrap();
    let stats = m.stats().await;
    let s = recorded.snapshot();
    assert_eq!(
        s.gauge(POOLS, &[("manager", name), ("state", "leased")]),
        3.0
    );
    assert_eq!(
        s.gauge(POOLS, &[("manager", name), ("state", "available")]),
        stats.available as f64
    );
    assert_eq!(s.gauge(JOBS_IN_FLIGHT, &[("manager", name)]), 1.0);
    drop(c);
    gate.open();
    job.await.unwrap();
    drop((a, b));
    m.stop().await;
}

/// Hold times are recorded in batches off the lease's path (by the supervisor's thread, and at
/// each flush): every one of them reaches the recorder within a flush interval, with no
/// `stats()` call to push them.
#[testkit::test]
async fn every_hold_time_reaches_the_recorder_without_a_stats_call() {
    const LEASES: usize = 2_500; // two full batches and a remainder
    let recorded = Recorded::new();
    let name = "obs-holds";
    let m = recorded
        .build(|| {
            LeaseManager::builder()
                .name_prefix(name)
                .max_pools(1)
                .min_pools(1)
                .build()
        })
        .unwrap();
    m.start().await.unwrap();
    for _ in 0..LEASES {
        m.acquire().await.unwrap().release().await;
    }
    // Snapshots drain histograms: add them up.
    let mut seen = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen < LEASES && std::time::Instant::now() < deadline {
        seen += recorded
            .snapshot()
            .histogram(LEASE_HELD, &[("manager", name)])
            .len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, LEASES, "hold times recorded without a stats() call");
    m.stop().await;
}
