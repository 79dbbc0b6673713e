//! Settings and arguments refused by name.

#![allow(unused_imports)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::queue::{Queue, QueueError, QueueWorker};
use leasepool::LeaseManager;

use crate::common;
use crate::fixtures::*;

pub(crate) async fn bad_settings_are_refused_by_name(kind: Kind) {
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
