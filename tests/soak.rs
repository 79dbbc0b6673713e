//! Soak: a long run with every fault mixed in, then a full accounting.
//!
//! `cargo test --release --test soak -- --ignored soak` runs 1 000 000 jobs (set
//! `LEASEPOOL_SOAK_JOBS` to change it); `.ci/run` runs `soak_short` (20 000 jobs). Mix: 1 % of
//! jobs panic, 1 % of leases are dropped mid-job, 0.5 % of leases expire under their jobs, and a
//! pool actor is killed every 10 000 jobs. Checked: no outcome lost or doubled, no hung future,
//! the count invariant in periodic snapshots, no worker thread left after `stop`, RSS growth.

mod common;

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{assert_invariant, threads_named, wait_no_threads};
use leasepool::{LeaseError, LeaseManager};

const PREFIX: &str = "lpsoak";
const TASKS: u64 = 16;
const BATCH: u64 = 50;

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    panicked: u64,
    lost_or_revoked: u64,
    dropped_mid_job: u64,
    pools_killed: u64,
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Planned panics are 1 % of the jobs; printing each (with a backtrace under CI) would drown the
/// report. Everything else still goes to the default hook.
fn quiet_planned_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| m.starts_with("planned soak panic"));
        let killed = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.contains("fault injection"));
        if !planned && !killed {
            default(info);
        }
    }));
}

async fn soak(jobs: u64) {
    quiet_planned_panics();
    let threads_before = threads_named(PREFIX).len();
    let manager = LeaseManager::builder()
        .max_pools(4)
        .min_pools(2)
        .workers_per_pool(2)
        .lease_grace(Duration::ZERO)
        .shutdown_timeout(Duration::from_secs(10))
        .name_prefix(PREFIX)
        .build()
        .unwrap();
    manager.start().await.unwrap();
    // How often each job ran. Allocated and touched up front, so it does not show as RSS growth.
    let ran: Arc<Vec<AtomicU8>> = Arc::new((0..jobs).map(|_| AtomicU8::new(0)).collect());
    for cell in ran.iter() {
        cell.store(0, SeqCst);
    }
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let began = Instant::now();
    let mut rss_warm = 0;

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (m, ran, next, tally) = (manager.clone(), ran.clone(), next.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(BATCH, SeqCst);
                if first >= jobs {
                    break;
                }
                let last = (first + BATCH).min(jobs);
                let batch = first / BATCH;
                // 0.5 % of leases expire under their jobs (the first job outlives the lease, so
                // the rest are queued at revocation); the rest live long.
                let expiring = batch % 200 == 3;
                let lease_for = if expiring {
                    Duration::from_millis(1)
                } else {
                    Duration::from_secs(60)
                };
                let lease = match tokio::time::timeout(
                    Duration::from_secs(60),
                    m.acquire()
                        .lease_for(lease_for)
                        .timeout(Duration::from_secs(30)),
                )
                .await
                {
                    Ok(Ok(lease)) => lease,
                    Ok(Err(e)) => panic!("acquire failed: {e}"),
                    Err(_) => panic!("acquire hung"),
                };
                let mut handles = Vec::new();
                for token in first..last {
                    let ran = ran.clone();
                    let slow = expiring && token == first;
                    let job = move || {
                        if slow {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        ran[token as usize].fetch_add(1, SeqCst);
                        if token % 100 == 7 {
                            panic!("planned soak panic");
                        }
                        token
                    };
                    match lease.submit(job) {
                        Ok(h) => handles.push((token, h)),
                        Err(_) => tally.lock().unwrap().lost_or_revoked += 1,
                    }
                }
                // A pool is killed every 10 000 jobs: the one under this lease, whose queued jobs
                // then fail with WorkerLost.
                if first % 10_000 == 0 && first > 0 && !expiring {
                    m.kill_pool(lease.pool()).await;
                    tally.lock().unwrap().pools_killed += 1;
                }
                // 1 % of leases are dropped while their jobs run.
                if batch % 100 == 1 {
                    drop(lease);
                    tally.lock().unwrap().dropped_mid_job += 1;
                } else {
                    // Keep the lease alive until its jobs are answered.
                    let _keep = &lease;
                }
                for (token, h) in handles {
                    let out = tokio::time::timeout(Duration::from_secs(60), h)
                        .await
                        .expect("a job hung");
                    let mut tally = tally.lock().unwrap();
                    match out {
                        Ok(v) => {
                            assert_eq!(v, token);
                            tally.ok += 1;
                        }
                        Err(LeaseError::Panicked(_)) => tally.panicked += 1,
                        Err(LeaseError::WorkerLost | LeaseError::Expired) => {
                            tally.lost_or_revoked += 1
                        }
                        Err(e) => panic!("job {token}: unexpected {e}"),
                    }
                }
            }
        }));
    }

    // Check the invariant in snapshots while the run goes.
    let mut snapshots = 0u64;
    while tasks.iter().any(|t| !t.is_finished()) {
        let done = next.load(SeqCst).min(jobs);
        if rss_warm == 0 && done >= jobs / 10 {
            rss_warm = rss_kib();
        }
        assert_invariant(&manager.stats().await);
        snapshots += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wall = began.elapsed();
    let rss_end = rss_kib();
    manager.stop().await;
    let left = tokio::task::spawn_blocking(|| wait_no_threads(PREFIX, Duration::from_secs(10)))
        .await
        .unwrap();

    let doubled = ran.iter().filter(|n| n.load(SeqCst) > 1).count();
    let stats = manager.stats().await;
    let tally = tally.lock().unwrap();
    let answered = tally.ok + tally.panicked + tally.lost_or_revoked;
    let expected_expiries = (jobs / BATCH).div_ceil(200);
    eprintln!(
        "soak: {jobs} jobs in {wall:.1?}: ok {} panicked {} lost/revoked {} | leases dropped mid-job {} | \
         pools killed {} | doubled {doubled} | snapshots {snapshots} | threads before {threads_before} \
         after {} | RSS at 10 % {rss_warm} KiB, at end {rss_end} KiB | counters {:?}",
        tally.ok,
        tally.panicked,
        tally.lost_or_revoked,
        tally.dropped_mid_job,
        tally.pools_killed,
        left.len(),
        stats.counters
    );
    assert_eq!(answered, jobs, "every job is answered exactly once");
    assert_eq!(doubled, 0, "a job ran twice");
    assert!(tally.panicked > 0 && tally.ok > jobs / 2);
    assert!(
        stats.counters.revoked >= tally.pools_killed + expected_expiries,
        "every killed pool and expiring lease is revoked: {:?}",
        stats.counters
    );
    assert!(left.is_empty(), "threads left after stop: {left:?}");
    if jobs >= 100_000 && rss_warm > 0 {
        let growth = rss_end as f64 / rss_warm as f64 - 1.0;
        assert!(
            growth < 0.10,
            "RSS grew {:.1} % from 10 % of the run to the end",
            growth * 100.0
        );
    }
}

#[test]
fn soak_short() {
    let _deadline = common::deadline();
    common::block_on_tokio(soak(20_000));
}

#[test]
#[ignore = "long: cargo test --release --test soak -- --ignored soak"]
fn soak_full() {
    let _deadline = common::deadline_of(Duration::from_secs(1800));
    let jobs = std::env::var("LEASEPOOL_SOAK_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    common::block_on_tokio(soak(jobs));
}
