//! Pools that cannot serve: workers that fail to build their state or cannot be spawned,
//! unhealthy and retired pools in the books, a dead supervisor that fails closed, replacement
//! workers, a size provider whose panic panics. A pool is handed out only once it can serve.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasepool::{LeaseError, LeaseManager};
use testkit::{stats_until, within, EVENTUALLY};

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
    let _deadline = testkit::deadline();
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
    testkit::assert_invariant(&s);
    drop(lease);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retired_pools_leave_nothing_in_the_books_without_anyone_calling_stats() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(1)
        .name_prefix("hd-books")
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    // Each revoked lease retires its pool: 120 retirements, and nobody looks at stats().
    for _ in 0..120 {
        let lease = within("acquire", m.acquire().lease_for(Duration::from_millis(1)))
            .await
            .unwrap();
        let begun = Instant::now();
        while lease.run(|| ()).await != Err(LeaseError::Expired) {
            assert!(begun.elapsed() < EVENTUALLY, "the lease never expired");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // At most 4 entries for max_pools 2 and no lease held, once the supervisor has swept the
    // leases that asked for an actor (it does so shortly after they ended).
    testkit::until(
        "the books to hold nothing per retired pool (<= 4 entries)",
        || async { m.book_entries() },
        |entries| *entries <= 2 * 2,
    )
    .await;
    let s = m.stats().await;
    assert_eq!(s.counters.revoked, 120);
    m.stop().await;
}

async fn run_until_served<S: 'static>(m: &LeaseManager<S>) -> usize {
    let begun = Instant::now();
    loop {
        match m.acquire().timeout(Duration::from_secs(5)).await {
            Ok(lease) => {
                let pool = lease.pool().get() as usize;
                assert_eq!(
                    within("the first job", lease.run(|| "served")).await,
                    Ok("served"),
                    "a pool handed out has a worker ready for its first job"
                );
                lease.release().await;
                return pool;
            }
            Err(LeaseError::NoHealthyPool(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
        assert!(begun.elapsed() < EVENTUALLY, "never served");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_thread_that_cannot_be_spawned_is_retried_and_the_supervisor_survives() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(3)
        .name_prefix("hd-spawn")
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let first = m.acquire().await.unwrap();
    // The second pool's first thread cannot be spawned (EAGAIN, as at the thread limit).
    m.fail_next_worker_spawns(1);
    let second = within("acquire of a second pool", m.acquire())
        .await
        .unwrap();
    assert_eq!(within("a job on it", second.run(|| 2)).await, Ok(2));
    let s = stats_until(&m, "the missing threads replaced", |s| {
        s.counters.thread_spawn_failures == 1 && s.counters.workers_replaced >= 1
    })
    .await;
    testkit::assert_invariant(&s);
    let begun = Instant::now();
    while m.live_worker_threads() != 6 {
        assert!(
            begun.elapsed() < EVENTUALLY,
            "threads never replaced: {}",
            m.live_worker_threads()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The supervisor is alive: a dropped lease returns its pool, and leases still expire.
    drop(second);
    // (Above the sizing target of 1, the returned pool is retired rather than kept idle.)
    stats_until(&m, "the dropped lease ended", |s| {
        s.counters.released == 1 && s.leased == 1
    })
    .await;
    let short = m
        .acquire()
        .lease_for(Duration::from_millis(50))
        .await
        .unwrap();
    stats_until(&m, "hard expiry", |s| s.counters.revoked == 1).await;
    assert_eq!(short.run(|| ()).await, Err(LeaseError::Expired));
    first.release().await;
    m.stop().await;
    assert!(testkit::wait_no_threads("hd-spawn", EVENTUALLY).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_thread_of_the_first_pool_can_be_spawned_start_says_so_or_recovers() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("hd-spawn0")
        .build()
        .unwrap();
    m.fail_next_worker_spawns(1);
    match m.start().await {
        Err(LeaseError::NoHealthyPool(e)) => assert!(e.contains("spawn"), "{e}"),
        other => panic!("start must say no worker could start, got {other:?}"),
    }
    assert!(testkit::wait_no_threads("hd-spawn0", EVENTUALLY).is_empty());
    let degraded = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("hd-spawn1")
        .start_degraded(true)
        .build()
        .unwrap();
    degraded.fail_next_worker_spawns(1);
    degraded.start().await.unwrap();
    run_until_served(&degraded).await;
    assert_eq!(degraded.stats().await.counters.thread_spawn_failures, 1);
    degraded.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_is_handed_out_only_once_a_worker_built_its_state() {
    let _deadline = testkit::deadline();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("hd-ready")
        .start_degraded(true)
        .try_worker_state(move || {
            // The first two attempts fail, the rest succeed.
            if c.fetch_add(1, SeqCst) < 2 {
                Err("unable to open database file")
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    m.start().await.unwrap();
    // Whatever the moment, an acquire either says no pool can serve or gets a pool whose
    // worker is ready: never a lease whose first job is lost.
    run_until_served(&m).await;
    assert!(calls.load(SeqCst) >= 3);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_supervisor_fails_closed_and_the_manager_starts_again() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("hd-sup")
        .shutdown_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let held = m.acquire().await.unwrap();
    let waiter = tokio::spawn({
        let m = m.clone();
        async move { m.acquire().await.map(|_| ()) }
    });
    stats_until(&m, "a waiter", |s| s.waiting == 1).await;
    assert!(m.kill_supervisor());
    assert_eq!(
        within("the waiter", waiter).await.unwrap(),
        Err(LeaseError::Stopped),
        "a waiter is answered when the supervisor dies"
    );
    assert_eq!(
        within("a job on the held lease", held.run(|| ())).await,
        Err(LeaseError::Stopped)
    );
    assert_eq!(
        m.acquire().no_wait().await.unwrap_err(),
        LeaseError::NotStarted
    );
    // start() works again without an explicit stop() first.
    within("start after the crash", m.start()).await.unwrap();
    let lease = within("acquire", m.acquire()).await.unwrap();
    assert_eq!(within("run", lease.run(|| 5)).await, Ok(5));
    lease.release().await;
    // And once more: crash, then stop() returns, then start() works.
    assert!(m.kill_supervisor());
    within("stop after the crash", m.stop()).await;
    within("start", m.start()).await.unwrap();
    within("stop", m.stop()).await;
    drop(held);
    assert!(testkit::wait_no_threads("hd-sup", EVENTUALLY).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_unhealthy_idle_pool_is_replaced_and_serves_once_the_factory_recovers() {
    let _deadline = testkit::deadline();
    let failing = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let m = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("hd-parked")
        .try_worker_state(switchable_factory(&failing, &calls))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pool = lease.pool();
    failing.store(true, SeqCst);
    assert!(m.kill_worker(pool, 1).await);
    stats_until(&m, "the leased pool unhealthy", |s| s.unhealthy == 1).await;
    lease.release().await; // parked: unhealthy and idle
    let s = stats_until(&m, "the pool parked", |s| s.leased == 0 && s.unhealthy == 1).await;
    assert_eq!((s.available, s.total), (0, 0), "{s:?}");
    assert!(m.kill_pool(pool).await, "the parked pool's actor exists");
    failing.store(false, SeqCst);
    let served = run_until_served(&m).await;
    assert_ne!(served, pool.get() as usize, "a replacement pool serves");
    let s = stats_until(&m, "one healthy pool", |s| {
        s.unhealthy == 0 && s.available == 1
    })
    .await;
    testkit::assert_invariant(&s);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_worker_threads_get_new_names() {
    let _deadline = testkit::deadline();
    let prefix = "hd-names";
    let m = LeaseManager::builder()
        .workers_per_pool(2)
        .name_prefix(prefix)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let workers = |names: Vec<String>| -> Vec<String> {
        let mut w: Vec<String> = names.into_iter().filter(|n| n != "hd-names-host").collect();
        w.sort();
        w
    };
    // A thread names itself once it runs: wait for both.
    let begun = Instant::now();
    let before = loop {
        let before = workers(testkit::threads_named(prefix));
        if before.len() == 2 {
            break before;
        }
        assert!(begun.elapsed() < EVENTUALLY, "workers {before:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let lease = m.acquire().await.unwrap();
    for round in 1..=3 {
        assert!(m.kill_worker(lease.pool(), 1).await);
        stats_until(&m, "a replacement", |s| {
            s.counters.workers_replaced == round
        })
        .await;
        let begun = Instant::now();
        let after = loop {
            let after = workers(testkit::threads_named(prefix));
            if after.len() == 2 && !after.iter().all(|n| before.contains(n)) {
                break after;
            }
            assert!(
                begun.elapsed() < EVENTUALLY,
                "round {round}: threads {after:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let mut unique = after.clone();
        unique.dedup();
        assert_eq!(unique, after, "round {round}: two threads share a name");
    }
    let all = workers(testkit::threads_named(prefix));
    assert!(
        all.iter().any(|n| n.ends_with("-4")),
        "the third replacement is worker 4: {all:?}"
    );
    lease.release().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_wait_acquire_counting_on_a_pool_that_fails_is_refused_not_left_waiting() {
    let _deadline = testkit::deadline();
    for (round, max_waiters, no_wait) in [(0, 100, true), (1, 0, false)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let m = LeaseManager::builder()
            .max_pools(2)
            .min_pools(1)
            .workers_per_pool(1)
            .max_waiters(max_waiters)
            .name_prefix("hd-nowait")
            .try_worker_state(move || {
                // The first worker starts; every later one fails.
                if c.fetch_add(1, SeqCst) == 0 {
                    Ok(())
                } else {
                    Err("no second connection")
                }
            })
            .build()
            .unwrap();
        m.start().await.unwrap();
        let held = m.acquire().await.unwrap();
        // Nothing is free, but a second pool can be created: the acquire waits for it — and
        // when it fails to start, it must not be left waiting for the held lease (a `no_wait`
        // acquire, or one beyond `max_waiters`, may not wait for a release).
        let acquire = if no_wait {
            m.acquire().no_wait()
        } else {
            m.acquire()
        };
        assert_eq!(
            within("the acquire", acquire).await.unwrap_err(),
            LeaseError::Unavailable,
            "round {round}"
        );
        drop(held);
        m.stop().await;
    }
}

/// A panic payload whose destructor panics too.
struct PanickyProviderPayload;

impl Drop for PanickyProviderPayload {
    fn drop(&mut self) {
        panic!("the size provider's payload panicked when dropped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_size_provider_whose_panic_payload_panics_cannot_take_the_host_down_at_start() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder()
        .name_prefix("hd-provider")
        .size_provider(|| std::panic::panic_any(PanickyProviderPayload))
        .build()
        .unwrap();
    within("start", m.start()).await.unwrap();
    m.notify_scale_changed();
    let lease = within("acquire", m.acquire()).await.unwrap();
    assert_eq!(within("run", lease.run(|| 2)).await, Ok(2));
    drop(lease);
    m.stop().await;
}
