//! Every `build()` rule: bad settings are errors that name the setting, never panics.

use std::time::Duration;

use leasepool::{Backend, BuildError, LeaseManager, MAX_TOTAL_WORKERS};

fn err_text(r: Result<LeaseManager, BuildError>) -> String {
    r.expect_err("build must refuse this").to_string()
}

#[test]
fn zero_counts_are_refused_naming_the_setting() {
    let _deadline = testkit::deadline();
    let b = LeaseManager::builder;
    assert_eq!(
        err_text(b().max_pools(0).min_pools(0).build()),
        "max_pools must be at least 1 (got 0)"
    );
    assert_eq!(
        err_text(b().workers_per_pool(0).build()),
        "workers_per_pool must be at least 1 (got 0)"
    );
    assert_eq!(
        err_text(b().units_per_pool(0).build()),
        "units_per_pool must be at least 1 (got 0)"
    );
}

#[test]
fn zero_durations_are_refused_where_they_must_be_positive() {
    let _deadline = testkit::deadline();
    let b = LeaseManager::builder;
    assert!(
        err_text(b().default_lease(Duration::ZERO).build()).starts_with("default_lease must be")
    );
    assert!(
        err_text(b().check_interval(Duration::ZERO).build()).starts_with("check_interval must be")
    );
    b().lease_grace(Duration::ZERO)
        .build()
        .expect("zero grace is valid");
    b().shutdown_timeout(Duration::ZERO)
        .build()
        .expect("zero shutdown_timeout is valid");
    b().max_waiters(0).build().expect("max_waiters 0 is valid");
    b().min_pools(0).build().expect("min_pools 0 is valid");
}

#[test]
fn min_pools_above_max_pools_is_refused() {
    let _deadline = testkit::deadline();
    let e = LeaseManager::builder()
        .max_pools(2)
        .min_pools(3)
        .build()
        .unwrap_err();
    assert_eq!(
        e,
        BuildError::MinAboveMax {
            min_pools: 3,
            max_pools: 2
        }
    );
    assert_eq!(e.to_string(), "min_pools (3) exceeds max_pools (2)");
}

#[test]
fn absurd_thread_counts_are_refused() {
    let _deadline = testkit::deadline();
    let e = err_text(
        LeaseManager::builder()
            .max_pools(101)
            .workers_per_pool(100)
            .build(),
    );
    assert!(
        e.contains("max_pools (101)") && e.contains("workers_per_pool (100)"),
        "{e}"
    );
    assert!(e.contains(&MAX_TOTAL_WORKERS.to_string()), "{e}");
    // Overflowing products are refused too, not wrapped.
    let e = err_text(
        LeaseManager::builder()
            .max_pools(usize::MAX)
            .workers_per_pool(usize::MAX)
            .build(),
    );
    assert!(e.contains("exceeds the limit"), "{e}");
    LeaseManager::builder()
        .max_pools(100)
        .workers_per_pool(100)
        .build()
        .expect("exactly the limit is allowed");
}

#[test]
fn bad_name_prefixes_are_refused() {
    let _deadline = testkit::deadline();
    assert!(err_text(LeaseManager::builder().name_prefix("").build()).contains("name_prefix"));
    assert!(err_text(LeaseManager::builder().name_prefix("a\0b").build()).contains("name_prefix"));
}

#[test]
fn the_process_backend_says_what_it_is_missing() {
    let _deadline = testkit::deadline();
    let e = err_text(LeaseManager::builder().backend(Backend::Process).build());
    // With the feature: the jobs its children run; without it: the feature.
    #[cfg(feature = "process")]
    assert!(e.contains("process_jobs"), "{e}");
    #[cfg(not(feature = "process"))]
    assert!(e.contains("cargo feature `process`"), "{e}");
}

#[test]
fn defaults_match_the_contract() {
    let _deadline = testkit::deadline();
    let m = LeaseManager::builder().build().unwrap();
    let text = format!("{m:?}");
    for expected in [
        "max_pools: 1",
        "min_pools: 1",
        "workers_per_pool: 4",
        "units_per_pool: 10",
        "check_interval: 120s",
        "default_lease: 300s",
        "lease_grace: 15s",
        "max_waiters: 10000",
        "name_prefix: \"leasepool\"",
        "shutdown_timeout: 5s",
    ] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
    assert_eq!(m.backend(), Backend::Thread);
}

#[test]
fn a_check_interval_shorter_than_a_millisecond_is_refused() {
    let _deadline = testkit::deadline();
    let err = LeaseManager::builder()
        .check_interval(std::time::Duration::from_nanos(1))
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "check_interval must be at least 1ms (got 1ns)"
    );
    assert!(LeaseManager::builder()
        .check_interval(std::time::Duration::from_millis(1))
        .build()
        .is_ok());
}
