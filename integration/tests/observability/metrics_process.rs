//! The process backend's metrics: jobs that return, panic, cannot encode their output, crash
//! their child, and run past their lease (the child killed) — and the children replaced, by
//! reason — agree with the manager's `Counters`.

use std::time::Duration;

use leasepool::metrics::*;
use leasepool::{Backend, LeaseError, LeaseManager};

use crate::jobs::{self, Abort, Double, Panic, Spin, Unsendable};
use crate::recorded::Recorded;

const M: &str = "obs-process";

#[testkit::test]
async fn process_backend_metrics_agree_with_the_counters() {
    let recorded = Recorded::new();
    let m = recorded
        .build(|| {
            LeaseManager::builder()
                .name_prefix(M)
                .backend(Backend::Process)
                .process_jobs(jobs::jobs())
                .max_pools(1)
                .min_pools(1)
                .workers_per_pool(1)
                .lease_grace(Duration::ZERO)
                .build()
        })
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    for i in 0..5 {
        assert_eq!(lease.call(Double(i)).await.unwrap(), 2 * i);
    }
    let panicked = lease.call(Panic).await;
    assert!(
        matches!(panicked, Err(LeaseError::Panicked(_))),
        "{panicked:?}"
    );
    let invalid = lease.call(Unsendable).await;
    assert!(
        matches!(invalid, Err(LeaseError::ProcessJob(_))),
        "{invalid:?}"
    );
    let lost = lease.call(Abort).await;
    assert!(matches!(lost, Err(LeaseError::WorkerLost)), "{lost:?}");
    lease.release().await;
    let short = m
        .acquire()
        .lease_for(Duration::from_millis(300))
        .await
        .unwrap();
    let expired = short.call(Spin).await;
    assert!(matches!(expired, Err(LeaseError::Expired)), "{expired:?}");
    drop(short);
    m.stop().await;

    let c = m.stats().await.counters;
    let s = recorded.snapshot();
    let jobs = |outcome: &str| {
        s.counter(
            JOBS,
            &[("manager", M), ("backend", "process"), ("outcome", outcome)],
        )
    };
    assert_eq!(jobs("ok"), c.jobs_completed, "keys: {:?}", s.keys());
    assert_eq!(jobs("panicked"), c.jobs_panicked);
    assert_eq!(jobs("invalid"), c.jobs_failed);
    assert_eq!(
        jobs("worker_lost") + jobs("expired") + jobs("stopped"),
        c.jobs_lost
    );
    assert_eq!([jobs("ok"), jobs("panicked"), jobs("invalid")], [5, 1, 1]);
    assert_eq!([jobs("worker_lost"), jobs("expired")], [1, 1]);
    for outcome in ["ok", "panicked", "invalid", "worker_lost", "expired"] {
        let times = s.histogram(
            JOB_SECONDS,
            &[("manager", M), ("backend", "process"), ("outcome", outcome)],
        );
        assert_eq!(times.len() as u64, jobs(outcome), "{outcome}");
    }
    // The runaway ran until its lease's hard expiry (300 ms): its time says so.
    let spun = s.histogram(
        JOB_SECONDS,
        &[
            ("manager", M),
            ("backend", "process"),
            ("outcome", "expired"),
        ],
    );
    assert!(spun[0] >= 0.25, "{spun:?}");
    let replaced = |reason: &str| {
        s.counter(
            WORKERS_REPLACED,
            &[("manager", M), ("backend", "process"), ("reason", reason)],
        )
    };
    assert_eq!(replaced("crashed"), c.children_crashed);
    assert_eq!(replaced("killed"), c.children_killed);
    assert_eq!([replaced("crashed"), replaced("killed")], [1, 1]);
    assert_eq!(s.gauge(JOBS_IN_FLIGHT, &[("manager", M)]), 0.0);
}
