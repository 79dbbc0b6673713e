//! Typed message jobs on per-worker state, and fallible worker-state factories.

use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use leasepool::{Handle, LeaseError, LeaseManager};
use testkit::stats_until;

/// Per-worker state: which worker this is and what it has seen.
struct Ledger {
    worker: usize,
    entries: Vec<u64>,
}

struct Append(u64);
struct Count;
struct WhoAmI;

impl Handle<Append> for Ledger {
    type Output = (usize, usize);
    fn handle(&mut self, msg: Append) -> (usize, usize) {
        std::thread::sleep(Duration::from_micros(200));
        self.entries.push(msg.0);
        (self.worker, self.entries.len())
    }
}

impl Handle<Count> for Ledger {
    type Output = usize;
    fn handle(&mut self, _: Count) -> usize {
        self.entries.len()
    }
}

impl Handle<WhoAmI> for Ledger {
    type Output = usize;
    fn handle(&mut self, _: WhoAmI) -> usize {
        self.worker
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_many_callers_land_on_per_worker_state() {
    let _deadline = testkit::deadline();
    let next_worker = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&next_worker);
    let manager = LeaseManager::builder()
        .workers_per_pool(3)
        .name_prefix("msg-many")
        .worker_state(move || Ledger {
            worker: n.fetch_add(1, SeqCst),
            entries: Vec::new(),
        })
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = Arc::new(manager.acquire().await.unwrap());
    let mut callers = Vec::new();
    for i in 0..300u64 {
        let lease = Arc::clone(&lease);
        callers.push(tokio::spawn(async move { lease.send(Append(i)).await }));
    }
    let mut per_worker = std::collections::HashMap::<usize, usize>::new();
    for c in callers {
        let (worker, len) = c.await.unwrap().unwrap();
        let seen = per_worker.entry(worker).or_default();
        *seen = (*seen).max(len);
    }
    assert_eq!(
        per_worker.values().sum::<usize>(),
        300,
        "every message landed once: {per_worker:?}"
    );
    assert!(
        per_worker.len() >= 2,
        "messages were spread over the workers: {per_worker:?}"
    );
    let workers: HashSet<usize> = per_worker.keys().copied().collect();
    assert!(
        workers.iter().all(|w| *w < 3),
        "only the three workers' own states: {workers:?}"
    );
    let lease = Arc::try_unwrap(lease).unwrap();
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_keeps_its_state_across_message_types() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("msg-one")
        .worker_state(|| Ledger {
            worker: 7,
            entries: Vec::new(),
        })
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    for i in 0..5 {
        assert_eq!(lease.send(Append(i)).await.unwrap(), (7, i as usize + 1));
    }
    assert_eq!(lease.send(Count).await.unwrap(), 5);
    assert_eq!(lease.send(WhoAmI).await.unwrap(), 7);
    assert_eq!(
        lease
            .run_with(|l: &mut Ledger| l.entries.iter().sum::<u64>())
            .await
            .unwrap(),
        10
    );
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_state_need_not_be_send() {
    let _deadline = testkit::deadline();
    let manager = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("msg-rc")
        .worker_state(|| Rc::new(RefCell::new(Vec::<u8>::new())))
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    for b in 0..4u8 {
        lease
            .run_with(move |v: &mut Rc<RefCell<Vec<u8>>>| v.borrow_mut().push(b))
            .await
            .unwrap();
    }
    let len = lease
        .run_with(|v: &mut Rc<RefCell<Vec<u8>>>| v.borrow().len())
        .await
        .unwrap();
    assert_eq!(len, 4);
    lease.release().await;
    manager.stop().await;
}

/// A fallible factory that fails (with its attempt number) until `healthy_after` is reached.
fn database_factory(
    healthy_after: &Arc<AtomicUsize>,
    calls: &Arc<AtomicUsize>,
) -> impl Fn() -> Result<usize, String> + Send + Sync + 'static {
    let (h, c) = (Arc::clone(healthy_after), Arc::clone(calls));
    move || {
        let n = c.fetch_add(1, SeqCst) + 1;
        if n >= h.load(SeqCst) {
            Ok(n)
        } else {
            Err(format!("database unreachable (attempt {n})"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_with_the_factory_error_when_no_worker_can_build_its_state() {
    let _deadline = testkit::deadline();
    let healthy_after = Arc::new(AtomicUsize::new(usize::MAX));
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = LeaseManager::builder()
        .workers_per_pool(2)
        .name_prefix("msg-nostart")
        .try_worker_state(database_factory(&healthy_after, &calls))
        .build()
        .unwrap();
    match manager.start().await {
        Err(LeaseError::NoHealthyPool(e)) => {
            assert!(
                e.contains("database unreachable"),
                "the factory's own error: {e}"
            );
        }
        other => panic!("start must fail with the factory's error, got {other:?}"),
    }
    assert_eq!(
        manager.acquire().no_wait().await.unwrap_err(),
        LeaseError::NotStarted,
        "a start that failed leaves the manager stopped"
    );
    assert!(testkit::wait_no_threads("msg-nostart", testkit::EVENTUALLY).is_empty());
    // Once the database is back, start works.
    healthy_after.store(0, SeqCst);
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    assert!(lease.run_with(|n: &mut usize| *n).await.unwrap() >= 3);
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallible_factory_that_fails_makes_acquires_fail_with_its_error_until_it_succeeds() {
    let _deadline = testkit::deadline();
    let healthy_after = Arc::new(AtomicUsize::new(usize::MAX));
    let calls = Arc::new(AtomicUsize::new(0));
    let manager = LeaseManager::builder()
        .workers_per_pool(2)
        .name_prefix("msg-try")
        .start_degraded(true)
        .try_worker_state(database_factory(&healthy_after, &calls))
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let stats = stats_until(&manager, "unhealthy", |s| s.unhealthy == 1).await;
    assert_eq!(stats.available, 0);
    assert!(stats.counters.worker_state_failures >= 2);
    // No pool can serve: every kind of acquire says why at once instead of waiting.
    for acquire in [
        manager.acquire().timeout(Duration::from_secs(30)),
        manager.acquire().no_wait(),
        manager.acquire(),
    ] {
        let begun = std::time::Instant::now();
        match acquire.await {
            Err(LeaseError::NoHealthyPool(e)) => {
                assert!(e.contains("database unreachable"), "{e}");
            }
            other => panic!("expected the factory's error, got {other:?}"),
        }
        assert!(begun.elapsed() < Duration::from_secs(10), "it did not wait");
    }
    // The database comes back: the next attempts succeed.
    healthy_after.store(calls.load(SeqCst) + 1, SeqCst);
    stats_until(&manager, "a serving pool", |s| s.available == 1).await;
    let lease = manager
        .acquire()
        .timeout(Duration::from_secs(20))
        .await
        .expect("healthy again");
    let attempt = lease.run_with(|n: &mut usize| *n).await.unwrap();
    assert!(attempt >= 3, "state came from a later attempt: {attempt}");
    let stats = manager.stats().await;
    assert_eq!(stats.unhealthy, 0);
    assert!(stats.counters.workers_replaced >= 1);
    lease.release().await;
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_worker_is_replaced_while_the_others_serve() {
    let _deadline = testkit::deadline();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let manager = LeaseManager::builder()
        .workers_per_pool(3)
        .name_prefix("msg-one-fail")
        .try_worker_state(move || {
            // The second worker to start fails once.
            if c.fetch_add(1, SeqCst) == 1 {
                Err("transient")
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager.acquire().await.unwrap();
    for i in 0..20 {
        assert_eq!(
            lease.run(move || i).await.unwrap(),
            i,
            "the healthy workers serve"
        );
    }
    let stats = stats_until(&manager, "replacement", |s| {
        s.counters.workers_replaced == 1
    })
    .await;
    assert_eq!(stats.counters.worker_state_failures, 1);
    assert_eq!(stats.unhealthy, 0, "a pool with live workers stays healthy");
    let deadline = std::time::Instant::now() + testkit::EVENTUALLY;
    while manager.live_worker_threads() != 3 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(manager.live_worker_threads(), 3);
    lease.release().await;
    manager.stop().await;
}
