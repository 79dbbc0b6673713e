//! Single calls: an answer for every job — values both ways, panics, closures and unknown jobs,
//! values that do not encode, deep values, the thread backend as the reference.

use leasepool::{BuildError, LeaseError, LeaseManager, StopMode, WorkGrinder};
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn round_trip() {
    let m = builder("pt-round", 1, 2).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (text, pid) = lease.call(Shout("hello, child".into())).await.unwrap();
    assert_eq!(text, "HELLO, CHILD");
    assert_ne!(pid, std::process::id(), "the job ran in a child");
    let handle = lease.submit_call(Shout("submitted".into())).unwrap();
    assert_eq!(handle.await.unwrap().0, "SUBMITTED");
    lease.release().await;
    m.stop().await;
    assert_no_children("after stop");
}

#[testkit::test]
async fn parallel_work_runs_in_parallel() {
    // 2 pools x 2 children: four jobs that each wait for all four prove four processes at once.
    let m = builder("pt-par", 2, 2).build().unwrap();
    m.start().await.unwrap();
    let dir = scratch("par");
    let a = m.acquire().await.unwrap();
    let b = m.acquire().await.unwrap();
    assert_ne!(a.pool(), b.pool());
    let job = || Rendezvous {
        dir: dir.clone(),
        expect: 4,
        timeout_ms: 20_000,
    };
    let handles = [
        a.submit_call(job()).unwrap(),
        a.submit_call(job()).unwrap(),
        b.submit_call(job()).unwrap(),
        b.submit_call(job()).unwrap(),
    ];
    let mut pids = Vec::new();
    for h in handles {
        let (seen, pid) = h.await.unwrap();
        assert_eq!(seen, 4, "every job saw the other three running");
        pids.push(pid);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4, "four distinct children");
    drop((a, b));
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test]
async fn a_panic_answers_panicked_and_the_child_survives() {
    let m = builder("pt-panic", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let before = lease.call(Pid).await.unwrap();
    let err = lease
        .call(Boom("kaboom in the child".into()))
        .await
        .unwrap_err();
    assert_eq!(err, LeaseError::Panicked("kaboom in the child".into()));
    assert_eq!(
        lease.call(Pid).await.unwrap(),
        before,
        "the same child serves on"
    );
    lease.release().await;
    m.stop().await;
}

#[testkit::test]
async fn the_thread_backend_gives_the_same_answers() {
    let m = LeaseManager::builder()
        .name_prefix("pt-thread")
        .process_jobs(crate::jobs())
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (text, pid) = lease.call(Shout("same".into())).await.unwrap();
    assert_eq!((text.as_str(), pid), ("SAME", std::process::id()));
    assert_eq!(
        lease.call(Boom("thread panic".into())).await,
        Err(LeaseError::Panicked("thread panic".into()))
    );
    assert_eq!(lease.call(Bytes(vec![0; 1000])).await, Ok(1000));
    // The worker survived the panic.
    assert!(lease.call(Pid).await.is_ok());
    lease.release().await;
    m.stop().await;
}

#[testkit::test]
async fn closures_and_unknown_jobs_fail_alone() {
    let m = builder("pt-refuse", 1, 1)
        .max_message_bytes(64 * 1024)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pid = lease.call(Pid).await.unwrap();
    let err = lease.run(|| 1).await.unwrap_err();
    assert!(
        matches!(err, LeaseError::InvalidArgument(ref t) if t.contains("call")),
        "{err}"
    );
    assert!(lease.submit(|| 1).is_err());
    let err = lease.call(Unregistered).await.unwrap_err();
    assert!(
        matches!(err, LeaseError::ProcessJob(ref t) if t.contains("unregistered.v1") && t.contains("not registered")),
        "{err}"
    );
    let err = lease.call(Bytes(vec![7; 100 * 1024])).await.unwrap_err();
    assert!(
        matches!(err, LeaseError::ProcessJob(ref t) if t.contains("max_message_bytes")),
        "{err}"
    );
    assert_eq!(lease.call(Bytes(vec![7; 1024])).await, Ok(1024));
    assert_eq!(
        lease.call(Pid).await.unwrap(),
        pid,
        "the same child served throughout"
    );
    lease.release().await;
    m.stop().await;
}

/// Each callback that panics answers `ProcessJob` naming its step, on `call` and `submit_call`;
/// the child serves on (one child from start to end).
#[testkit::test]
async fn a_panicking_callback_answers_its_job_and_the_child_serves_on() {
    let m = builder("pt-serde", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pid = lease.call(Pid).await.unwrap();
    for (i, fault) in FAULTS.into_iter().enumerate() {
        let id = i as u32;
        check_answer(id, fault, lease.call(fragile(id, fault)).await);
        let handle = lease.submit_call(fragile(id + 10, fault)).unwrap();
        check_answer(id + 10, fault, handle.await);
        assert_eq!(lease.call(Pid).await, Ok(pid), "{fault:?}: the same child");
    }
    check_answer(99, Fault::None, lease.call(fragile(99, Fault::None)).await);
    let c = m.stats().await.counters;
    assert_eq!(jobs_counted(&c), [6, 0, 8, 0], "{c:?}");
    assert_eq!(children_counted(&c), [1, 0, 0, 0, 0], "{c:?}");
    assert_eq!(c.worker_states_rebuilt, 0, "{c:?}");
    lease.release().await;
    m.stop().await;
}

/// An output over `max_message_bytes` stops being encoded at the cap: a 1 GiB output from a
/// child limited to 256 MiB answers `ProcessJob`, and the child serves on. (Encoded in full
/// first, it would kill the child: `WorkerLost`.) The same holds for an input in the parent.
#[testkit::test]
async fn an_output_over_the_cap_stops_encoding_at_the_cap() {
    let m = builder("pt-cap", 1, 1)
        .max_message_bytes(1 << 20)
        .child_memory_limit(256 << 20)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pid = lease.call(Pid).await.unwrap();
    let small = lease.call(Lazy { len: 1000 }).await.unwrap();
    assert_eq!(small.0, 1000);
    let err = lease.call(Lazy { len: 1 << 30 }).await.err().unwrap();
    assert!(
        matches!(&err, LeaseError::ProcessJob(t) if t.contains("over max_message_bytes (1048576)")),
        "{err:?}"
    );
    assert_eq!(lease.call(Pid).await, Ok(pid), "the same child");
    lease.release().await;
    // In a batch too.
    let g = WorkGrinder::builder(&m)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let big = g.enqueue_call(Lazy { len: 1 << 30 }).unwrap();
    let fine = g.enqueue_call(Lazy { len: 10 }).unwrap();
    assert!(matches!(big.await, Err(LeaseError::ProcessJob(t)) if t.contains("max_message_bytes")));
    assert_eq!(fine.await.map(|s| s.0), Ok(10));
    g.stop(StopMode::Drain).await;
    let c = m.stats().await.counters;
    assert_eq!(children_counted(&c), [1, 0, 0, 0, 0], "{c:?}");
    m.stop().await;
}

/// A child's output nested 40 000 deep — which the child encodes on its main thread — is
/// decoded by the parent without overflowing the worker thread's stack, on `call` and in a
/// grinder batch; and the child decodes a deep input the same way. (Before, the parent's worker
/// thread overflowed decoding it: the whole host process aborted.)
#[testkit::test]
async fn deeply_nested_values_cross_without_overflowing_a_stack() {
    // What the child's 8 MiB main thread encodes; the parent's worker threads have 2 MiB,
    // which overflowed at 20 000 before. The input: what a worker thread can encode.
    const DEPTH: usize = 40_000;
    const INPUT: usize = 5_000;
    let m = builder("pt-deep", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (seen, out) = lease
        .call(Deep {
            input: Node::deep(INPUT),
            output: DEPTH,
        })
        .await
        .unwrap();
    assert_eq!((seen, out.depth()), (INPUT, DEPTH));
    lease.release().await;
    let g = WorkGrinder::builder(&m)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let items: Vec<_> = (0..3)
        .map(|_| {
            g.enqueue_call(Deep {
                input: Node::deep(INPUT),
                output: DEPTH,
            })
            .unwrap()
        })
        .collect();
    for item in items {
        let (seen, out) = item.await.unwrap();
        assert_eq!((seen, out.depth()), (INPUT, DEPTH));
    }
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

#[testkit::test]
async fn tiny_max_message() {
    let r = impatient_builder("adv-tmm", 1, 1)
        .max_message_bytes(16)
        .build();
    check!(
        matches!(
            r,
            Err(BuildError::TooSmall {
                setting: "max_message_bytes",
                ..
            })
        ),
        "a too-small max_message_bytes is refused by build(), naming the setting"
    );
}

#[testkit::test]
async fn big_output_and_big_panic() {
    let m = impatient_builder("adv-big", 1, 1)
        .max_message_bytes(1 << 20)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let p = lease.call(Pid).await.unwrap();
    let r = lease.call(BigOut(2 << 20)).await;
    check!(
        matches!(r, Err(LeaseError::ProcessJob(_))),
        "over-size output: ProcessJob: {:?}",
        r.as_ref().map(Vec::len)
    );
    let r = lease.call(BigPanic(2 << 20)).await;
    let shown = match &r {
        Err(LeaseError::Panicked(m)) => format!("Panicked({} bytes)", m.len()),
        other => format!("{other:?}"),
    };
    check!(
        matches!(r, Err(LeaseError::Panicked(_))),
        "over-size panic message still answers Panicked (got {shown})"
    );
    // an exact-fit-ish output
    let r = lease.call(BigOut((1 << 20) - 16)).await;
    println!("    output of max-16 bytes: {:?}", r.as_ref().map(Vec::len));
    let r = lease.call(Bytes(vec![0; (1 << 20) - 40])).await;
    println!("    input of max-40 bytes: {r:?}");
    check!(lease.call(Pid).await == Ok(p), "same child throughout");
    lease.release().await;
    m.stop().await;
    report_leftovers("end", "adv-big");
}
