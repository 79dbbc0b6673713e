//! Settings and arguments refused by name.

#![allow(unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

use crate::fixtures::*;

#[testkit::test(each = crate::fixtures::STORES)]
async fn bad_settings_are_refused_by_name(kind: Kind) {
    let (queue, dir) = queue_for(kind, "bad").await;
    let m = manager("q-bad", 1).await;
    let refuse = |b: leasepool::queue::QueueWorkerBuilder<()>, what: &str| match b
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
    {
        Err(QueueError::InvalidArgument(t)) => assert!(t.contains(what), "{t}"),
        other => panic!("expected InvalidArgument naming {what}: {other:?}"),
    };
    refuse(QueueWorker::builder(&m, &queue, ""), "queue name");
    refuse(
        QueueWorker::builder(&m, &queue, "q").poll_interval(Duration::ZERO),
        "poll_interval",
    );
    refuse(
        QueueWorker::builder(&m, &queue, "q").orphan_timeout(Duration::from_millis(10)),
        "orphan_timeout",
    );
    refuse(
        QueueWorker::builder(&m, &queue, "q").lease_wait(Duration::ZERO),
        "lease_wait",
    );
    refuse(
        QueueWorker::builder(&m, &queue, "q").lease_for(Duration::ZERO),
        "lease_for",
    );
    assert!(matches!(
        queue.push_with_attempts("q", 1_u64, 0).await,
        Err(QueueError::InvalidArgument(t)) if t.contains("max_attempts")
    ));
    let w = QueueWorker::builder(&m, &queue, "q")
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    w.start().unwrap();
    assert!(matches!(w.start(), Err(QueueError::AlreadyRunning(_))));
    w.stop().await;
    let err = Queue::sqlite("/proc/no/such/dir/q.db").await.unwrap_err();
    assert!(
        matches!(err, QueueError::Store(ref t) if t.contains("/proc/no/such/dir")),
        "{err}"
    );
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Attempts are checked against the range every store holds, refused by name. (Before the fix
/// Redis took `n ≥ 2³²` and then every fetch failed on it; SQLite stored `n ≥ 2⁶³` negative:
/// "never retry"; PostgreSQL stored `n ≥ 2³¹` wrapped.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn attempts_are_what_every_store_holds(kind: Kind) {
    use leasepool::queue::MAX_ATTEMPTS;
    let (queue, dir) = queue_for(kind, "attempts").await;
    for bad in [0, MAX_ATTEMPTS + 1, u32::MAX as usize, 1 << 63, usize::MAX] {
        match queue.push_with_attempts("attempts", 1_u64, bad).await {
            Err(QueueError::InvalidArgument(t)) => {
                assert!(
                    t.contains(&format!("max_attempts ({bad})")) && t.contains("MAX_ATTEMPTS"),
                    "{t}"
                )
            }
            other => panic!("{kind:?}: max_attempts {bad}: {other:?}"),
        }
    }
    let id = queue
        .push_with_attempts("attempts", 1_u64, MAX_ATTEMPTS)
        .await
        .unwrap();
    let t = queue.task("attempts", &id).await.unwrap().unwrap();
    assert_eq!(t.max_attempts, MAX_ATTEMPTS as u64, "{kind:?}: {t:?}");
    // push_all says which ids it pushed; a task is found only in its own queue.
    let ids = queue.push_all("attempts", [2_u64, 3, 4]).await.unwrap();
    assert_eq!(ids.len(), 3);
    for id in &ids {
        assert!(
            queue.task("attempts", id).await.unwrap().is_some(),
            "{kind:?}: {id}"
        );
        assert_eq!(
            queue.task("elsewhere", id).await.unwrap(),
            None,
            "{kind:?}: {id}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
