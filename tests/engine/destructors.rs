//! User destructors that panic — a job's payload, a result nobody waits for, a skipped job's
//! captures — never kill a worker thread.

use std::time::Duration;

use leasepool::LeaseError;
use testkit::{one_worker, within, PROMPTLY};

/// A panic payload whose own destructor panics.
struct PanickyPayload;

impl Drop for PanickyPayload {
    fn drop(&mut self) {
        panic!("the payload's destructor panicked");
    }
}

/// A job result that panics when dropped.
struct PanickyResult;

impl Drop for PanickyResult {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("the result's destructor panicked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_panics_when_dropped_does_not_kill_the_worker() {
    let _deadline = testkit::deadline();
    let m = one_worker("hd-payload").await;
    let lease = m.acquire().await.unwrap();
    let bomb = lease
        .submit(|| std::panic::panic_any(PanickyPayload))
        .unwrap();
    let next = lease.submit(|| "next").unwrap();
    assert!(
        matches!(
            within("the panicking job", bomb).await,
            Err(LeaseError::Panicked(_))
        ),
        "the job panicked, it did not lose its worker"
    );
    assert_eq!(within("the next job", next).await, Ok("next"));
    let c = m.stats().await.counters;
    assert_eq!(c.jobs_panicked, 1);
    assert_eq!(c.worker_state_failures, 0, "the state factory never failed");
    assert_eq!(c.workers_replaced, 0, "no worker thread had to be replaced");
    lease.release().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_panics_when_dropped_after_its_caller_left_does_not_kill_the_worker() {
    let _deadline = testkit::deadline();
    let m = one_worker("hd-result").await;
    let lease = m.acquire().await.unwrap();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let handle = lease
        .submit(move || {
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
            PanickyResult
        })
        .unwrap();
    drop(handle); // nobody will take the result: it is dropped on the worker
    go_tx.send(()).unwrap();
    let next = lease.submit(|| "next").unwrap();
    assert_eq!(within("the next job", next).await, Ok("next"));
    let c = m.stats().await.counters;
    assert_eq!(c.worker_state_failures, 0, "the state factory never failed");
    assert_eq!(c.workers_replaced, 0, "no worker thread had to be replaced");
    lease.release().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_job_whose_captures_panic_when_dropped_does_not_kill_the_worker() {
    let _deadline = testkit::deadline();
    let m = one_worker("hd-skip").await;
    let lease = m.acquire().await.unwrap();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let blocker = lease
        .submit(move || {
            started_tx.send(()).unwrap();
            let _ = go_rx.recv_timeout(Duration::from_secs(30));
        })
        .unwrap();
    started_rx.recv_timeout(PROMPTLY).unwrap();
    // Queued behind the blocker, then abandoned: the worker skips it and drops its closure.
    let capture = PanickyResult;
    let abandoned = lease.run(move || {
        let _keep = &capture;
    });
    let _ = tokio::time::timeout(Duration::from_millis(20), abandoned).await;
    go_tx.send(()).unwrap();
    within("the blocker", blocker).await.unwrap();
    assert_eq!(
        within("the next job", lease.run(|| "next")).await,
        Ok("next")
    );
    assert_eq!(m.stats().await.counters.workers_replaced, 0);
    lease.release().await;
    m.stop().await;
}
