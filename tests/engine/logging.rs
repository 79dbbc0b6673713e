//! Observability: lifecycle events carry `manager`, `lease_id`, `owner` and `pool` fields, every
//! engine event names its manager under a `leasepool…` target, rejections are logged at DEBUG,
//! and a failing size provider is logged once per streak of failures, not on every evaluation.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use leasepool::LeaseManager;
use testkit::capture::{captured, Captured};
use testkit::stats_until;
use tracing::Level;

/// A manager the subscriber itself calls back into, from inside its own events (see
/// `a_subscriber_that_calls_back_into_the_manager_does_not_deadlock_it`).
static REENTRANT: OnceLock<LeaseManager> = OnceLock::new();

/// User code in a subscriber may call the library: it must not find it locked.
fn call_back_into_the_manager(event: &Captured) {
    if event.fields.get("manager").map(String::as_str) == Some("log-reentrant") {
        if let Some(manager) = REENTRANT.get() {
            let _ = futures_executor::block_on(manager.stats());
        }
    }
}

/// The capture, with the call-back hook.
fn events() {
    testkit::capture::set_hook(call_back_into_the_manager);
    testkit::capture::events();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_carry_lease_owner_and_pool_fields() {
    let _deadline = testkit::deadline();
    events();
    let manager = LeaseManager::builder()
        .workers_per_pool(1)
        .lease_grace(Duration::ZERO)
        .name_prefix("log-fields")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let lease = manager
        .acquire()
        .owner("auditor")
        .lease_for(Duration::from_millis(100))
        .await
        .unwrap();
    let id = lease.id().to_string();
    // Lease ids are per manager: other tests' managers have a `lease-1` too.
    let mine = |e: &Captured| e.fields.get("manager").map(String::as_str) == Some("log-fields");
    lease.run(|| ()).await.unwrap();
    stats_until(&manager, "revocation", |s| s.counters.revoked == 1).await;

    let granted = captured(|e| {
        e.message() == "lease granted" && e.fields.get("lease_id") == Some(&id) && mine(e)
    });
    assert_eq!(granted.len(), 1, "{granted:?}");
    assert_eq!(granted[0].level, Level::DEBUG);
    assert_eq!(
        granted[0].fields.get("owner").map(String::as_str),
        Some("auditor")
    );
    assert!(granted[0]
        .fields
        .get("pool")
        .is_some_and(|p| p.starts_with("pool-")));

    let job =
        captured(|e| e.message() == "job sent" && e.fields.get("lease_id") == Some(&id) && mine(e));
    assert_eq!(job.len(), 1, "one debug event per job");

    let revoked = captured(|e| {
        e.message().contains("hard expiry") && e.fields.get("lease_id") == Some(&id) && mine(e)
    });
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].level, Level::WARN);
    assert_eq!(
        revoked[0].fields.get("owner").map(String::as_str),
        Some("auditor")
    );
    drop(lease);
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_size_provider_is_logged_once_per_streak() {
    let _deadline = testkit::deadline();
    events();
    let failing = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&failing);
    let manager = LeaseManager::builder()
        .max_pools(2)
        .workers_per_pool(1)
        .check_interval(Duration::from_millis(20))
        .size_provider(move || {
            if f.load(SeqCst) {
                panic!("provider down")
            } else {
                0
            }
        })
        .name_prefix("log-streak")
        .build()
        .unwrap();
    let warnings =
        || captured(|e| e.level == Level::WARN && e.message().contains("size_provider")).len();
    let before = warnings();
    manager.start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // ~10 failing evaluations
    assert_eq!(warnings() - before, 1, "one warning for the whole streak");
    failing.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    failing.store(true, SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(warnings() - before, 2, "a new streak is logged again");
    manager.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_error_and_a_factory_panic_are_logged_as_what_they_are() {
    let _deadline = testkit::deadline();
    events();
    let by_text =
        |text: &'static str| move |e: &Captured| e.fields.values().any(|v| v.contains(text));
    let erring = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("log-ferr")
        .try_worker_state(|| Err::<(), _>("no such file: log-ferr.db"))
        .build()
        .unwrap();
    assert!(erring.start().await.is_err());
    let err_events = captured(by_text("no such file: log-ferr.db"));
    assert!(
        err_events
            .iter()
            .any(|e| e.level == Level::WARN && e.message().contains("returned an error")),
        "an Err is logged as an error returned: {err_events:#?}"
    );
    assert!(
        !err_events.iter().any(|e| e.message().contains("panicked")),
        "an Err is not called a panic: {err_events:#?}"
    );
    let panicking = LeaseManager::builder()
        .workers_per_pool(1)
        .name_prefix("log-fpanic")
        .worker_state(|| -> () { panic!("boom: log-fpanic") })
        .build()
        .unwrap();
    assert!(panicking.start().await.is_err());
    let panic_events = captured(by_text("boom: log-fpanic"));
    assert!(
        panic_events
            .iter()
            .any(|e| e.level == Level::WARN && e.message().contains("panicked")),
        "a panic is logged as a panic: {panic_events:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_manager_with_held_leases_logs_no_lease_actor_death() {
    let _deadline = testkit::deadline();
    events();
    let deaths = || captured(|e| e.message().contains("lease actor died")).len();
    let before = deaths();
    let manager = LeaseManager::builder()
        .max_pools(3)
        .workers_per_pool(1)
        .name_prefix("log-stop-held")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let held = [
        manager.acquire().await.unwrap(),
        manager.acquire().await.unwrap(),
        manager.acquire().await.unwrap(),
    ];
    // Let the host start every lease's actor before stopping.
    stats_until(&manager, "three leases", |s| s.leased == 3).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    manager.stop().await;
    assert_eq!(deaths() - before, 0, "stop revokes leases; no actor died");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_in_one_process_are_told_apart_in_every_event() {
    let _deadline = testkit::deadline();
    events();
    let start = |name: &'static str| {
        LeaseManager::builder()
            .max_pools(1)
            .workers_per_pool(1)
            .name_prefix(name)
            .build()
            .unwrap()
    };
    let (a, b) = (start("log-two-a"), start("log-two-b"));
    for m in [&a, &b] {
        m.start().await.unwrap();
        let lease = m.acquire().owner("twin").await.unwrap();
        lease.run(|| ()).await.unwrap();
        lease.release().await;
        m.stop().await;
    }
    for name in ["log-two-a", "log-two-b"] {
        let mine = captured(|e| e.fields.get("manager").map(String::as_str) == Some(name));
        for what in [
            "pool starting",
            "lease granted",
            "lease manager started",
            "lease manager stopped",
        ] {
            assert!(
                mine.iter().any(|e| e.message().contains(what)),
                "{name}: no `{what}` event with manager = {name}: {mine:#?}"
            );
        }
    }
    // Every event the engine logged in this test binary names its manager, under a target
    // that `RUST_LOG=leasepool=debug` selects (targets are matched by prefix).
    let engine = captured(|e| e.target.starts_with("leasepool"));
    assert!(!engine.is_empty());
    let anonymous: Vec<_> = engine
        .iter()
        .filter(|e| !e.fields.contains_key("manager"))
        .collect();
    assert!(
        anonymous.is_empty(),
        "events without a manager field: {anonymous:#?}"
    );
    assert!(
        captured(|e| e.fields.contains_key("manager"))
            .iter()
            .all(|e| e.target.starts_with("leasepool")),
        "every engine event is under a leasepool target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_are_logged_at_debug_with_owner_and_reason() {
    let _deadline = testkit::deadline();
    events();
    let name = "log-reject";
    let m = LeaseManager::builder()
        .max_pools(1)
        .workers_per_pool(1)
        .max_waiters(1)
        .name_prefix(name)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let held = m.acquire().await.unwrap();
    assert!(m.acquire().owner("impatient").no_wait().await.is_err());
    assert!(m
        .acquire()
        .owner("patient")
        .timeout(Duration::from_millis(20))
        .await
        .is_err());
    let waiting = tokio::spawn({
        let m = m.clone();
        async move { m.acquire().owner("queued").await.map(|_| ()) }
    });
    stats_until(&m, "a waiter", |s| s.waiting == 1).await;
    assert!(m
        .acquire()
        .owner("crowded")
        .timeout(Duration::from_secs(5))
        .await
        .is_err());
    let mine = captured(|e| {
        e.level == Level::DEBUG
            && e.fields.get("manager").map(String::as_str) == Some(name)
            && e.message().starts_with("acquire refused")
    });
    let find = |owner: &str| {
        mine.iter()
            .find(|e| e.fields.get("owner").map(String::as_str) == Some(owner))
            .unwrap_or_else(|| panic!("no DEBUG rejection for {owner}: {mine:#?}"))
            .clone()
    };
    assert!(find("impatient").fields["reason"].contains("no_wait"));
    assert!(find("patient").message().contains("timed out"));
    assert!(find("crowded").fields["reason"].contains("max_waiters"));
    held.release().await;
    waiting.await.unwrap().unwrap();
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_calls_back_into_the_manager_does_not_deadlock_it() {
    let _deadline = testkit::deadline();
    events();
    let manager = LeaseManager::builder()
        .max_pools(1)
        .workers_per_pool(1)
        .max_waiters(1)
        .name_prefix("log-reentrant")
        .build()
        .unwrap();
    assert!(REENTRANT.set(manager.clone()).is_ok());
    let run = async {
        manager.start().await.unwrap();
        // Grants, waits, refusals and releases all log; each event calls stats().
        let held = manager.acquire().owner("first").await.unwrap();
        let waiter = tokio::spawn({
            let m = manager.clone();
            async move { m.acquire().owner("second").await.map(drop) }
        });
        stats_until(&manager, "a waiter", |s| s.waiting == 1).await;
        assert!(manager.acquire().no_wait().await.is_err());
        drop(held);
        waiter.await.unwrap().unwrap();
        manager.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the manager deadlocked on its own log events");
    let seen = captured(|e| e.fields.get("manager").map(String::as_str) == Some("log-reentrant"));
    assert!(seen.iter().any(|e| e.message().contains("lease granted")));
}
