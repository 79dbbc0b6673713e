//! Hard expiry kills a runaway child; `stop` and drops end every child within their bounds, however
//! far its start, its job or its handshake got; children die with a killed parent.

use leasepool::LeaseError;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::jobs::*;
use crate::support::*;

#[testkit::test]
async fn a_runaway_job_is_killed_at_hard_expiry() {
    let m = builder("pt-runaway", 1, 1)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let dir = scratch("runaway");
    let pid_file = dir.join("pid");
    let lease = m
        .acquire()
        .lease_for(Duration::from_millis(200))
        .await
        .unwrap();
    let hard = lease.hard_expires_at();
    let err = lease
        .call(Spin {
            pid_file: pid_file.clone(),
        })
        .await
        .unwrap_err();
    let late = Instant::now().saturating_duration_since(hard);
    assert_eq!(err, LeaseError::Expired);
    assert!(
        late < Duration::from_secs(1),
        "answered {late:?} after the hard expiry"
    );
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    assert!(
        eventually(Duration::from_secs(1), || !alive(pid)),
        "the runaway child {pid} is gone"
    );
    drop(lease);
    // The pool was retired with the lease; a new one serves.
    let next = m.acquire().await.unwrap();
    assert!(next.call(Pid).await.is_ok());
    drop(next);
    m.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test]
async fn stop_past_shutdown_timeout_kills_running_children() {
    let m = builder("pt-stopkill", 1, 1)
        .shutdown_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let dir = scratch("stopkill");
    let pid_file = dir.join("pid");
    let lease = m.acquire().await.unwrap();
    let running = lease
        .submit_call(Spin {
            pid_file: pid_file.clone(),
        })
        .unwrap();
    assert!(eventually(Duration::from_secs(10), || pid_file.exists()));
    let pid: u32 = loop {
        if let Ok(p) = std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .parse()
        {
            break p;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let begun = Instant::now();
    m.stop().await;
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    assert_eq!(running.await, Err(LeaseError::Stopped));
    assert!(!alive(pid), "the runaway child was killed");
    assert_no_children("after stop");
    drop(lease);
    let _ = std::fs::remove_dir_all(dir);
}

#[testkit::test]
async fn children_die_with_a_killed_parent() {
    let exe = std::env::current_exe().unwrap();
    let mut parent = Command::new(exe)
        .env(PARENT_ROLE, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = parent.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the parent reports its children");
    let pids: Vec<u32> = line
        .strip_prefix("PIDS ")
        .expect("a PIDS line")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    parent.kill().unwrap();
    parent.wait().unwrap();
    let gone_at = Instant::now();
    let gone = eventually(Duration::from_secs(5), || pids.iter().all(|&p| !alive(p)));
    let took = gone_at.elapsed();
    assert!(gone, "children {pids:?} outlived their killed parent");
    assert!(
        took < Duration::from_secs(1),
        "children gone {took:?} after the parent"
    );
}

/// SIGSTOP a child during a job; the lease expires: it must still be killed.
#[testkit::test]
async fn sigstop_during_job_then_expiry() {
    let m = impatient_builder("adv-stj", 1, 1)
        .lease_grace(Duration::ZERO)
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
    let lease = m
        .acquire()
        .lease_for(Duration::from_millis(800))
        .await
        .unwrap();
    let hard = lease.hard_expires_at();
    let h = lease.submit_call(SleepMs(10_000)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    kill("-STOP", child);
    let (r, _) = timed(Duration::from_secs(5), h).await;
    let late = Instant::now().saturating_duration_since(hard);
    check!(
        r == Some(Err(LeaseError::Expired)) && late < Duration::from_secs(1),
        "stopped mid-job: {r:?}, {late:?} past expiry"
    );
    check!(
        eventually(Duration::from_secs(1), || !alive(child)),
        "child {child} killed"
    );
    drop(lease);
    m.stop().await;
    reap_leftovers(&[child]);
    report_leftovers("end", "adv-stj");
}

/// A job leaves a thread that keeps logging; then stop().
#[testkit::test]
async fn background_logger_then_stop() {
    let m = impatient_builder("adv-bg", 1, 2).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let p = lease.call(BgLogger).await.unwrap();
    for _ in 0..20 {
        assert!(lease.call(Pid).await.is_ok());
    }
    std::thread::sleep(Duration::from_millis(300));
    lease.release().await;
    let (_, took) = timed(Duration::from_secs(10), m.stop()).await;
    println!(
        "    stop took {took:?}; {} forwarded lines",
        OUTPUT_LINES.load(Ordering::Relaxed)
    );
    check!(!alive(p), "child {p} gone");
    report_leftovers("end", "adv-bg");
}

/// stop() while children are still in a slow on_child_start (3 s).
#[testkit::test]
async fn stop_during_slow_child_start() {
    let prog = script("slow", &format!("ADV_START_SLEEP_MS=3000 exec {}", exe()));
    let m = impatient_builder("adv-slow", 2, 2)
        .worker_program(prog)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let (r, _) = timed(Duration::from_millis(500), m.start()).await;
    println!("    start within 500 ms: {r:?}");
    std::thread::sleep(Duration::from_millis(200));
    let (live_before, _) = kids();
    let (s, took) = timed(Duration::from_secs(10), m.stop()).await;
    let (live_after, _) = kids();
    println!(
        "    children before stop {live_before:?}; stop done {} in {took:?}; after {live_after:?}",
        s.is_some()
    );
    check!(
        live_after.is_empty(),
        "stop() leaves no child even while they start (left {live_after:?})"
    );
    let th = threads_with("adv-slow");
    check!(
        th.is_empty(),
        "no thread left right after stop (found {th:?})"
    );
    eventually(Duration::from_secs(6), || {
        kids().0.is_empty() && threads_with("adv-slow").is_empty()
    });
    report_leftovers("6 s later", "adv-slow");
}

/// A worker program that never handshakes; child_start_timeout 20 s; stop after 1 s.
#[testkit::test]
async fn stop_during_hung_handshake() {
    let prog = script("hung", "exec sleep 100");
    let m = impatient_builder("adv-hung", 1, 1)
        .worker_program(prog)
        .child_start_timeout(Duration::from_secs(20))
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let (r, _) = timed(Duration::from_secs(1), m.start()).await;
    println!("    start within 1 s: {r:?}");
    let (live_before, _) = kids();
    let (s, took) = timed(Duration::from_secs(10), m.stop()).await;
    std::thread::sleep(Duration::from_millis(300));
    let (live_after, _) = kids();
    println!(
        "    before stop {live_before:?}; stop done {} in {took:?}; after {live_after:?}",
        s.is_some()
    );
    check!(
        live_after.is_empty(),
        "stop() leaves no child during a hung handshake (left {live_after:?})"
    );
    let th = threads_with("adv-hung");
    check!(th.is_empty(), "no thread left after stop (found {th:?})");
    // Leave it to end by its own timeout.
    let t = Instant::now();
    let ok = eventually(Duration::from_secs(25), || {
        kids().0.is_empty() && threads_with("adv-hung").is_empty()
    });
    println!(
        "    child and thread end on their own after {:?}: {ok}",
        t.elapsed()
    );
    reap_leftovers(&live_after);
}

#[testkit::test]
async fn start_stop_cycles() {
    let fd0 = fd_count();
    let th0 = thread_names().len();
    for i in 0..8 {
        let m = impatient_builder("adv-cyc", 1, 2).build().unwrap();
        m.start().await.unwrap();
        let l = m.acquire().await.unwrap();
        let _ = l.call(Pid).await.unwrap();
        if i % 2 == 0 {
            drop(l.submit_call(SleepMs(5000)).unwrap()); // stop must kill it
        }
        drop(l);
        m.stop().await;
    }
    std::thread::sleep(Duration::from_millis(300));
    let fd1 = fd_count();
    let th1 = thread_names().len();
    check!(fd1 <= fd0, "fds {fd0} -> {fd1}");
    check!(th1 <= th0, "threads {th0} -> {th1} ({:?})", thread_names());
    report_leftovers("end", "adv-cyc");
}

/// Dropping the call future mid-job, dropping the Lease mid-job, then stop().
#[testkit::test]
async fn drops_mid_job() {
    let m = impatient_builder("adv-drop", 1, 1)
        .shutdown_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let (r, _) = timed(Duration::from_millis(200), lease.call(SleepMs(1000))).await;
    check!(r.is_none(), "future dropped mid-job");
    let (r, took) = timed(Duration::from_secs(5), lease.call(Pid)).await;
    check!(
        matches!(r, Some(Ok(_))),
        "next call answers after the dropped one: {r:?} {took:?}"
    );
    let h = lease.submit_call(SleepMs(60_000)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    drop(lease);
    let (s, took) = timed(Duration::from_secs(10), m.stop()).await;
    check!(
        s.is_some() && took < Duration::from_secs(3),
        "stop bounded after dropping the lease: {took:?}"
    );
    let (r, _) = timed(Duration::from_secs(2), h).await;
    check!(
        r == Some(Err(LeaseError::Stopped)),
        "the running job answers Stopped: {r:?}"
    );
    report_leftovers("end", "adv-drop");
}

/// Drop of a manager (no stop) mid-job: Drop must not block; children gone eventually?
#[testkit::test]
async fn drop_manager_mid_job() {
    let m = impatient_builder("adv-dm", 1, 1)
        .shutdown_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let h = lease.submit_call(SleepMs(60_000)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    drop(lease);
    drop(m);
    let took = t.elapsed();
    check!(took < Duration::from_millis(100), "drop took {took:?}");
    let (r, _) = timed(Duration::from_secs(5), h).await;
    println!("    the running job answered {r:?}");
    let gone = eventually(Duration::from_secs(5), || kids().0.is_empty());
    check!(gone, "children gone after drop: {:?}", kids());
    report_leftovers("end", "adv-dm");
}

pub(crate) const PARENT_ROLE: &str = "LEASEPOOL_TEST_PARENT_ROLE";

/// The killed parent of `children_die_with_a_killed_parent`: starts two children, reports
/// their pids, then waits to be killed.
pub(crate) fn parent_role() -> ! {
    testkit::block_on_tokio(async {
        let m = builder("pt-orphan", 1, 2).build().unwrap();
        m.start().await.unwrap();
        let lease = m.acquire().await.unwrap();
        let dir = scratch("orphan");
        let job = || Rendezvous {
            dir: dir.clone(),
            expect: 2,
            timeout_ms: 20_000,
        };
        let (a, b) = (
            lease.submit_call(job()).unwrap(),
            lease.submit_call(job()).unwrap(),
        );
        let (a, b) = (a.await.unwrap().1, b.await.unwrap().1);
        println!("PIDS {a} {b}");
        let _ = std::fs::remove_dir_all(dir);
        std::thread::sleep(Duration::from_secs(600));
    });
    std::process::exit(0)
}
