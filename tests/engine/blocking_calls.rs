//! Blocking calls on and off runtimes: a blocking wait on a runtime thread is an error, not a
//! panic; `submit_blocking` works where blocking is allowed.

use leasepool::{LeaseError, StopMode, WorkGrinder};
use testkit::{one_worker, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_wait_on_a_runtime_thread_is_an_error_not_a_panic() {
    let _deadline = testkit::deadline();
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
    let _deadline = testkit::deadline();
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
