//! leasepool from a tokio multi-thread runtime, a plain thread, and inside an actix System.

use std::rc::Rc;
use std::time::Duration;

use leasepool::{Lease, LeaseError, LeaseManager};

fn assert_send_sync<T: Send + Sync>() {}
fn assert_send<T: Send>(_: &T) {}

#[test]
fn handles_are_send_and_sync_even_with_non_send_worker_state() {
    let _deadline = testkit::deadline();
    assert_send_sync::<LeaseManager>();
    assert_send_sync::<Lease>();
    // Worker state never leaves its thread, so it need not be Send.
    assert_send_sync::<LeaseManager<Rc<u8>>>();
    assert_send_sync::<Lease<Rc<u8>>>();
    assert_send_sync::<leasepool::JobHandle<String>>();
    assert_send_sync::<leasepool::WorkGrinder>();
}

#[test]
fn futures_are_send() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder().build().unwrap();
    assert_send(&manager.start());
    assert_send(&manager.stop());
    assert_send(&manager.stats());
    assert_send(&std::future::IntoFuture::into_future(manager.acquire()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_from_a_tokio_multi_thread_runtime() {
    let _deadline = testkit::deadline();
    let manager = testkit::started("rt-tokio", 2, 2).await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let m = manager.clone();
        tasks.push(tokio::spawn(async move {
            let lease = m.acquire().await?;
            let v = lease.run(move || i * 2).await?;
            lease.release().await;
            Ok::<_, LeaseError>(v)
        }));
    }
    let mut sum = 0;
    for t in tasks {
        sum += t.await.unwrap().unwrap();
    }
    assert_eq!(sum, 2 * (0..8).sum::<u64>());
    manager.stop().await;
}

#[test]
fn works_from_a_plain_thread_with_block_on() {
    let _deadline = testkit::deadline();
    use futures_executor::block_on;
    let handle = std::thread::spawn(|| {
        let manager = LeaseManager::builder()
            .workers_per_pool(1)
            .name_prefix("rt-plain")
            .build()
            .unwrap();
        block_on(manager.start()).unwrap();
        let lease = block_on(manager.acquire().owner("plain")).unwrap();
        assert_eq!(
            block_on(lease.run(|| "from a plain thread")).unwrap(),
            "from a plain thread"
        );
        // Timers live on the host thread, so a bounded wait works without any runtime here.
        let err = block_on(manager.acquire().timeout(Duration::from_millis(100))).unwrap_err();
        assert_eq!(err, LeaseError::Timeout(Duration::from_millis(100)));
        drop(lease); // Drop releases without a runtime.
        let again = block_on(manager.acquire().timeout(Duration::from_secs(20))).unwrap();
        block_on(again.release());
        block_on(manager.stop());
    });
    handle.join().unwrap();
}

#[actix_rt::test]
async fn works_inside_an_actix_system() {
    let _deadline = testkit::deadline();
    use actix::prelude::*;

    struct Caller {
        manager: LeaseManager,
    }
    impl Actor for Caller {
        type Context = Context<Self>;
    }
    #[derive(Message)]
    #[rtype(result = "Result<String, LeaseError>")]
    struct Fetch(&'static str);

    impl Handler<Fetch> for Caller {
        type Result = ResponseFuture<Result<String, LeaseError>>;
        fn handle(&mut self, msg: Fetch, _: &mut Context<Self>) -> Self::Result {
            let manager = self.manager.clone();
            Box::pin(async move {
                let lease = manager.acquire().owner("actor").await?;
                let text = msg.0;
                let out = lease
                    .run(move || {
                        std::thread::sleep(Duration::from_millis(20));
                        text.to_uppercase()
                    })
                    .await?;
                lease.release().await;
                Ok(out)
            })
        }
    }

    let manager = LeaseManager::builder()
        .name_prefix("rt-actix")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let caller = Caller {
        manager: manager.clone(),
    }
    .start();
    assert_eq!(caller.send(Fetch("actor")).await.unwrap().unwrap(), "ACTOR");
    manager.stop().await;
}
