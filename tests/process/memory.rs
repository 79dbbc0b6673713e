//! Memory: a child over `child_memory_limit` answers `WorkerLost` (an allocation failure is a
//! crash), big messages do not pin memory in the parent, a limit too small to start fails the
//! start.

use leasepool::LeaseError;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn a_memory_hog_over_the_limit_answers_worker_lost() {
    let m = builder("pt-hog", 1, 1)
        .child_memory_limit(512 << 20)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    // Under the limit: fine.
    assert_eq!(lease.call(Hog { bytes: 8 << 20 }).await, Ok(8 << 20));
    // Over it: the allocation fails, the child aborts.
    let err = lease.call(Hog { bytes: 2 << 30 }).await.unwrap_err();
    assert_eq!(err, LeaseError::WorkerLost);
    assert_eq!(
        lease.call(Hog { bytes: 1 << 20 }).await,
        Ok(1 << 20),
        "the pool recovers"
    );
    lease.release().await;
    m.stop().await;
}

/// A child that printed what Rust prints when an allocation fails, and later aborted, crashed:
/// only a death right after that line is a memory death.
#[testkit::test]
async fn an_abort_after_printing_an_allocation_failure_is_a_crash() {
    // Under a memory limit (far above what these jobs use), where such a report counts.
    let m = builder("pt-says-oom", 1, 1)
        .child_memory_limit(4 << 30)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    assert!(lease.call(SaysOom).await.is_ok());
    assert!(lease.call(Pid).await.is_ok());
    assert_eq!(lease.call(Abort).await, Err(LeaseError::WorkerLost));
    let c = counted(&m, [2, 0, 0, 1], None).await;
    assert_eq!(children_counted(&c)[1..4], [1, 0, 0], "{c:?}");
    lease.release().await;
    m.stop().await;
}

#[testkit::test]
async fn memory_limit_too_small_to_start() {
    let m = impatient_builder("adv-tiny", 1, 1)
        .child_memory_limit(1 << 20)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start: {r:?} in {took:?}");
    if matches!(r, Some(Ok(()))) {
        let l = m.acquire().await.unwrap();
        for i in 0..3 {
            let (a, t) = timed(Duration::from_secs(10), l.call(Pid)).await;
            println!("    Pid call {i}: {a:?} in {t:?}");
            let (a, t) = timed(Duration::from_secs(10), l.call(Bytes(vec![0; 4 << 20]))).await;
            println!("    4 MiB call {i}: {a:?} in {t:?}");
        }
        let s = m.stats().await;
        println!("    stats unhealthy={} ", s.unhealthy);
        drop(l);
    }
    m.stop().await;
    report_leftovers("end", "adv-tiny");
}

/// Big inputs, one per worker, three rounds: the parent and the children give the memory back
/// (RSS read with glibc's mmap threshold fixed: see `main`).
#[testkit::test]
async fn big_messages_do_not_pin_memory() {
    let m = impatient_builder("adv-mem", 1, 4).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let big = 24 << 20;
    let before = vm_rss_kb() / 1024;
    let mut rss = Vec::new();
    for _ in 0..3 {
        let handles: Vec<_> = (0..4)
            .map(|_| lease.submit_call(BigIn(vec![1; big].into())).unwrap())
            .collect();
        for h in handles {
            let r = h.await;
            check!(r == Ok(big), "24 MiB input: {r:?}");
        }
        rss.push(vm_rss_kb() / 1024);
    }
    let handles: Vec<_> = (0..4)
        .map(|_| lease.submit_call(ChildRss).unwrap())
        .collect();
    let mut child = Vec::new();
    for h in handles {
        child.push(h.await.unwrap() / 1024);
    }
    println!("    parent RSS {before} MiB, after each round {rss:?} MiB; children {child:?} MiB");
    check!(
        rss.iter().all(|&r| r < before + 40),
        "the parent keeps no 24 MiB buffer per worker: {before} -> {rss:?} MiB"
    );
    check!(
        child.iter().all(|&r| r < 40),
        "the children keep no 24 MiB buffer: {child:?} MiB"
    );
    drop(lease);
    m.stop().await;
}
