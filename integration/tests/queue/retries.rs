//! Retries back off by one policy on both stores (times read from the store), every attempt a
//! task was given is used (Redis: past apalis-redis' own cap of 25), a task's own policy wins,
//! what a dead worker left unsettled is set right, and failed attempts are logged.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leasepool::queue::{PushOptions, QueueWorker, RetryPolicy};

use crate::fixtures::*;

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A job that always fails and records when each run started.
fn failing_job(
    runs: &Arc<Mutex<Vec<SystemTime>>>,
) -> impl Fn(u64) -> Result<(), String> + Send + Sync + 'static {
    let runs = Arc::clone(runs);
    move |n: u64| {
        runs.lock().unwrap().push(SystemTime::now());
        Err(format!("task {n} fails on purpose"))
    }
}

/// (Before the fix SQLite retried at once: 25 attempts in 0.44 s; Redis waited `attempt` s.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn failed_attempts_wait_as_the_policy_says(kind: Kind) {
    let (queue, dir) = queue_for(kind, "backoff").await;
    let m = manager("q-backoff", 1).await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let policy =
        RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(2)).without_jitter();
    let worker = QueueWorker::builder(&m, &queue, "backoff")
        .poll_interval(Duration::from_millis(5))
        .retry(policy)
        .build_blocking(failing_job(&runs))
        .unwrap();
    let id = queue.push_with_attempts("backoff", 7_u64, 4).await.unwrap();
    // Delays 1 s, 2 s, then capped at 2 s.
    worker.start().unwrap();
    // After each failure, the store says when the next attempt is due.
    let mut due = Vec::new();
    for attempt in 1..=3_u64 {
        let t = testkit::until(
            &format!("attempt {attempt} failed and its retry scheduled"),
            || async { queue.task("backoff", &id).await.unwrap().unwrap() },
            |t| t.attempts == attempt && t.next_attempt_at.is_some(),
        )
        .await;
        due.push(secs(t.next_attempt_at.unwrap()));
    }
    testkit::until(
        "the task failed for good",
        || async { queue.task("backoff", &id).await.unwrap().unwrap() },
        |t| t.status == "Killed",
    )
    .await;
    worker.stop().await;
    m.stop().await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 4, "{kind:?}: four attempts");
    for (k, expected) in [1_u64, 2, 2].into_iter().enumerate() {
        let failed_at = secs(runs[k]);
        // Whole seconds, rounded up: due between `delay` and `delay + 1` s after the failure.
        assert!(
            due[k] >= failed_at + expected && due[k] <= failed_at + expected + 2,
            "{kind:?}: attempt {} failed at {failed_at}, next due {} (expected +{expected} s)",
            k + 1,
            due[k]
        );
        // And it did not run before.
        assert!(
            secs(runs[k + 1]) >= due[k],
            "{kind:?}: attempt {} ran at {} before it was due at {}",
            k + 2,
            secs(runs[k + 1]),
            due[k]
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// (Before the fix apalis-redis killed any task at 25 attempts, whatever it was given.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn a_task_gets_every_attempt_it_was_given(kind: Kind) {
    let (queue, dir) = queue_for(kind, "many").await;
    let m = manager("q-many", 1).await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = QueueWorker::builder(&m, &queue, "many")
        .poll_interval(Duration::from_millis(2))
        .retry(RetryPolicy::immediate())
        .build_blocking(failing_job(&runs))
        .unwrap();
    let id = queue.push_with_attempts("many", 1_u64, 30).await.unwrap();
    worker.start().unwrap();
    let t = testkit::until(
        "the task failed for good",
        || async { queue.task("many", &id).await.unwrap().unwrap() },
        |t| t.status == "Killed",
    )
    .await;
    let st = worker.stop().await;
    m.stop().await;
    assert_eq!(runs.lock().unwrap().len(), 30, "{kind:?}: {t:?} {st:?}");
    assert_eq!((t.attempts, t.max_attempts), (30, 30), "{kind:?}: {t:?}");
    let c = queue.counts("many").await.unwrap();
    assert_eq!((c.failed, c.pending), (1, 0), "{kind:?}: {c:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test(each = crate::fixtures::STORES)]
async fn a_pushed_policy_wins_over_the_workers(kind: Kind) {
    let (queue, dir) = queue_for(kind, "own").await;
    let m = manager("q-own", 1).await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    // The worker's policy would wait a minute; the task's own says at once.
    let worker = QueueWorker::builder(&m, &queue, "own")
        .poll_interval(Duration::from_millis(5))
        .retry(RetryPolicy::fixed(Duration::from_secs(60)))
        .build_blocking(failing_job(&runs))
        .unwrap();
    let options = PushOptions::new()
        .max_attempts(3)
        .retry(RetryPolicy::immediate());
    let id = queue.push_with("own", 3_u64, options).await.unwrap();
    worker.start().unwrap();
    testkit::until(
        "three attempts, at once",
        || async { queue.task("own", &id).await.unwrap().unwrap() },
        |t| t.status == "Killed",
    )
    .await;
    worker.stop().await;
    m.stop().await;
    assert_eq!(runs.lock().unwrap().len(), 3, "{kind:?}");
    // A bad policy is refused at push.
    let bad = PushOptions::new().retry(RetryPolicy::fixed(Duration::MAX));
    assert!(matches!(
        queue.push_with("own", 1_u64, bad).await,
        Err(leasepool::queue::QueueError::InvalidArgument(t)) if t.contains("retry delay")
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// Redis: a worker that died after apalis killed its failed task at 25 attempts (apalis-redis'
/// own cap) but before it moved the task to its retry time leaves it in the dead set; the next
/// worker's sweep revives it.
#[testkit::test]
async fn a_retry_left_unsettled_by_a_dead_worker_is_revived() {
    let queue = open(&redis_url()).await;
    let name = "revive";
    let id = queue.push_with_attempts(name, 5_u64, 30).await.unwrap();
    // What the dead worker left: status Failed at attempt 26 in the dead set, its intent to
    // retry written an hour ago.
    let mut c = redis_conn();
    let hour_ago = secs(SystemTime::now()) - 3600;
    let cmds: Vec<redis::Cmd> = vec![
        redis::cmd("LREM")
            .arg(format!("{name}:active"))
            .arg(0)
            .arg(&id)
            .clone(),
        redis::cmd("SADD")
            .arg(format!("{name}:dead"))
            .arg(&id)
            .clone(),
        redis::cmd("HSET")
            .arg(format!("{name}:meta:{id}"))
            .arg("status")
            .arg("Failed")
            .arg("attempts")
            .arg(26)
            .clone(),
        redis::cmd("ZADD")
            .arg(format!("{name}:leasepool_settling"))
            .arg(hour_ago)
            .arg(format!("{id}|26|r{hour_ago}"))
            .clone(),
    ];
    for cmd in cmds {
        let _: redis::Value = cmd.query(&mut c).unwrap();
    }
    // Counted as waiting, not failed, while it waits to be revived.
    let counts = queue.counts(name).await.unwrap();
    assert_eq!((counts.pending, counts.failed), (1, 0), "{counts:?}");
    let m = manager("q-revive", 1).await;
    let worker = QueueWorker::builder(&m, &queue, name)
        .poll_interval(Duration::from_millis(5))
        .orphan_timeout(Duration::from_secs(5))
        .build_blocking(|_: u64| -> Result<(), String> { Ok(()) })
        .unwrap();
    worker.start().unwrap();
    let t = testkit::until(
        "the task revived and done",
        || async { queue.task(name, &id).await.unwrap().unwrap() },
        |t| t.status == "Done",
    )
    .await;
    assert_eq!(t.attempts, 27, "{t:?}");
    worker.stop().await;
    m.stop().await;
}

/// Each failed attempt is logged at WARN with the task, queue, attempt/max, the error and the
/// next run time; the final failure at ERROR. (Before, the error text was logged nowhere.)
#[testkit::test(each = crate::fixtures::STORES)]
async fn failed_attempts_are_logged(kind: Kind) {
    let (queue, dir) = queue_for(kind, "logged").await;
    let m = manager("q-logged", 1).await;
    let runs = Arc::new(Mutex::new(Vec::new()));
    let worker = QueueWorker::builder(&m, &queue, "logged")
        .poll_interval(Duration::from_millis(5))
        .retry(RetryPolicy::immediate())
        .build_blocking(failing_job(&runs))
        .unwrap();
    let id = queue.push_with_attempts("logged", 11_u64, 3).await.unwrap();
    worker.start().unwrap();
    testkit::until(
        "the task failed for good",
        || async { queue.task("logged", &id).await.unwrap().unwrap() },
        |t| t.status == "Killed",
    )
    .await;
    worker.stop().await;
    m.stop().await;
    let logged = logged(&id);
    let warns: Vec<_> = logged
        .iter()
        .filter(|l| l.level == tracing::Level::WARN)
        .collect();
    let errors: Vec<_> = logged
        .iter()
        .filter(|l| l.level == tracing::Level::ERROR)
        .collect();
    assert_eq!((warns.len(), errors.len()), (2, 1), "{kind:?}: {logged:#?}");
    for (n, w) in warns.iter().enumerate() {
        let f = &w.fields;
        assert_eq!(
            f.get("attempt").map(String::as_str),
            Some(&*(n + 1).to_string()),
            "{f:?}"
        );
        assert_eq!(
            f.get("max_attempts").map(String::as_str),
            Some("3"),
            "{f:?}"
        );
        assert_eq!(f.get("queue").map(String::as_str), Some("logged"), "{f:?}");
        assert!(f["error"].contains("task 11 fails on purpose"), "{f:?}");
        assert!(f.contains_key("next_attempt_at"), "{f:?}");
    }
    let e = &errors[0].fields;
    assert_eq!(e.get("attempt").map(String::as_str), Some("3"), "{e:?}");
    assert!(e["error"].contains("task 11 fails on purpose"), "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
}
