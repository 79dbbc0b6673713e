//! Hardening: settings at their extremes, shutdown racing growth, payloads and results that
//! panic when dropped, blocking calls on and off runtimes. Every await that could hang is bounded.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{stats_until, EVENTUALLY};
use leasepool::{LeaseError, LeaseManager, StopMode, WorkGrinder};

/// Bound for an operation that must not hang (it usually takes milliseconds).
const PROMPTLY: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(PROMPTLY, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {PROMPTLY:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_max_is_accepted_everywhere_and_stop_still_returns() {
    let _deadline = common::deadline();
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
            common::wait_no_threads("hd-max", EVENTUALLY).is_empty(),
            "round {round}: threads left after stop"
        );
    }
    // Dropping a started manager with an unbounded shutdown still lets the host thread end.
    within("start", m.start()).await.unwrap();
    drop(m);
    assert!(
        common::wait_no_threads("hd-max", EVENTUALLY).is_empty(),
        "the host thread outlived its dropped manager"
    );
}

#[test]
fn stop_racing_acquires_that_grow_capacity_is_not_held_up() {
    let _deadline = common::deadline();
    common::block_on_tokio(async {
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
        assert!(common::wait_no_threads("hd-race", EVENTUALLY).is_empty());
    });
}

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

async fn one_worker(prefix: &str) -> LeaseManager {
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix(prefix)
        .build()
        .unwrap();
    m.start().await.unwrap();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_panics_when_dropped_does_not_kill_the_worker() {
    let _deadline = common::deadline();
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
    assert_eq!(c.pools_restarted, 0, "no worker thread had to be replaced");
    lease.release().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_that_panics_when_dropped_after_its_caller_left_does_not_kill_the_worker() {
    let _deadline = common::deadline();
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
    assert_eq!(c.pools_restarted, 0, "no worker thread had to be replaced");
    lease.release().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_job_whose_captures_panic_when_dropped_does_not_kill_the_worker() {
    let _deadline = common::deadline();
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
    assert_eq!(m.stats().await.counters.pools_restarted, 0);
    lease.release().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_wait_on_a_runtime_thread_is_an_error_not_a_panic() {
    let _deadline = common::deadline();
    let m = one_worker("hd-bwait").await;
    let lease = m.acquire().await.unwrap();
    let handle = lease.submit(|| 1).unwrap();
    assert!(matches!(
        handle.blocking_wait(),
        Err(LeaseError::BlockingOnRuntime(_))
    ));
    // Off the runtime it waits as documented.
    let handle = lease.submit(|| 2).unwrap();
    let off = std::thread::spawn(move || handle.blocking_wait());
    assert_eq!(off.join().unwrap(), Ok(2));
    lease.release().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_blocking_works_where_blocking_is_allowed_and_refuses_on_runtime_workers() {
    let _deadline = common::deadline();
    let m = one_worker("hd-sblock").await;
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(1)
        .build()
        .unwrap();
    g.start().await.unwrap();

    // On an async task of a runtime worker: refused.
    assert!(matches!(
        g.submit_blocking(|| 0),
        Err(LeaseError::BlockingOnRuntime(_))
    ));

    // Inside spawn_blocking (the counterpart of Python's asyncio.to_thread): allowed.
    let in_blocking = tokio::task::spawn_blocking({
        let g = g.clone();
        move || g.submit_blocking(|| 1)
    });
    assert_eq!(within("spawn_blocking", in_blocking).await.unwrap(), Ok(1));

    // A plain thread that merely entered a runtime handle: allowed.
    let handle = tokio::runtime::Handle::current();
    let entered = std::thread::spawn({
        let g = g.clone();
        move || {
            let _guard = handle.enter();
            g.submit_blocking(|| 2)
        }
    });
    assert_eq!(entered.join().unwrap(), Ok(2));

    // On an actix System's thread: refused.
    let on_actix = std::thread::spawn({
        let g = g.clone();
        move || actix_rt::System::new().block_on(async move { g.submit_blocking(|| 3) })
    });
    assert!(matches!(
        on_actix.join().unwrap(),
        Err(LeaseError::BlockingOnRuntime(_))
    ));

    // Inside a current-thread runtime's block_on: refused.
    let in_block_on = std::thread::spawn({
        let g = g.clone();
        move || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(async move { g.submit_blocking(|| 4) })
        }
    });
    assert!(matches!(
        in_block_on.join().unwrap(),
        Err(LeaseError::BlockingOnRuntime(_))
    ));

    g.stop(StopMode::Drain).await;
    m.stop().await;
}

/// A `try_worker_state` factory that fails while `failing` is set.
fn switchable_factory(
    failing: &Arc<AtomicBool>,
    calls: &Arc<AtomicUsize>,
) -> impl Fn() -> Result<u32, String> + Send + Sync + 'static {
    let failing = Arc::clone(failing);
    let calls = Arc::clone(calls);
    move || {
        calls.fetch_add(1, SeqCst);
        if failing.load(SeqCst) {
            Err("unable to open database file".to_owned())
        } else {
            Ok(7)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_went_unhealthy_while_leased_leaves_the_unhealthy_count_when_retired() {
    let _deadline = common::deadline();
    let failing = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("hd-unhealthy")
        .lease_grace(Duration::ZERO)
        .try_worker_state(switchable_factory(&failing, &calls))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m
        .acquire()
        .lease_for(Duration::from_millis(600))
        .await
        .unwrap();
    failing.store(true, SeqCst);
    assert!(m.kill_worker(lease.pool(), 1).await);
    stats_until(&m, "the leased pool to turn unhealthy", |s| {
        s.unhealthy == 1
    })
    .await;
    // The lease expires; its (unhealthy) pool is retired and replaced by a healthy one.
    stats_until(&m, "the lease to be revoked", |s| s.counters.revoked == 1).await;
    failing.store(false, SeqCst);
    let s = stats_until(&m, "the unhealthy count to drop", |s| {
        s.unhealthy == 0 && s.available == 1
    })
    .await;
    common::assert_invariant(&s);
    drop(lease);
    m.stop().await;
}
