//! The process backend, end to end. `harness = false`: this binary is also the worker program
//! of its managers, so its `main` calls `process::init` first — the pattern
//! `docs/process-backend.md` recommends for tests. Each test runs on its own thread, one after
//! the other, under a `common::deadline_of` watchdog; `cargo test --test process <filter>`
//! runs the tests whose name contains `<filter>`.

#[path = "common/capture.rs"]
mod capture;
mod common;
#[path = "common/process.rs"]
mod proc_common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use capture::{captured, events, Captured};
use leasepool::process::{self, Jobs, ProcessJob};
use leasepool::{
    Backend, BuildError, LeaseError, LeaseManager, ManagerBuilder, StopMode, WorkGrinder,
};
use proc_common::{alive, children_of, eventually, scratch, Boom, Bytes, Hog, Pid};
use serde::{Deserialize, Serialize};

// ---- jobs ------------------------------------------------------------------------------------

/// Upper-cases its text; answers with the pid that did it.
#[derive(Serialize, Deserialize)]
struct Shout(String);
impl ProcessJob for Shout {
    const NAME: &'static str = "shout.v1";
    type Output = (String, u32);
    fn run(self) -> (String, u32) {
        (self.0.to_uppercase(), std::process::id())
    }
}

/// Ends its child the way a crash would.
#[derive(Serialize, Deserialize)]
enum Crash {
    Abort,
    Exit(i32),
    Segv,
    Killed,
}
impl ProcessJob for Crash {
    const NAME: &'static str = "crash.v1";
    type Output = ();
    fn run(self) {
        match self {
            Crash::Abort => std::process::abort(),
            Crash::Exit(code) => std::process::exit(code),
            Crash::Segv => {
                // The first SIGSEGV meets Rust's stack-overflow handler, which restores the
                // default action; the second kills, as a real segfault would.
                let me = std::process::id();
                let _ = Command::new("sh")
                    .args([
                        "-c",
                        &format!("kill -SEGV {me}; sleep 0.05; kill -SEGV {me}"),
                    ])
                    .status();
                std::thread::sleep(Duration::from_secs(30));
            }
            Crash::Killed => {
                // What the OOM killer does.
                let me = std::process::id();
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -KILL {me}")])
                    .status();
                std::thread::sleep(Duration::from_secs(30));
            }
        }
    }
}

/// Registers its pid in `dir`, then waits until `expect` jobs have (or `timeout_ms` passed);
/// answers how many it saw, and its pid. Only jobs that run at the same time all see `expect`.
#[derive(Serialize, Deserialize)]
struct Rendezvous {
    dir: PathBuf,
    expect: usize,
    timeout_ms: u64,
}
impl ProcessJob for Rendezvous {
    const NAME: &'static str = "rendezvous.v1";
    type Output = (usize, u32);
    fn run(self) -> (usize, u32) {
        let me = std::process::id();
        std::fs::write(
            self.dir
                .join(format!("{me}-{:?}", std::thread::current().id())),
            b"",
        )
        .expect("write the rendezvous file");
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        loop {
            let seen = std::fs::read_dir(&self.dir).map_or(0, Iterator::count);
            if seen >= self.expect || Instant::now() >= deadline {
                return (seen, me);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Waits until `flag` exists; answers whether it appeared in time.
#[derive(Serialize, Deserialize)]
struct WaitFor {
    flag: PathBuf,
    timeout_ms: u64,
}
impl ProcessJob for WaitFor {
    const NAME: &'static str = "wait-for.v1";
    type Output = bool;
    fn run(self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        while Instant::now() < deadline {
            if self.flag.exists() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

/// Writes its pid to `pid_file`, then spins forever.
#[derive(Serialize, Deserialize)]
struct Spin {
    pid_file: PathBuf,
}
impl ProcessJob for Spin {
    const NAME: &'static str = "spin.v1";
    type Output = ();
    fn run(self) {
        std::fs::write(&self.pid_file, std::process::id().to_string()).expect("write the pid");
        loop {
            std::hint::spin_loop();
        }
    }
}

/// Logs through `tracing`, prints on stdout and stderr; answers its pid.
#[derive(Serialize, Deserialize)]
struct Chatty;
impl ProcessJob for Chatty {
    const NAME: &'static str = "chatty.v1";
    type Output = u32;
    fn run(self) -> u32 {
        tracing::warn!(answer = 42, "hello from the child");
        println!("printed by a job on stdout");
        eprintln!("written by a job on stderr");
        std::process::id()
    }
}

/// Sends its reply as a malformed frame (fault injection).
#[derive(Serialize, Deserialize)]
struct Corrupt;
impl ProcessJob for Corrupt {
    const NAME: &'static str = "corrupt.v1";
    type Output = u32;
    fn run(self) -> u32 {
        process::corrupt_this_reply();
        std::process::id()
    }
}

/// Not registered in [`jobs`]: the children do not know it.
#[derive(Serialize, Deserialize)]
struct Unregistered;
impl ProcessJob for Unregistered {
    const NAME: &'static str = "unregistered.v1";
    type Output = ();
    fn run(self) {}
}

/// Same name as [`Shout`].
#[derive(Serialize, Deserialize)]
struct ShoutAgain;
impl ProcessJob for ShoutAgain {
    const NAME: &'static str = "shout.v1";
    type Output = ();
    fn run(self) {}
}

/// Tries, inside a child, to start a process-backend manager of its own; answers the error.
#[derive(Serialize, Deserialize)]
struct Nested;
impl ProcessJob for Nested {
    const NAME: &'static str = "nested.v1";
    type Output = (bool, String);
    fn run(self) -> (bool, String) {
        let m = LeaseManager::builder()
            .backend(Backend::Process)
            .process_jobs(jobs())
            .name_prefix("pt-nested-inner")
            .build()
            .expect("valid settings");
        let outcome = common::block_on_tokio(async {
            let r = m.start().await;
            m.stop().await;
            r
        });
        (
            process::is_worker_child(),
            outcome.err().map(|e| e.to_string()).unwrap_or_default(),
        )
    }
}

fn jobs() -> Jobs {
    Jobs::new()
        .register::<Nested>()
        .register::<Shout>()
        .register::<Pid>()
        .register::<Boom>()
        .register::<Crash>()
        .register::<Rendezvous>()
        .register::<WaitFor>()
        .register::<Spin>()
        .register::<Hog>()
        .register::<Chatty>()
        .register::<Corrupt>()
        .register::<Bytes>()
}

fn builder(prefix: &str, pools: usize, workers: usize) -> ManagerBuilder<()> {
    proc_common::process_builder(jobs(), prefix, pools, workers)
        .shutdown_timeout(Duration::from_secs(5))
}

// ---- helpers ---------------------------------------------------------------------------------

/// Children the test's own managers left running: must be none once they stopped.
fn assert_no_children(context: &str) {
    let me = std::process::id();
    assert!(
        eventually(Duration::from_secs(5), || children_of(me).0.is_empty()),
        "{context}: children still running: {:?}",
        children_of(me).0
    );
}

// ---- tests -----------------------------------------------------------------------------------

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

async fn child_logs_and_output_reach_the_parent_with_fields() {
    let m = builder("pt-logs", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let pid = lease.call(Chatty).await.unwrap().to_string();
    let from_child = |e: &Captured| {
        e.fields.get("manager").map(String::as_str) == Some("pt-logs")
            && e.fields.get("pid") == Some(&pid)
            && e.fields.get("pool").is_some_and(|p| p.starts_with("pool-"))
            && e.fields
                .get("worker")
                .is_some_and(|w| w.starts_with("pt-logs-0-"))
    };
    let arrived = eventually(Duration::from_secs(10), || {
        captured(|e| from_child(e) && e.target == "leasepool::process::output").len() >= 2
            && !captured(|e| from_child(e) && e.target == "leasepool::process::child").is_empty()
    });
    let all = captured(from_child);
    assert!(
        arrived,
        "the child's event and both output lines arrived: {all:#?}"
    );
    let event = all
        .iter()
        .find(|e| e.target == "leasepool::process::child")
        .unwrap();
    assert_eq!(event.fields["message"], "hello from the child");
    assert!(event.fields["fields"].contains("answer=42"), "{event:?}");
    assert_eq!(event.fields["child_target"], "process");
    let lines: Vec<&str> = all
        .iter()
        .filter(|e| e.target == "leasepool::process::output")
        .map(|e| e.fields["message"].as_str())
        .collect();
    assert!(lines.contains(&"printed by a job on stdout"), "{lines:?}");
    assert!(lines.contains(&"written by a job on stderr"), "{lines:?}");
    lease.release().await;
    m.stop().await;
}

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

const PARENT_ROLE: &str = "LEASEPOOL_TEST_PARENT_ROLE";

/// The killed parent of `children_die_with_a_killed_parent`: starts two children, reports
/// their pids, then waits to be killed.
fn parent_role() -> ! {
    common::block_on_tokio(async {
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

async fn the_grinder_runs_process_jobs() {
    let m = builder("pt-grind", 2, 2).build().unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(8)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let handles: Vec<_> = (0..40)
        .map(|i| g.enqueue_call(Shout(format!("item {i}"))).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().0, format!("ITEM {i}"));
    }
    assert_eq!(g.submit_call(Shout("one".into())).await.unwrap().0, "ONE");
    let err = g
        .submit_call(Boom("grinder item".into()))
        .await
        .unwrap_err();
    assert_eq!(err, LeaseError::Panicked("grinder item".into()));
    let refused = g.submit(|| 1).await.unwrap_err();
    assert!(matches!(refused, LeaseError::InvalidArgument(ref t) if t.contains("submit_call")));
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

async fn grinder_items_in_one_frame_are_answered_each_on_their_own() {
    // 2 pools x 2 children, threshold 60: batches of 60 items of mixed outcomes, each batch
    // sent as one frame per child.
    let m = builder("pt-gframe", 2, 2).build().unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(60)
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    g.start().await.unwrap();
    enum Item {
        Panics(leasepool::JobHandle<()>),
        Shouts(leasepool::JobHandle<(String, u32)>),
    }
    let mut handles = Vec::new();
    for i in 0..240 {
        let h = if i % 7 == 3 {
            Item::Panics(g.enqueue_call(Boom(format!("item {i}"))).unwrap())
        } else {
            Item::Shouts(g.enqueue_call(Shout(format!("item {i}"))).unwrap())
        };
        handles.push(h);
    }
    // Which child takes which frame is up to the pool's workers (whichever is free first takes
    // the next frame), so the items may all land on one child: only the answers are checked.
    for (i, h) in handles.into_iter().enumerate() {
        match h {
            Item::Panics(h) => {
                assert_eq!(h.await, Err(LeaseError::Panicked(format!("item {i}"))));
            }
            Item::Shouts(h) => {
                let (text, _pid) = h.await.unwrap();
                assert_eq!(text, format!("ITEM {i}"));
            }
        }
    }
    // A crash costs the items of its frame, not the batch's others, and never an answer twice.
    let crash = g.enqueue_call(Crash::Abort).unwrap();
    let others: Vec<_> = (0..59)
        .map(|i| g.enqueue_call(Shout(format!("beside {i}"))).unwrap())
        .collect();
    assert_eq!(crash.await, Err(LeaseError::WorkerLost));
    let mut lost = 0;
    for h in others {
        match h.await {
            Ok((text, _)) => assert!(text.starts_with("BESIDE")),
            Err(LeaseError::WorkerLost) => lost += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        lost < 59,
        "the items sent to the other children were answered"
    );
    // The pools serve on.
    assert_eq!(
        g.submit_call(Shout("after".into())).await.unwrap().0,
        "AFTER"
    );
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

async fn a_grinder_item_too_large_fails_alone_and_frames_stay_under_the_cap() {
    let m = builder("pt-gcap", 1, 1)
        .max_message_bytes(64 * 1024)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = WorkGrinder::builder(&m)
        .batch_size_threshold(41)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    g.start().await.unwrap();
    // 40 items of 10 KiB do not fit one 64 KiB frame together: they travel in several.
    let fits: Vec<_> = (0..40)
        .map(|_| g.enqueue_call(Bytes(vec![1; 10 * 1024])).unwrap())
        .collect();
    let too_big = g.enqueue_call(Bytes(vec![2; 100 * 1024])).unwrap();
    for h in fits {
        assert_eq!(h.await, Ok(10 * 1024));
    }
    let err = too_big.await.unwrap_err();
    assert!(
        matches!(err, LeaseError::ProcessJob(ref t) if t.contains("max_message_bytes")),
        "{err}"
    );
    g.stop(StopMode::Drain).await;
    m.stop().await;
}

async fn the_thread_backend_gives_the_same_answers() {
    let m = LeaseManager::builder()
        .name_prefix("pt-thread")
        .process_jobs(jobs())
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

async fn a_program_that_is_no_worker_fails_start_with_a_clear_error() {
    let m = builder("pt-noinit", 1, 1)
        .worker_program("/bin/echo")
        .child_start_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = m.start().await.unwrap_err();
    assert!(
        matches!(err, LeaseError::NoHealthyPool(ref t) if t.contains("process::init")),
        "{err}"
    );
    m.stop().await;
}

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

async fn build_refuses_bad_process_settings() {
    let base = || LeaseManager::builder().backend(Backend::Process);
    assert_eq!(base().build().unwrap_err(), BuildError::MissingProcessJobs);
    let dup = Jobs::new().register::<Shout>().register::<ShoutAgain>();
    assert_eq!(
        base().process_jobs(dup).build().unwrap_err(),
        BuildError::DuplicateJobName("shout.v1")
    );
    assert_eq!(
        base()
            .process_jobs(jobs())
            .max_jobs_per_child(0)
            .build()
            .unwrap_err(),
        BuildError::Zero {
            setting: "max_jobs_per_child"
        }
    );
    assert_eq!(
        base()
            .process_jobs(jobs())
            .child_memory_limit(0)
            .build()
            .unwrap_err(),
        BuildError::Zero {
            setting: "child_memory_limit"
        }
    );
    let err = base()
        .process_jobs(jobs())
        .worker_program("/no/such/program")
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::WorkerProgram(ref t) if t.contains("/no/such/program")));
}

// ---- the runner ------------------------------------------------------------------------------

fn main() {
    process::init(jobs());
    if std::env::var_os(PARENT_ROLE).is_some() {
        parent_role();
    }
    let _ = events();
    let all = common::named_tests![
        round_trip,
        parallel_work_runs_in_parallel,
        a_panic_answers_panicked_and_the_child_survives,
        a_crash_answers_worker_lost_and_spares_its_sibling,
        a_runaway_job_is_killed_at_hard_expiry,
        stop_past_shutdown_timeout_kills_running_children,
        max_jobs_per_child_replaces_the_child,
        a_memory_hog_over_the_limit_answers_worker_lost,
        child_logs_and_output_reach_the_parent_with_fields,
        children_die_with_a_killed_parent,
        the_grinder_runs_process_jobs,
        grinder_items_in_one_frame_are_answered_each_on_their_own,
        a_grinder_item_too_large_fails_alone_and_frames_stay_under_the_cap,
        the_thread_backend_gives_the_same_answers,
        closures_and_unknown_jobs_fail_alone,
        a_malformed_frame_replaces_only_that_child,
        a_program_that_is_no_worker_fails_start_with_a_clear_error,
        a_child_never_starts_children_of_its_own,
        build_refuses_bad_process_settings,
    ];
    static LOGGED_BEFORE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    use std::sync::atomic::Ordering::SeqCst;
    let ran = common::run_named(
        all,
        Duration::from_secs(120),
        common::block_on_tokio,
        |_| LOGGED_BEFORE.store(events().lock().unwrap().len(), SeqCst),
        |_| {
            println!("    what it logged:");
            for e in events()
                .lock()
                .unwrap()
                .iter()
                .skip(LOGGED_BEFORE.load(SeqCst))
            {
                println!("    {} {:?}", e.target, e.fields);
            }
        },
    );
    assert_no_children("after every test");
    ran.finish();
}
