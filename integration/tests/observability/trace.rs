//! Trace context follows the job: a job runs in a `job` span whose parent is the span current
//! where it was submitted — on a worker thread, in a grinder batch, and (for the child's
//! forwarded log lines, with its pid) across the process boundary.

use tracing::Instrument;

use leasepool::{Backend, LeaseManager, WorkGrinder};

use crate::jobs::{self, Say};
use crate::spans::{seen, Seen};

/// The names of `event`'s spans, innermost first.
fn names(event: &Seen) -> Vec<&str> {
    event.scope.iter().map(|(name, _)| name.as_str()).collect()
}

/// A started process-backend manager: one pool of one worker, this binary's jobs.
async fn process_manager(name: &str) -> LeaseManager {
    let m = LeaseManager::builder()
        .name_prefix(name)
        .backend(Backend::Process)
        .process_jobs(jobs::jobs())
        .max_pools(1)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    m
}

/// The child's forwarded "the child says" line that said `said`, once it has been read.
async fn child_said(said: &str) -> Seen {
    let found = testkit::until(
        "the child's line, forwarded",
        || {
            std::future::ready(seen(|e| {
                e.message == "the child says"
                    && e.fields.get("fields").is_some_and(|f| f.contains(said))
            }))
        },
        |found| !found.is_empty(),
    )
    .await;
    found.into_iter().next().unwrap()
}

fn one(message: &str) -> Seen {
    let found = seen(|e| e.message == message);
    assert_eq!(found.len(), 1, "{message:?}: {found:#?}");
    found.into_iter().next().unwrap()
}

#[testkit::test]
async fn a_job_on_a_worker_thread_runs_under_the_submitters_span() {
    let m = LeaseManager::builder()
        .name_prefix("obs-trace")
        .max_pools(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    async {
        lease.run(|| tracing::info!("inside run")).await.unwrap();
        lease
            .submit(|| tracing::info!("inside submit"))
            .unwrap()
            .await
            .unwrap();
    }
    .instrument(tracing::info_span!("request", id = 7))
    .await;
    lease.release().await;
    let grinder = WorkGrinder::builder(&m)
        .max_wait(std::time::Duration::from_millis(5))
        .build()
        .unwrap();
    grinder.start().await.unwrap();
    grinder
        .submit(|| tracing::info!("inside a grinder item"))
        .instrument(tracing::info_span!("request", id = 8))
        .await
        .unwrap();
    grinder.stop(leasepool::StopMode::Drain).await;
    m.stop().await;

    for (message, request) in [
        ("inside run", "7"),
        ("inside submit", "7"),
        ("inside a grinder item", "8"),
    ] {
        let event = one(message);
        assert_eq!(names(&event), ["job", "request"], "{event:#?}");
        let (_, job) = &event.scope[0];
        assert_eq!(job.get("manager").map(String::as_str), Some("obs-trace"));
        assert!(
            job.get("lease_id").is_some_and(|l| l.starts_with("lease-")),
            "{job:?}"
        );
        assert_eq!(
            event.scope[1].1.get("id").map(String::as_str),
            Some(request)
        );
        assert_eq!(event.target, "observability::trace");
    }
}

#[testkit::test]
async fn a_childs_log_line_is_recorded_under_the_job_that_wrote_it_with_its_pid() {
    let m = process_manager("obs-trace-p").await;
    let lease = m.acquire().await.unwrap();
    let mut pids = Vec::new();
    for (n, said) in ["first", "second", "third"].iter().enumerate() {
        let pid = lease
            .call(Say((*said).to_owned()))
            .instrument(tracing::info_span!("request", id = n))
            .await
            .unwrap();
        pids.push(pid);
    }
    lease.release().await;
    m.stop().await;

    for (n, said) in ["first", "second", "third"].iter().enumerate() {
        let event = &child_said(said).await;
        assert_eq!(event.target, "leasepool::process::child");
        assert_eq!(names(event), ["job", "request"], "{event:#?}");
        assert_eq!(
            event.scope[1].1.get("id").map(String::as_str),
            Some(n.to_string().as_str()),
            "the line of job {n} is under request {n}: {event:#?}"
        );
        assert_eq!(event.fields.get("pid"), Some(&pids[n].to_string()));
    }
}

#[testkit::test]
async fn a_queue_task_runs_under_a_span_that_carries_its_producers_traceparent() {
    use leasepool::queue::{PushOptions, QueueError, QueueWorker};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let (queue, dir) = crate::sqlite_queue("lp-obs-trace").await;
    let m = LeaseManager::builder()
        .name_prefix("obs-trace-q")
        .max_pools(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let hooked: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let worker = {
        let hooked = Arc::clone(&hooked);
        QueueWorker::builder(&m, &queue, "traced")
            .poll_interval(Duration::from_millis(5))
            .on_task_span(move |_span, traceparent| {
                hooked.lock().unwrap().push(traceparent.map(str::to_owned));
            })
            .build_blocking(|said: String| -> Result<(), String> {
                tracing::info!(said = %said, "a queue task runs");
                Ok(())
            })
            .unwrap()
    };
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = PushOptions::new().trace_parent(traceparent);
    queue
        .push_with("traced", "with".to_string(), traced)
        .await
        .unwrap();
    queue.push("traced", "without".to_string()).await.unwrap();
    // A malformed value is refused at push, naming what is wrong.
    let bad = PushOptions::new().trace_parent("00-nope");
    let refused = queue.push_with("traced", "bad".to_string(), bad).await;
    assert!(
        matches!(&refused, Err(QueueError::InvalidArgument(why)) if why.contains("trace_parent")),
        "{refused:?}"
    );
    worker.start().unwrap();
    testkit::until(
        "both tasks done",
        || std::future::ready(worker.stats()),
        |s| s.done == 2,
    )
    .await;
    worker.stop().await;
    m.stop().await;

    let mut hooked = hooked.lock().unwrap().clone();
    hooked.sort();
    assert_eq!(hooked, [None, Some(traceparent.to_owned())]);
    for (said, expected) in [("with", traceparent), ("without", "")] {
        let found = seen(|e| {
            e.message == "a queue task runs"
                && e.fields.get("said").map(String::as_str) == Some(said)
        });
        assert_eq!(found.len(), 1, "{found:#?}");
        let event = &found[0];
        assert_eq!(names(event), ["job", "queue_task"], "{event:#?}");
        let task = &event.scope[1].1;
        assert_eq!(task.get("traceparent").map(String::as_str), Some(expected));
        assert_eq!(task.get("queue").map(String::as_str), Some("traced"));
    }
    drop(dir);
}

#[testkit::test]
async fn a_process_grinder_part_is_linked_to_every_items_submitter() {
    let m = process_manager("obs-trace-g").await;
    let grinder = WorkGrinder::builder(&m)
        .max_wait(std::time::Duration::from_millis(50))
        .build()
        .unwrap();
    grinder.start().await.unwrap();
    let calls = (0..3).map(|n| {
        grinder
            .submit_call(Say(format!("item {n}")))
            .instrument(tracing::info_span!("request", id = 100 + n))
    });
    for pid in futures_util::future::join_all(calls).await {
        pid.unwrap();
    }
    grinder.stop(leasepool::StopMode::Drain).await;
    m.stop().await;

    for n in 0..3 {
        let said = format!("item {n}");
        let event = &child_said(&said).await;
        assert_eq!(names(event), ["job", "grinder_part"], "{event:#?}");
        let links = event.scope[1]
            .1
            .get("follows_from")
            .cloned()
            .unwrap_or_default();
        let mut links: Vec<&str> = links.split(',').collect();
        links.sort_unstable();
        assert_eq!(links, ["100", "101", "102"], "{event:#?}");
    }
}

#[testkit::test]
async fn a_process_jobs_spans_close_when_the_job_ends() {
    let m = process_manager("obs-trace-close").await;
    let lease = m.acquire().await.unwrap();
    lease
        .call(Say("closing".to_owned()))
        .instrument(tracing::info_span!("request", id = 900))
        .await
        .unwrap();
    // No other job runs on that child: its log reader must let go of the job's span (and so
    // of the request's) by itself, once the job's lines are read.
    testkit::until(
        "the request span closed",
        || std::future::ready(crate::spans::has_closed("request", "900")),
        |closed| *closed,
    )
    .await;
    lease.release().await;
    m.stop().await;
}

#[testkit::test]
async fn a_panicking_on_task_span_hook_costs_the_task_nothing() {
    use leasepool::queue::{PushOptions, QueueWorker};
    use std::time::Duration;

    let (queue, dir) = crate::sqlite_queue("lp-obs-hook").await;
    let m = LeaseManager::builder()
        .name_prefix("obs-hook")
        .max_pools(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let worker = QueueWorker::builder(&m, &queue, "hooked")
        .poll_interval(Duration::from_millis(5))
        .on_task_span(|_span, traceparent| {
            if traceparent.is_some() {
                panic!("on purpose");
            }
        })
        .build_blocking(|_: String| -> Result<(), String> { Ok(()) })
        .unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = PushOptions::new().trace_parent(traceparent);
    queue
        .push_with("hooked", "x".to_string(), traced)
        .await
        .unwrap();
    queue.push("hooked", "y".to_string()).await.unwrap();
    worker.start().unwrap();
    let stats = testkit::until(
        "both tasks done",
        || std::future::ready(worker.stats()),
        |s| s.done == 2,
    )
    .await;
    assert_eq!(stats.restarts, 0, "{stats:?}");
    worker.stop().await;
    m.stop().await;
    drop(dir);
}
