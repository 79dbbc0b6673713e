//! A child that dies: the job it ran answers `WorkerLost`, its siblings are spared, the next job
//! goes to a new child — whether it aborts, is killed while idle or mid-write, is stopped, or
//! answers garbage.

use leasepool::LeaseError;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use testkit::capture::captured;

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn a_crash_answers_worker_lost_and_spares_its_sibling() {
    for crash in [Crash::Abort, Crash::Exit(3), Crash::Segv, Crash::Killed] {
        let what = match crash {
            Crash::Abort => "abort",
            Crash::Exit(_) => "exit",
            Crash::Segv => "segv",
            Crash::Killed => "sigkill",
        };
        let m = builder("pt-crash", 1, 2).build().unwrap();
        m.start().await.unwrap();
        let dir = scratch("crash");
        let flag = dir.join("go");
        let lease = m.acquire().await.unwrap();
        // The sibling runs on the pool's other child until the flag appears.
        let sibling = lease
            .submit_call(WaitFor {
                flag: flag.clone(),
                timeout_ms: 20_000,
            })
            .unwrap();
        let err = lease.call(crash).await.unwrap_err();
        assert_eq!(err, LeaseError::WorkerLost, "{what}");
        std::fs::write(&flag, b"").unwrap();
        assert_eq!(
            sibling.await,
            Ok(true),
            "{what}: the sibling job finished normally"
        );
        // The pool serves on, with a new child in place of the crashed one.
        for _ in 0..4 {
            assert!(lease.call(Pid).await.is_ok(), "{what}");
        }
        let stats = m.stats().await;
        assert_eq!(stats.unhealthy, 0, "{what}: the pool stays healthy");
        lease.release().await;
        m.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    let lost = captured(|e| {
        e.fields.get("manager").map(String::as_str) == Some("pt-crash")
            && e.fields
                .get("message")
                .is_some_and(|m| m.contains("worker child lost"))
    });
    let statuses: Vec<&str> = lost
        .iter()
        .filter_map(|e| e.fields.get("status").map(String::as_str))
        .collect();
    for expected in [
        "signal 6 (SIGABRT)",
        "exited with code 3",
        "signal 11 (SIGSEGV)",
        "signal 9 (SIGKILL)",
    ] {
        assert!(
            statuses.iter().any(|s| s.contains(expected)),
            "a log line says {expected:?}: {statuses:?}"
        );
    }
}

#[testkit::test]
async fn a_malformed_frame_replaces_only_that_child() {
    let m = builder("pt-corrupt", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let before = lease.call(Pid).await.unwrap();
    assert_eq!(lease.call(Corrupt).await, Err(LeaseError::WorkerLost));
    let after = lease.call(Pid).await.unwrap();
    assert_ne!(before, after, "a new child");
    assert!(!alive(before), "the broken child was killed");
    lease.release().await;
    m.stop().await;
}

/// A child killed while its worker is idle is reaped and counted at once (no zombie waits for
/// the next job), and the next job runs in a new child as if nothing happened.
#[testkit::test]
async fn a_child_killed_while_idle_is_reaped_at_once() {
    let m = builder("pt-idle-kill", 1, 2).build().unwrap();
    m.start().await.unwrap();
    let me = std::process::id();
    assert!(eventually(Duration::from_secs(10), || children_of(me)
        .0
        .len()
        == 2));
    let victim = children_of(me).0[0];
    let killed = Instant::now();
    kill_now(victim);
    let reaped = eventually(Duration::from_secs(3), || stat(victim).is_none());
    let took = killed.elapsed();
    assert!(
        reaped,
        "child {victim} still {:?} after {took:?}",
        stat(victim)
    );
    println!("    reaped {took:?} after the kill");
    testkit::stats_until(&m, "the death counted", |s| {
        s.counters.children_crashed == 1
    })
    .await;
    // Both workers serve: two jobs at once need two children.
    let lease = m.acquire().await.unwrap();
    let a = lease.submit_call(Pid).unwrap();
    let b = lease.submit_call(Pid).unwrap();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(a != victim && b != victim);
    let c = m.stats().await.counters;
    assert_eq!(jobs_counted(&c), [2, 0, 0, 0], "{c:?}");
    assert_eq!(children_counted(&c), [3, 1, 0, 0, 0], "{c:?}");
    assert_eq!(m.stats().await.unhealthy, 0);
    lease.release().await;
    m.stop().await;
}

/// A job sent to a child that was killed a moment before — still exiting, so its pipe takes the
/// job — goes to a new child: the old one never took the job from its pipe, so it cannot have
/// started it. Before, it answered `WorkerLost` (a big child takes a while to exit).
#[testkit::test]
async fn a_job_sent_to_a_child_that_was_just_killed_goes_to_a_new_one() {
    let m = builder("pt-just-killed", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    for round in 0..8 {
        let pid = lease.call(Keep { mb: 200 }).await.unwrap();
        kill_now(pid);
        let next = lease.call(Pid).await;
        assert!(
            matches!(next, Ok(p) if p != pid),
            "round {round}: {next:?} after killing {pid}"
        );
    }
    let c = counted(&m, [16, 0, 0, 0], None).await;
    assert_eq!(children_counted(&c)[..2], [9, 8], "{c:?}");
    lease.release().await;
    m.stop().await;
}

/// A child killed from outside while idle, while a grandchild of it holds the pipes; then a
/// call with a 1 MiB input on a lease that expires in 1.5 s.
#[testkit::test]
async fn idle_kill9_with_grandchild_then_big_call() {
    let m = impatient_builder("adv-k9g", 1, 1)
        .lease_grace(Duration::ZERO)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m
        .acquire()
        .lease_for(Duration::from_secs(30))
        .await
        .unwrap();
    let (child, gp) = lease
        .call(Grandchild {
            secs: 60,
            own_group: false,
            abort_after: false,
        })
        .await
        .unwrap();
    drop(lease);
    kill("-KILL", child); // the OOM killer picks the child, not its sleep
    std::thread::sleep(Duration::from_millis(100));
    let lease = m
        .acquire()
        .lease_for(Duration::from_millis(1500))
        .await
        .unwrap();
    let (r, took) = timed(Duration::from_secs(6), lease.call(Bytes(vec![1; 1 << 20]))).await;
    check!(
        r.is_some(),
        "a call after the child was killed answers (got {r:?} after {took:?})"
    );
    check!(
        matches!(r, Some(Err(LeaseError::WorkerLost)) | Some(Ok(_))),
        "... and answers WorkerLost or is served: {r:?}"
    );
    drop(lease);
    let (s, stook) = timed(Duration::from_secs(10), m.stop()).await;
    println!("    stop finished: {}, took {stook:?}", s.is_some());
    let threads = threads_with("adv-k9g");
    check!(
        threads.is_empty(),
        "no worker thread left after stop (found {threads:?})"
    );
    reap_leftovers(&[gp]);
    let gone = eventually(Duration::from_secs(3), || {
        threads_with("adv-k9g").is_empty()
    });
    println!("    after the grandchild is killed, the threads end: {gone}");
    report_leftovers("end", "adv-k9g");
}

/// Small-input variant: kill -9 the child while a grandchild holds the pipes, then a small
/// call on a lease with no short expiry.
#[testkit::test]
async fn idle_kill9_with_grandchild_then_small_call() {
    let m = impatient_builder("adv-k9s", 1, 1)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m
        .acquire()
        .lease_for(Duration::from_secs(60))
        .await
        .unwrap();
    let (child, gp) = lease
        .call(Grandchild {
            secs: 60,
            own_group: false,
            abort_after: false,
        })
        .await
        .unwrap();
    kill("-KILL", child);
    std::thread::sleep(Duration::from_millis(100));
    let (r, took) = timed(Duration::from_secs(5), lease.call(Pid)).await;
    check!(
        matches!(r, Some(Err(LeaseError::WorkerLost)) | Some(Ok(_))),
        "small call after kill -9 (grandchild alive) answers: {r:?} after {took:?}"
    );
    drop(lease);
    let (_, stook) = timed(Duration::from_secs(10), m.stop()).await;
    println!("    stop took {stook:?}");
    reap_leftovers(&[gp]);
    eventually(Duration::from_secs(3), || {
        threads_with("adv-k9s").is_empty()
    });
    report_leftovers("end", "adv-k9s");
}

/// kill -9 an idle child (no grandchild), then call: WorkerLost or served, never a hang.
#[testkit::test]
async fn idle_kill9_then_call() {
    let m = impatient_builder("adv-k9", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let child = lease.call(Pid).await.unwrap();
    kill("-KILL", child);
    std::thread::sleep(Duration::from_millis(100));
    let (r, took) = timed(Duration::from_secs(5), lease.call(Bytes(vec![0; 1 << 20]))).await;
    check!(
        matches!(r, Some(Err(LeaseError::WorkerLost)) | Some(Ok(_))),
        "call after kill -9 of an idle child: {r:?} after {took:?}"
    );
    let r2 = lease.call(Pid).await;
    check!(r2.is_ok(), "then the pool serves again: {r2:?}");
    lease.release().await;
    m.stop().await;
    report_leftovers("end", "adv-k9");
}

/// SIGSTOP an idle child, then call with a 1 MiB input on a lease that expires in 1 s.
#[testkit::test]
async fn sigstop_idle_then_big_call() {
    let m = impatient_builder("adv-stp", 1, 1)
        .lease_grace(Duration::ZERO)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m
        .acquire()
        .lease_for(Duration::from_secs(30))
        .await
        .unwrap();
    let child = lease.call(Pid).await.unwrap();
    drop(lease);
    kill("-STOP", child);
    let lease = m
        .acquire()
        .lease_for(Duration::from_millis(1000))
        .await
        .unwrap();
    let hard = lease.hard_expires_at();
    let (r, took) = timed(Duration::from_secs(5), lease.call(Bytes(vec![1; 1 << 20]))).await;
    let late = Instant::now().saturating_duration_since(hard);
    check!(
        r == Some(Err(LeaseError::Expired)),
        "a stopped child is killed at hard expiry: got {r:?} after {took:?} ({late:?} past expiry)"
    );
    drop(lease);
    let (_, stook) = timed(Duration::from_secs(10), m.stop()).await;
    println!(
        "    stop took {stook:?}; child {child} alive: {}",
        alive(child)
    );
    check!(
        !alive(child),
        "the stopped child {child} is gone after stop()"
    );
    let th = threads_with("adv-stp");
    check!(th.is_empty(), "no thread left after stop: {th:?}");
    reap_leftovers(&[child]);
    eventually(Duration::from_secs(3), || {
        threads_with("adv-stp").is_empty()
    });
    report_leftovers("end", "adv-stp");
}

/// A job writes an extra well-formed Done frame on the protocol pipe: the next job's answer?
#[testkit::test]
async fn injected_frame() {
    let m = impatient_builder("adv-inj", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    // Done(postcard(u32 = 4242)): variant 2, len 2, varint 4242 = 0x92 0x21
    let frame = vec![4, 0, 0, 0, 2, 2, 0x92, 0x21];
    let i = lease.call(Inject(frame)).await;
    println!("    the injecting job (real output 1) answered {i:?}");
    let mut r = Ok(0);
    for k in 0..3 {
        r = lease.call(Pid).await;
        let q = lease.call(Bytes(vec![0; 5])).await;
        println!("    then Pid #{k} answered {r:?}, Bytes(5) answered {q:?}");
    }
    check!(
        r != Ok(4242),
        "the next job does not get a stale injected answer"
    );
    lease.release().await;
    m.stop().await;
}

#[testkit::test]
async fn exit_while_writing() {
    let m = impatient_builder("adv-eww", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    for i in 0..5 {
        let (r, took) = timed(Duration::from_secs(5), lease.call(ExitWhileWriting)).await;
        check!(
            r == Some(Err(LeaseError::WorkerLost)),
            "round {i}: {r:?} in {took:?}"
        );
    }
    lease.release().await;
    m.stop().await;
    report_leftovers("end", "adv-eww");
}

/// Many concurrent calls with crashes and panics mixed in: every answer exactly once and right.
#[testkit::test]
async fn mixed_storm() {
    let fd0 = fd_count();
    let m = impatient_builder("adv-storm", 2, 3).build().unwrap();
    m.start().await.unwrap();
    let a = m.acquire().await.unwrap();
    let b = m.acquire().await.unwrap();
    let mut handles = Vec::new();
    for i in 0..300usize {
        let l = if i % 2 == 0 { &a } else { &b };
        let h: leasepool::JobHandle<u32> = match i % 7 {
            0 => l.submit_call(Fail::Abort).unwrap(),
            1 => l.submit_call(Fail::Panic).unwrap(),
            2 => l.submit_call(Fail::Exit(1)).unwrap(),
            3 => l.submit_call(SleepMs(3)).unwrap(),
            _ => l.submit_call(Pid).unwrap(),
        };
        handles.push((i, h));
    }
    let mut wrong = Vec::new();
    let (mut ok, mut lost, mut panicked) = (0, 0, 0);
    for (i, h) in handles {
        let (r, _) = timed(Duration::from_secs(30), h).await;
        match (i % 7, r) {
            (0 | 2, Some(Err(LeaseError::WorkerLost))) => lost += 1,
            (1, Some(Err(LeaseError::Panicked(_)))) => panicked += 1,
            (3..=6, Some(Ok(_))) => ok += 1,
            (k, other) => wrong.push((i, k, other)),
        }
    }
    println!("    ok {ok}, lost {lost}, panicked {panicked}");
    check!(
        wrong.is_empty(),
        "every answer right: wrong {:?}",
        &wrong[..wrong.len().min(10)]
    );
    let s = m.stats().await;
    check!(s.unhealthy == 0, "pools healthy: {s:?}");
    drop((a, b));
    m.stop().await;
    report_leftovers("end", "adv-storm");
    let fd1 = fd_count();
    check!(fd1 <= fd0, "fd count {fd0} -> {fd1}");
}

#[testkit::test]
async fn faults_during_jobs() {
    let m = impatient_builder("adv-flt", 1, 2)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pool = lease.pool();
    let c1 = lease.call(Pid).await.unwrap();
    let h = lease.submit_call(SleepMs(10_000)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let killed = m.kill_pool(pool).await;
    let (r, took) = timed(Duration::from_secs(5), h).await;
    println!("    kill_pool({killed}) during a job: {r:?} in {took:?}");
    check!(
        matches!(r, Some(Err(LeaseError::WorkerLost))) && took < Duration::from_secs(2),
        "kill_pool mid-job: WorkerLost promptly ({r:?} {took:?})"
    );
    drop(lease);
    std::thread::sleep(Duration::from_millis(500));
    println!("    child {c1} alive after kill_pool: {}", alive(c1));
    let lease = m.acquire().await.unwrap();
    let pool = lease.pool();
    let c2 = lease.call(Pid).await.unwrap();
    let killed = m.kill_worker(pool, 2).await;
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "    kill_worker({killed}): old child {c2} alive {}",
        alive(c2)
    );
    let (r, took) = timed(Duration::from_secs(5), lease.call(Pid)).await;
    check!(
        matches!(r, Some(Ok(_))),
        "after kill_worker the pool serves: {r:?} {took:?}"
    );
    let h = lease.submit_call(SleepMs(10_000)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let killed = m.kill_lease_actor(lease.id()).await;
    let (r, took) = timed(Duration::from_secs(5), h).await;
    println!("    kill_lease_actor({killed}) during a job: {r:?} in {took:?}");
    drop(lease);
    let (_, took) = timed(Duration::from_secs(10), m.stop()).await;
    println!("    stop took {took:?}");
    report_leftovers("end", "adv-flt");
}
