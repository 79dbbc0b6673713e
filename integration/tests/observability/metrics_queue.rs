//! A queue worker's metrics agree with its `QueueStats`, and every started task's wait is
//! recorded.

use std::time::Duration;

use leasepool::metrics::*;
use leasepool::queue::QueueWorker;
use leasepool::LeaseManager;

use crate::recorded::Recorded;

#[testkit::test]
async fn queue_metrics_agree_with_the_worker_stats() {
    let (queue, dir) = crate::sqlite_queue("lp-obs-queue").await;
    let recorded = Recorded::new();
    let m = LeaseManager::builder()
        .name_prefix("obs-queue")
        .max_pools(2)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let worker = recorded
        .build(|| {
            QueueWorker::builder(&m, &queue, "obs")
                .poll_interval(Duration::from_millis(5))
                .build_blocking(|job: String| -> Result<(), String> {
                    match job.as_str() {
                        "error" => Err("job said no".into()),
                        _ => Ok(()),
                    }
                })
        })
        .unwrap();
    for i in 0..6 {
        queue.push("obs", format!("fine {i}")).await.unwrap();
    }
    queue
        .push_with_attempts("obs", "error".to_string(), 1)
        .await
        .unwrap();
    worker.start().unwrap();
    testkit::until(
        "7 tasks settled",
        || std::future::ready(worker.stats()),
        |s| s.done + s.failed == 7,
    )
    .await;
    let stats = worker.stop().await;
    m.stop().await;

    let s = recorded.snapshot();
    let tasks = |outcome: &str| s.counter(QUEUE_TASKS, &[("queue", "obs"), ("outcome", outcome)]);
    assert_eq!(tasks("done"), stats.done, "keys: {:?}", s.keys());
    assert_eq!(tasks("failed"), stats.failed);
    assert_eq!(tasks("retried"), stats.retried);
    assert_eq!(tasks("put_back"), stats.put_back);
    assert_eq!(tasks("handed_back"), stats.handed_back);
    assert_eq!((tasks("done"), tasks("failed")), (6, 1));
    let waits = s.histogram(QUEUE_TASK_WAIT, &[("queue", "obs")]);
    assert_eq!(waits.len(), 7, "{waits:?}");
    // Pushed before the worker started, on this machine: waits are real and bounded.
    assert!(waits.iter().all(|w| (0.0..60.0).contains(w)), "{waits:?}");
    drop(dir);
}
