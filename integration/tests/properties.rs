//! Property test: random sequences of operations never break the books.
//!
//! After every step: `available + leased == total <= max_pools` and the lease table matches.
//! At the end: every job ran at most once and agrees with the outcome its caller saw, and every
//! acquirer (including background waiters) was answered.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leasepool::{Lease, LeaseError, LeaseManager};
use proptest::prelude::*;
use testkit::assert_invariant;

#[derive(Debug, Clone)]
enum Op {
    AcquireNoWait {
        lease_ms: Option<u64>,
    },
    AcquireTimeout {
        wait_ms: u64,
        lease_ms: Option<u64>,
    },
    /// A background acquirer that waits as long as it takes, runs one job and releases.
    AcquireWaitInBackground,
    Run(usize),
    Panic(usize),
    SubmitAndDrop(usize),
    Release(usize),
    Drop(usize),
    Scale(usize),
    Sleep(u64),
    StopStart,
}

fn op() -> impl Strategy<Value = Op> {
    let lease_ms = prop_oneof![3 => Just(None), 1 => (20u64..120).prop_map(Some)];
    prop_oneof![
        3 => lease_ms.clone().prop_map(|lease_ms| Op::AcquireNoWait { lease_ms }),
        2 => (1u64..40, lease_ms).prop_map(|(wait_ms, lease_ms)| Op::AcquireTimeout { wait_ms, lease_ms }),
        1 => Just(Op::AcquireWaitInBackground),
        4 => (0usize..4).prop_map(Op::Run),
        1 => (0usize..4).prop_map(Op::Panic),
        2 => (0usize..4).prop_map(Op::SubmitAndDrop),
        2 => (0usize..4).prop_map(Op::Release),
        1 => (0usize..4).prop_map(Op::Drop),
        1 => (0usize..50).prop_map(Op::Scale),
        1 => (1u64..60).prop_map(Op::Sleep),
        1 => Just(Op::StopStart),
    ]
}

/// How often each job ran, by token.
type Ledger = Arc<Mutex<HashMap<u64, u32>>>;

fn record(ledger: &Ledger, token: u64) {
    *ledger.lock().unwrap().entry(token).or_insert(0) += 1;
}

const BOUND: Duration = Duration::from_secs(20);

async fn check(manager: &LeaseManager) {
    assert_invariant(&manager.stats().await);
}

fn lease_at(held: &[Lease], i: usize) -> Option<&Lease> {
    if held.is_empty() {
        None
    } else {
        held.get(i % held.len())
    }
}

async fn run_case(ops: Vec<Op>) {
    let units = Arc::new(AtomicUsize::new(0));
    let u = Arc::clone(&units);
    let manager = LeaseManager::builder()
        .max_pools(3)
        .min_pools(1)
        .workers_per_pool(2)
        .units_per_pool(10)
        .lease_grace(Duration::ZERO)
        .size_provider(move || u.load(SeqCst))
        .shutdown_timeout(Duration::from_secs(5))
        .name_prefix("prop")
        .build()
        .unwrap();
    manager.start().await.unwrap();
    let ledger: Ledger = Arc::default();
    let mut held: Vec<Lease> = Vec::new();
    let mut next_token = 0u64;
    // (token, what the caller saw): checked against the ledger at the end.
    let mut seen: Vec<(u64, Result<u64, LeaseError>)> = Vec::new();
    let mut dropped_jobs: Vec<u64> = Vec::new();
    let mut background = Vec::new();

    for op in ops {
        match op {
            Op::AcquireNoWait { lease_ms } => {
                let mut a = manager.acquire().no_wait();
                if let Some(ms) = lease_ms {
                    a = a.lease_for(Duration::from_millis(ms));
                }
                match a.await {
                    Ok(lease) => held.push(lease),
                    Err(LeaseError::Unavailable | LeaseError::NotStarted) => {}
                    Err(e) => panic!("no_wait: unexpected {e}"),
                }
            }
            Op::AcquireTimeout { wait_ms, lease_ms } => {
                let mut a = manager.acquire().timeout(Duration::from_millis(wait_ms));
                if let Some(ms) = lease_ms {
                    a = a.lease_for(Duration::from_millis(ms));
                }
                match tokio::time::timeout(BOUND, a)
                    .await
                    .expect("a timed acquire hung")
                {
                    Ok(lease) => held.push(lease),
                    Err(
                        LeaseError::Timeout(_) | LeaseError::Unavailable | LeaseError::NotStarted,
                    ) => {}
                    Err(e) => panic!("timeout: unexpected {e}"),
                }
            }
            Op::AcquireWaitInBackground => {
                let (m, ledger) = (manager.clone(), Arc::clone(&ledger));
                let token = next_token;
                next_token += 1;
                background.push((
                    token,
                    tokio::spawn(async move {
                        let lease = m.acquire().await?;
                        let out = lease
                            .run(move || {
                                record(&ledger, token);
                                token
                            })
                            .await;
                        drop(lease);
                        out
                    }),
                ));
            }
            Op::Run(i) => {
                if let Some(lease) = lease_at(&held, i) {
                    let (ledger, token) = (Arc::clone(&ledger), next_token);
                    next_token += 1;
                    let out = tokio::time::timeout(
                        BOUND,
                        lease.run(move || {
                            record(&ledger, token);
                            token
                        }),
                    )
                    .await
                    .expect("a job hung");
                    seen.push((token, out));
                }
            }
            Op::Panic(i) => {
                if let Some(lease) = lease_at(&held, i) {
                    let (ledger, token) = (Arc::clone(&ledger), next_token);
                    next_token += 1;
                    let out = tokio::time::timeout(
                        BOUND,
                        lease.run(move || -> u64 {
                            record(&ledger, token);
                            panic!("planned")
                        }),
                    )
                    .await
                    .expect("a panicking job hung");
                    assert!(out.is_err(), "a panicking job returned a value");
                    seen.push((token, out));
                }
            }
            Op::SubmitAndDrop(i) => {
                if let Some(lease) = lease_at(&held, i) {
                    let (ledger, token) = (Arc::clone(&ledger), next_token);
                    next_token += 1;
                    if let Ok(handle) = lease.submit(move || {
                        std::thread::sleep(Duration::from_millis(2));
                        record(&ledger, token);
                    }) {
                        drop(handle);
                        dropped_jobs.push(token);
                    }
                }
            }
            Op::Release(i) => {
                if !held.is_empty() {
                    let lease = held.remove(i % held.len());
                    tokio::time::timeout(BOUND, lease.release())
                        .await
                        .expect("release hung");
                }
            }
            Op::Drop(i) => {
                if !held.is_empty() {
                    drop(held.remove(i % held.len()));
                }
            }
            Op::Scale(n) => {
                units.store(n, SeqCst);
                manager.notify_scale_changed();
            }
            Op::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Op::StopStart => {
                tokio::time::timeout(BOUND, manager.stop())
                    .await
                    .expect("stop hung");
                check(&manager).await;
                manager.start().await.unwrap();
            }
        }
        check(&manager).await;
    }

    held.clear();
    for (token, task) in background {
        let out = tokio::time::timeout(BOUND, task)
            .await
            .expect("a waiter was never answered")
            .unwrap();
        match out {
            Ok(t) => seen.push((token, Ok(t))),
            Err(LeaseError::Stopped | LeaseError::NotStarted) => {}
            Err(e) => seen.push((token, Err(e))),
        }
    }
    tokio::time::timeout(BOUND, manager.stop())
        .await
        .expect("final stop hung");
    let ledger = ledger.lock().unwrap().clone();
    for (token, out) in &seen {
        let ran = ledger.get(token).copied().unwrap_or(0);
        match out {
            Ok(v) => {
                assert_eq!(v, token);
                assert_eq!(ran, 1, "job {token} succeeded but ran {ran} times");
            }
            Err(LeaseError::Panicked(_)) => {
                assert_eq!(ran, 1, "job {token} panicked but ran {ran} times")
            }
            Err(e) => assert_eq!(ran, 0, "job {token} failed with {e} but ran {ran} times"),
        }
    }
    for token in dropped_jobs {
        let ran = ledger.get(&token).copied().unwrap_or(0);
        assert!(ran <= 1, "submitted job {token} ran {ran} times");
    }
    let stats = manager.stats().await;
    assert_eq!((stats.total, stats.leased, stats.waiting), (0, 0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_every_invariant(ops in proptest::collection::vec(op(), 1..40)) {
        let _deadline = testkit::deadline();
        testkit::block_on_tokio(run_case(ops));
    }
}
