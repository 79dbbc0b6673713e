//! What a job starts: grandchildren die with their child's group (or are killed when they leave
//! it), inherit no protocol pipe and cannot wedge the worker; a child starts no worker children of
//! its own.

use leasepool::{process, LeaseError};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn a_child_never_starts_children_of_its_own() {
    let m = builder("pt-nested", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (in_child, error) = lease.call(Nested).await.unwrap();
    assert!(in_child, "the job knows it runs in a worker child");
    assert!(
        error.contains("cannot start worker processes of its own"),
        "{error:?}"
    );
    assert!(!process::is_worker_child(), "the parent is no child");
    lease.release().await;
    m.stop().await;
}

/// No child holds another child's pipes (each watcher's wake pipe is close-on-exec): every
/// child of a pool has the same number of pipe descriptors, however many were started before.
#[testkit::test]
async fn no_child_inherits_another_childs_pipes() {
    let m = builder("pt-fds", 1, 4).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    // Four at once, once the four children run: one in each child.
    let me = std::process::id();
    assert!(
        eventually(Duration::from_secs(10), || children_of(me).0.len() == 4),
        "four children started: {:?}",
        children_of(me)
    );
    let asked: Vec<_> = (0..4)
        .map(|_| lease.submit_call(PipeFds { nap_ms: 300 }).unwrap())
        .collect();
    let mut per_child = std::collections::BTreeMap::new();
    for a in asked {
        let (pid, pipes) = a.await.unwrap();
        per_child.insert(pid, pipes);
    }
    assert_eq!(per_child.len(), 4, "one job in each child: {per_child:?}");
    let counts: std::collections::BTreeSet<_> = per_child.values().collect();
    assert_eq!(
        counts.len(),
        1,
        "pipe descriptors per child differ: {per_child:?}"
    );
    lease.release().await;
    m.stop().await;
}

/// A job starts a grandchild (same process group) and then its child aborts: WorkerLost, promptly?
#[testkit::test]
async fn grandchild_then_crash() {
    let m = impatient_builder("adv-gc", 1, 1)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().lease_for(Duration::from_secs(6)).await.unwrap();
    let hard = lease.hard_expires_at();
    let (r, took) = timed(
        Duration::from_secs(15),
        lease.call(Grandchild {
            secs: 60,
            own_group: false,
            abort_after: true,
        }),
    )
    .await;
    println!(
        "    answer {r:?} after {took:?} (hard expiry at +{:?})",
        hard.saturating_duration_since(Instant::now())
    );
    check!(
        r == Some(Err(LeaseError::WorkerLost)) && took < Duration::from_secs(2),
        "crash with a live grandchild answers WorkerLost promptly: got {r:?} after {took:?}"
    );
    drop(lease);
    m.stop().await;
    report_leftovers("after stop", "adv-gc");
}

/// The same with the grandchild in its own process group: does it survive, does stop hang?
#[testkit::test]
async fn escaped_grandchild_then_crash() {
    let dir = scratch("egc");
    let file = dir.join("gpid");
    std::env::set_var("ADV_GRANDCHILD_FILE", &file);
    let m = impatient_builder("adv-egc", 1, 1)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().lease_for(Duration::from_secs(3)).await.unwrap();
    let (r, took) = timed(
        Duration::from_secs(15),
        lease.call(Grandchild {
            secs: 60,
            own_group: true,
            abort_after: true,
        }),
    )
    .await;
    check!(
        r == Some(Err(LeaseError::WorkerLost)) && took < Duration::from_secs(2),
        "crash with an escaped grandchild answers WorkerLost promptly: got {r:?} after {took:?}"
    );
    drop(lease);
    let t = Instant::now();
    m.stop().await;
    println!("    stop took {:?}", t.elapsed());
    let gp: u32 = std::fs::read_to_string(&file)
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    println!("    grandchild {gp} alive after stop: {}", alive(gp));
    let logs = threads_with("adv-egc");
    check!(logs.is_empty(), "no log threads left after stop: {logs:?}");
    reap_leftovers(&[gp]);
    std::env::remove_var("ADV_GRANDCHILD_FILE");
}

/// A job starts a grandchild and returns normally; then stop(). Is the grandchild left, the
/// log thread left, does stop take long?
#[testkit::test]
async fn grandchild_outlives_job_then_stop() {
    let m = impatient_builder("adv-gcs", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (child, gp) = lease
        .call(Grandchild {
            secs: 30,
            own_group: false,
            abort_after: false,
        })
        .await
        .unwrap();
    let fds = lease.call(Fds).await.unwrap();
    println!("    child {child} fds as inherited by its subprocesses: {fds:?}");
    lease.release().await;
    let t = Instant::now();
    m.stop().await;
    let took = t.elapsed();
    println!("    stop took {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    check!(!alive(child), "the child {child} ended");
    check!(
        !alive(gp),
        "the job's grandchild {gp} (same process group) did not outlive stop()"
    );
    let logs = threads_with("adv-gcs");
    check!(
        logs.is_empty(),
        "no thread named adv-gcs* after stop (found {logs:?})"
    );
    reap_leftovers(&[gp]);
    let left = eventually(Duration::from_secs(2), || {
        threads_with("adv-gcs").is_empty()
    });
    println!("    after killing the grandchild, threads gone: {left}");
}

#[testkit::test]
async fn recycling_leaks_grandchildren_and_log_threads() {
    let m = impatient_builder("adv-rcy", 1, 1)
        .max_jobs_per_child(1)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let mut gps = Vec::new();
    for _ in 0..10 {
        let (_, gp) = lease
            .call(Grandchild {
                secs: 30,
                own_group: false,
                abort_after: false,
            })
            .await
            .unwrap();
        gps.push(gp);
    }
    std::thread::sleep(Duration::from_millis(300));
    let alive_gps = gps.iter().filter(|&&p| alive(p)).count();
    let logs: Vec<_> = threads_with("adv-rcy")
        .into_iter()
        .filter(|t| t.ends_with("lo") || t.ends_with("log"))
        .collect();
    println!(
        "    after 10 recycled children: {alive_gps} grandchildren alive, {} log threads: {logs:?}",
        logs.len()
    );
    check!(
        alive_gps == 0 && logs.len() <= 1,
        "recycling leaves no grandchildren and no extra log threads"
    );
    lease.release().await;
    m.stop().await;
    reap_leftovers(&gps);
    eventually(Duration::from_secs(3), || {
        threads_with("adv-rcy").is_empty()
    });
    report_leftovers("end", "adv-rcy");
}

#[testkit::test]
async fn wrapper_script_without_exec() {
    let prog = script("noexec", &exe());
    let m = impatient_builder("adv-nx", 1, 1)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start: {r:?} in {took:?}");
    m.stop().await;
    report_leftovers("end", "adv-nx");
}

/// A process outside the child's group keeps writing into its stderr: recycling and stop must
/// still end the worker's log thread.
#[testkit::test]
async fn a_writer_outside_the_group_cannot_wedge_the_worker() {
    let m = impatient_builder("adv-chat", 1, 1)
        .max_jobs_per_child(1)
        .shutdown_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let daemon = lease.call(ChattyDaemon).await.unwrap();
    let (r, took) = timed(Duration::from_secs(8), lease.call(Pid)).await;
    check!(
        matches!(r, Some(Ok(_))),
        "the recycled worker answers the next job: {r:?} after {took:?}"
    );
    drop(lease);
    let t = Instant::now();
    m.stop().await;
    let took = t.elapsed();
    let left = threads_with("adv-chat");
    kill("-KILL", daemon);
    check!(
        took < Duration::from_secs(4),
        "stop within shutdown_timeout + 2 s: {took:?}"
    );
    check!(
        left.is_empty(),
        "no worker or log thread left after stop: {left:?}"
    );
}

/// A child that left its process group is still killed at hard expiry.
#[testkit::test]
async fn a_child_that_left_its_group_is_still_killed() {
    let m = impatient_builder("adv-lg", 1, 1)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m
        .acquire()
        .lease_for(Duration::from_millis(300))
        .await
        .unwrap();
    let (r, took) = timed(Duration::from_secs(6), lease.call(LeaveGroup(30_000))).await;
    check!(
        r == Some(Err(LeaseError::Expired)),
        "killed at expiry: {r:?} after {took:?}"
    );
    drop(lease);
    m.stop().await;
    let (live, _) = kids();
    for p in &live {
        kill("-KILL", *p);
    }
    check!(live.is_empty(), "no child left: {live:?}");
}
