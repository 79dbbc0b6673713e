//! What the counters and the idle pool say: each counter counts what it says on both backends,
//! recycling after `max_jobs_per_child`, failed starts are no crashes, an idle pool costs nothing.

use leasepool::{LeaseError, LeaseManager, StopMode, WorkGrinder};
use std::time::{Duration, Instant};

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn max_jobs_per_child_replaces_the_child() {
    let m = builder("pt-recycle", 1, 1)
        .max_jobs_per_child(2)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let mut pids = Vec::new();
    for _ in 0..5 {
        pids.push(lease.call(Pid).await.unwrap());
    }
    assert_eq!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2], "a new child after two jobs");
    assert_eq!(pids[2], pids[3]);
    assert_ne!(pids[3], pids[4]);
    assert!(!alive(pids[0]), "the recycled child ended");
    lease.release().await;
    m.stop().await;
}

/// An idle pool of 16 children costs under 0.2 % of a core over 10 s: nothing polls.
#[testkit::test]
async fn an_idle_pool_of_sixteen_children_costs_nothing() {
    let m = builder("pt-idle", 2, 8).build().unwrap();
    m.start().await.unwrap();
    let me = std::process::id();
    assert!(eventually(Duration::from_secs(20), || children_of(me)
        .0
        .len()
        == 16));
    // Settle: the children's start-up output is read and logged.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu, ctx, begun) = (cpu_used(), switches(), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (spent, switched, took) = (cpu_used() - cpu, switches() - ctx, begun.elapsed());
    let share = spent.as_secs_f64() / took.as_secs_f64();
    println!(
        "    idle 16 children: {spent:?} of CPU in {took:.1?} ({:.3} % of a core), {switched} context switches",
        share * 100.0
    );
    assert!(share < 0.002, "{:.3} % of a core", share * 100.0);
    m.stop().await;
}

/// Every counter counts what its doc says on the process backend: completed, panicked,
/// failed, lost; children started, crashed, killed at hard expiry, over their memory limit,
/// recycled; no worker state rebuilt for a child replaced.
#[testkit::test]
async fn every_counter_counts_what_it_says_on_the_process_backend() {
    let m = builder("pt-count", 1, 1)
        .child_memory_limit(512 << 20)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    assert!(lease.call(Pid).await.is_ok());
    assert!(lease.call(Pid).await.is_ok());
    assert!(matches!(
        lease.call(Boom("b".into())).await,
        Err(LeaseError::Panicked(_))
    ));
    assert_eq!(lease.call(Abort).await, Err(LeaseError::WorkerLost));
    assert_eq!(
        lease.call(Hog { bytes: 2 << 30 }).await,
        Err(LeaseError::WorkerLost)
    );
    check_answer(
        7,
        Fault::EncodeOutput,
        lease.call(fragile(7, Fault::EncodeOutput)).await,
    );
    lease.release().await;
    let dir = scratch("count");
    let pid_file = dir.join("pid");
    let short = m
        .acquire()
        .lease_for(Duration::from_millis(300))
        .await
        .unwrap();
    let hang = Hang {
        pid_file: pid_file.clone(),
    };
    assert_eq!(short.call(hang).await, Err(LeaseError::Expired));
    drop(short);
    // The pool went with its lease; its replacement's child serves.
    let next = m.acquire().await.unwrap();
    assert!(next.call(Pid).await.is_ok());
    next.release().await;
    counted(&m, [3, 1, 1, 3], None).await;
    // Children: the first, one after the crash, one after the memory death, one in the new
    // pool — and perhaps one the runaway's worker started before its pool retired.
    let c = testkit::stats_until(&m, "the children counted", |s| {
        children_counted(&s.counters)[1..] == [1, 1, 1, 0]
    })
    .await
    .counters;
    assert!((4..=5).contains(&c.children_started), "{c:?}");
    assert_eq!((c.worker_states_rebuilt, c.revoked), (0, 1), "{c:?}");
    m.stop().await;

    // Recycling: a new child every second job.
    let m = builder("pt-count-recycle", 1, 1)
        .max_jobs_per_child(2)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    for _ in 0..5 {
        assert!(lease.call(Pid).await.is_ok());
    }
    lease.release().await;
    let c = m.stats().await.counters;
    assert_eq!(jobs_counted(&c), [5, 0, 0, 0], "{c:?}");
    assert_eq!(children_counted(&c), [3, 0, 0, 0, 2], "{c:?}");
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The same counters on the thread backend: a panic rebuilds the worker state; no child.
#[testkit::test]
async fn every_counter_counts_what_it_says_on_the_thread_backend() {
    let m = LeaseManager::builder()
        .name_prefix("pt-count-thread")
        .max_pools(1)
        .workers_per_pool(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    assert_eq!(lease.run(|| 1).await, Ok(1));
    assert!(lease.call(Pid).await.is_ok());
    assert!(matches!(
        lease.call(Boom("b".into())).await,
        Err(LeaseError::Panicked(_))
    ));
    assert!(lease.run(|| panic!("closure")).await.is_err());
    // Serde does not run on threads: a "fragile" job just runs.
    check_answer(3, Fault::None, lease.call(fragile(3, Fault::None)).await);
    lease.release().await;
    let g = WorkGrinder::builder(&m)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let items: Vec<_> = (0..10)
        .map(|i| g.enqueue_call(fragile(i, Fault::None)).unwrap())
        .collect();
    for (i, h) in items.into_iter().enumerate() {
        check_answer(i as u32, Fault::None, h.await);
    }
    g.stop(StopMode::Drain).await;
    let c = counted(&m, [13, 2, 0, 0], Some([0; 5])).await;
    assert_eq!(c.worker_states_rebuilt, 2, "{c:?}");
    m.stop().await;
}

/// A child that fails its start is no crash: only the killed one counts, however many of its
/// replacements fail — whether they refuse in `on_child_start` or exit before their handshake.
#[testkit::test]
async fn children_that_fail_their_start_are_not_counted_as_crashes() {
    let dir = scratch("start-fails");
    // A worker program that exits at once while `exit-now` exists.
    let script = dir.join("worker.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ -e {dir}/exit-now ] && exit 3\nexec {exe}\n",
            dir = dir.display(),
            exe = std::env::current_exe().unwrap().display()
        ),
    )
    .unwrap();
    let made = std::process::Command::new("chmod")
        .args(["+x", &script.display().to_string()])
        .status()
        .unwrap();
    assert!(made.success());
    for refusal in ["on_child_start", "exit"] {
        let m = builder(&format!("pt-start-fails-{refusal}"), 1, 1)
            .worker_program(&script)
            .build()
            .unwrap();
        m.start().await.unwrap();
        let lease = m.acquire().await.unwrap();
        let pid = lease.call(Pid).await.unwrap();
        let flag = match refusal {
            "exit" => dir.join("exit-now"),
            _ => refuse_starts_flag(),
        };
        std::fs::write(&flag, b"").unwrap();
        kill_now(pid);
        assert_eq!(
            lease.call(Pid).await,
            Err(LeaseError::NeverRan),
            "{refusal}"
        );
        // The worker retries with backoff meanwhile: a few starts fail.
        let s = testkit::stats_until(&m, "starts refused", |s| {
            s.counters.worker_state_failures >= 3
        })
        .await;
        assert_eq!(
            children_counted(&s.counters),
            [1, 1, 0, 0, 0],
            "{refusal}: {s:?}"
        );
        std::fs::remove_file(&flag).unwrap();
        lease.release().await;
        m.stop().await;
    }
    let _ = std::fs::remove_dir_all(dir);
}
