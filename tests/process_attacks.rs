//! Attacks on the process backend, written by an adversarial review of its first version
//! (`harness = false`; this binary is its managers' worker program, so `main` calls `init`
//! first). Each probe prints what it did and `check!`s what the backend promises; the binary
//! fails if any check fails. On the first version (ae50c42) these found: protocol pipes leaking
//! into a job's subprocesses, so a crash beside a live subprocess was answered only at hard
//! expiry; blocking writes that stalled past expiry and past `stop` (a killed or SIGSTOPped
//! child); subprocesses and log threads outliving `stop` and recycling; `stop` not ending a
//! child still starting; unbounded memory for one huge log line; an `on_child_start` panic
//! reported as "not a leasepool worker"; answers shifted by an injected frame; a
//! `max_message_bytes` too small to start. All hold now.
//!
//! `cargo test --features process,testing --test process_attacks [name-filter]`
mod common;
#[path = "common/process.rs"]
mod proc_common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use leasepool::process::{self, Jobs, ProcessJob};
use leasepool::{BuildError, LeaseError, LeaseManager, ManagerBuilder};
use proc_common::{alive, children_of, eventually, scratch, Bytes, Pid};
use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

// ---- jobs ------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct SleepMs(u64);
impl ProcessJob for SleepMs {
    const NAME: &'static str = "sleep.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::sleep(Duration::from_millis(self.0));
        std::process::id()
    }
}

#[derive(Serialize, Deserialize)]
enum Crash {
    Abort,
    Exit(i32),
    Panic,
}
impl ProcessJob for Crash {
    const NAME: &'static str = "crash.v1";
    type Output = u32;
    fn run(self) -> u32 {
        match self {
            Crash::Abort => std::process::abort(),
            Crash::Exit(c) => std::process::exit(c),
            Crash::Panic => panic!("boom"),
        }
    }
}

/// Spawns `sleep secs` (in our group, or its own), writes its pid to a file, then returns or
/// aborts. Answers (child pid, grandchild pid).
#[derive(Serialize, Deserialize)]
struct Grandchild {
    secs: u64,
    own_group: bool,
    abort_after: bool,
}
impl ProcessJob for Grandchild {
    const NAME: &'static str = "grandchild.v1";
    type Output = (u32, u32);
    fn run(self) -> (u32, u32) {
        let mut cmd = Command::new("sleep");
        cmd.arg(self.secs.to_string());
        if self.own_group {
            cmd.process_group(0);
        }
        let g = cmd.spawn().expect("spawn sleep");
        let gp = g.id();
        std::mem::forget(g);
        if let Ok(f) = std::env::var("ADV_GRANDCHILD_FILE") {
            let _ = std::fs::write(f, gp.to_string());
        }
        if self.abort_after {
            std::thread::sleep(Duration::from_millis(50));
            std::process::abort();
        }
        (std::process::id(), gp)
    }
}

#[derive(Serialize, Deserialize)]
struct BigOut(usize);
impl ProcessJob for BigOut {
    const NAME: &'static str = "bigout.v1";
    type Output = Vec<u8>;
    fn run(self) -> Vec<u8> {
        vec![7; self.0]
    }
}

#[derive(Serialize, Deserialize)]
struct BigPanic(usize);
impl ProcessJob for BigPanic {
    const NAME: &'static str = "bigpanic.v1";
    type Output = ();
    fn run(self) {
        panic!("{}", "x".repeat(self.0));
    }
}

/// Writes `bytes` bytes on stderr, in one line (no newline) or in lines of 100.
#[derive(Serialize, Deserialize)]
struct Spew {
    bytes: usize,
    newline: bool,
    binary: bool,
}
impl ProcessJob for Spew {
    const NAME: &'static str = "spew.v1";
    type Output = u32;
    fn run(self) -> u32 {
        use std::io::Write;
        let mut chunk = vec![if self.binary { 0xff } else { b'a' }; 1 << 20];
        if self.newline {
            for i in (99..chunk.len()).step_by(100) {
                chunk[i] = b'\n';
            }
        }
        let mut err = std::io::stderr().lock();
        let mut left = self.bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            err.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        if !self.newline {
            let _ = err.write_all(b"\n");
        }
        std::process::id()
    }
}

/// Starts a thread that keeps printing and logging after the job returns.
#[derive(Serialize, Deserialize)]
struct BgLogger;
impl ProcessJob for BgLogger {
    const NAME: &'static str = "bglogger.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::spawn(|| loop {
            eprintln!("background line");
            tracing::warn!("background event");
            std::thread::sleep(Duration::from_millis(1));
        });
        std::process::id()
    }
}

/// Exits while another thread writes to stderr as fast as it can.
#[derive(Serialize, Deserialize)]
struct ExitWhileWriting;
impl ProcessJob for ExitWhileWriting {
    const NAME: &'static str = "exitwrite.v1";
    type Output = u32;
    fn run(self) -> u32 {
        std::thread::spawn(|| loop {
            eprintln!("{}", "z".repeat(4000));
        });
        std::thread::sleep(Duration::from_millis(20));
        std::process::exit(0)
    }
}

/// Writes raw bytes to the child's protocol write end (fd 4) via /proc, then answers.
#[derive(Serialize, Deserialize)]
struct Inject(Vec<u8>);
impl ProcessJob for Inject {
    const NAME: &'static str = "inject.v1";
    type Output = u32;
    fn run(self) -> u32 {
        use std::io::Write;
        // Find the write end of the protocol pipe: a pipe fd > 2 opened for writing.
        for fd in 3..20 {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            let flags =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let write = flags
                .lines()
                .find(|l| l.starts_with("flags:"))
                .and_then(|l| {
                    u32::from_str_radix(l.split_whitespace().nth(1).unwrap_or("0"), 8).ok()
                })
                .is_some_and(|f| f & 3 == 1);
            if link.to_string_lossy().starts_with("pipe:") && write {
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(format!("/proc/self/fd/{fd}"))
                    .unwrap();
                f.write_all(&self.0).unwrap();
                break;
            }
        }
        1
    }
}

/// Lists the child's open fds (after exec of a grandchild they would be inherited).
#[derive(Serialize, Deserialize)]
struct Fds;
impl ProcessJob for Fds {
    const NAME: &'static str = "fds.v1";
    type Output = Vec<String>;
    fn run(self) -> Vec<String> {
        let out = Command::new("sh")
            .args([
                "-c",
                "ls -l /proc/$$/fd | tail -n +2 | awk '{print $9 $10 $11}'",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Starts `yes` in a process group of its own, writing into the child's stderr pipe; answers
/// its pid. (Second review: a writer outside the group kept the log thread, and so the worker,
/// busy forever.)
#[derive(Serialize, Deserialize)]
struct ChattyDaemon;
impl ProcessJob for ChattyDaemon {
    const NAME: &'static str = "chatty-daemon.v1";
    type Output = u32;
    fn run(self) -> u32 {
        let c = Command::new("yes")
            .process_group(0)
            .stdout(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let p = c.id();
        std::mem::forget(c);
        p
    }
}

/// Moves the child into its parent's process group, then sleeps. (Second review: a kill of
/// the child's group missed it.)
#[derive(Serialize, Deserialize)]
struct LeaveGroup(u64);
impl ProcessJob for LeaveGroup {
    const NAME: &'static str = "leave-group.v1";
    type Output = u32;
    fn run(self) -> u32 {
        let parent = rustix::process::getppid().unwrap();
        let pg = rustix::process::getpgid(Some(parent)).unwrap();
        rustix::process::setpgid(None, Some(pg)).unwrap();
        std::thread::sleep(Duration::from_millis(self.0));
        std::process::id()
    }
}

/// Takes `n` bytes in, answers their count.
#[derive(Serialize, Deserialize)]
struct BigIn(leasepool::process::Bytes);
impl ProcessJob for BigIn {
    const NAME: &'static str = "big-in.v1";
    type Output = usize;
    fn run(self) -> usize {
        self.0.len()
    }
}

/// The child's resident memory, KiB.
#[derive(Serialize, Deserialize)]
struct ChildRss;
impl ProcessJob for ChildRss {
    const NAME: &'static str = "child-rss.v1";
    type Output = u64;
    fn run(self) -> u64 {
        vm_rss_kb()
    }
}

/// A hand-written `Serialize` that may panic or fail, and a `Drop` that may panic (third
/// review: in a batched frame these cost their neighbours, or aborted the host).
#[derive(Deserialize)]
struct Touchy {
    id: u64,
    #[serde(skip)]
    ser_panic: bool,
    #[serde(skip)]
    ser_err: bool,
    #[serde(skip)]
    drop_panic: bool,
}
impl Touchy {
    fn new(id: u64) -> Self {
        Touchy {
            id,
            ser_panic: false,
            ser_err: false,
            drop_panic: false,
        }
    }
}
impl Serialize for Touchy {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        use serde::ser::{Error, SerializeStruct};
        if self.ser_panic {
            panic!("serialize panics {}", self.id);
        }
        if self.ser_err {
            return Err(Z::Error::custom("serialize fails"));
        }
        let mut st = s.serialize_struct("Touchy", 1)?;
        st.serialize_field("id", &self.id)?;
        st.end()
    }
}
impl Drop for Touchy {
    fn drop(&mut self) {
        if self.drop_panic {
            panic!("drop panics {}", self.id);
        }
    }
}
impl ProcessJob for Touchy {
    const NAME: &'static str = "touchy.v1";
    type Output = u64;
    fn run(mut self) -> u64 {
        self.drop_panic = false;
        self.id
    }
}

/// A job with a long name (the frame header grows with it).
#[derive(Serialize, Deserialize)]
struct LongName(u32);
impl ProcessJob for LongName {
    const NAME: &'static str = "long-name-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.v1";
    type Output = u32;
    fn run(self) -> u32 {
        self.0
    }
}

fn jobs() -> Jobs {
    Jobs::new()
        .register::<Touchy>()
        .register::<LongName>()
        .register::<ChattyDaemon>()
        .register::<LeaveGroup>()
        .register::<BigIn>()
        .register::<ChildRss>()
        .register::<Pid>()
        .register::<SleepMs>()
        .register::<Crash>()
        .register::<Grandchild>()
        .register::<Bytes>()
        .register::<BigOut>()
        .register::<BigPanic>()
        .register::<Spew>()
        .register::<BgLogger>()
        .register::<ExitWhileWriting>()
        .register::<Inject>()
        .register::<Fds>()
        .on_child_start(|| {
            if let Ok(ms) = std::env::var("ADV_START_SLEEP_MS") {
                std::thread::sleep(Duration::from_millis(ms.parse().unwrap()));
            }
            if std::env::var_os("ADV_START_PANIC").is_some() {
                panic!("on_child_start refuses");
            }
        })
}

fn builder(prefix: &str, pools: usize, workers: usize) -> ManagerBuilder<()> {
    proc_common::process_builder(jobs(), prefix, pools, workers)
        .shutdown_timeout(Duration::from_secs(2))
}

/// `(live, zombie)` children of this process.
fn kids() -> (Vec<u32>, Vec<u32>) {
    children_of(std::process::id())
}

// ---- helpers ---------------------------------------------------------------------------------

static FAILS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static CHECKS: AtomicUsize = AtomicUsize::new(0);

macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {{
        CHECKS.fetch_add(1, Ordering::SeqCst);
        let ok: bool = $cond;
        let text = format!($($fmt)*);
        if ok {
            println!("    ok   : {text}");
        } else {
            println!("    FAIL : {text}");
            FAILS.lock().unwrap().push(format!("{}: {text}", std::thread::current().name().unwrap_or("?")));
        }
    }};
}

fn script(name: &str, body: &str) -> PathBuf {
    let dir = scratch(name);
    let path = dir.join("worker.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exe() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn thread_names() -> Vec<String> {
    let mut v = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("comm")) {
            v.push(c.trim_end().to_owned());
        }
    }
    v
}

fn threads_with(prefix: &str) -> Vec<String> {
    let p = &prefix[..prefix.len().min(15)];
    thread_names()
        .into_iter()
        .filter(|n| n.starts_with(p))
        .collect()
}

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

async fn timed<F: std::future::Future>(limit: Duration, f: F) -> (Option<F::Output>, Duration) {
    let t = Instant::now();
    let r = tokio::time::timeout(limit, f).await.ok();
    (r, t.elapsed())
}

fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Cleanup: kill leftover processes whose pgid or ppid relate to `pids`.
fn reap_leftovers(pids: &[u32]) {
    for &p in pids {
        if alive(p) {
            kill("-CONT", p);
            kill("-KILL", p);
        }
    }
}

fn report_leftovers(what: &str, prefix: &str) {
    let (live, zombie) = kids();
    check!(
        live.is_empty(),
        "{what}: no live child processes (found {live:?})"
    );
    check!(
        zombie.is_empty(),
        "{what}: no zombie children (found {zombie:?})"
    );
    // A dropped manager's threads end on their own, just after its children: give them a
    // moment (bounded), and say how long they took.
    let begun = Instant::now();
    let ended = eventually(Duration::from_secs(2), || threads_with(prefix).is_empty());
    let threads = threads_with(prefix);
    check!(
        ended,
        "{what}: no threads named {prefix}* (found {threads:?} after {:?})",
        begun.elapsed()
    );
    if begun.elapsed() > Duration::from_millis(5) {
        println!("    threads ended {:?} after the children", begun.elapsed());
    }
}

// ---- the subscriber: print WARN/ERROR of leasepool briefly ------------------------------------

#[derive(Default)]
struct Fields(String);
impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut v = format!("{value:?}");
        if v.len() > 300 {
            v.truncate(300);
            v.push('…');
        }
        self.0.push_str(&format!(" {}={}", field.name(), v));
    }
}
struct Print;
static OUTPUT_LINES: AtomicUsize = AtomicUsize::new(0);
impl<S: Subscriber> Layer<S> for Print {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let m = event.metadata();
        if m.target() == "leasepool::process::output" || m.target() == "leasepool::process::child" {
            OUTPUT_LINES.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if *m.level() <= tracing::Level::WARN && m.target().starts_with("leasepool") {
            let mut f = Fields::default();
            event.record(&mut f);
            println!("      [{} {}]{}", m.level(), m.target(), f.0);
        }
    }
}

// ---- attacks ---------------------------------------------------------------------------------

/// A job starts a grandchild (same process group) and then its child aborts: WorkerLost, promptly?
async fn grandchild_then_crash() {
    let m = builder("adv-gc", 1, 1)
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
async fn escaped_grandchild_then_crash() {
    let dir = scratch("egc");
    let file = dir.join("gpid");
    std::env::set_var("ADV_GRANDCHILD_FILE", &file);
    let m = builder("adv-egc", 1, 1)
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
async fn grandchild_outlives_job_then_stop() {
    let m = builder("adv-gcs", 1, 1).build().unwrap();
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

/// A child killed from outside while idle, while a grandchild of it holds the pipes; then a
/// call with a 1 MiB input on a lease that expires in 1.5 s.
async fn idle_kill9_with_grandchild_then_big_call() {
    let m = builder("adv-k9g", 1, 1)
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
async fn idle_kill9_with_grandchild_then_small_call() {
    let m = builder("adv-k9s", 1, 1)
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
async fn idle_kill9_then_call() {
    let m = builder("adv-k9", 1, 1).build().unwrap();
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
async fn sigstop_idle_then_big_call() {
    let m = builder("adv-stp", 1, 1)
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

/// SIGSTOP a child during a job; the lease expires: it must still be killed.
async fn sigstop_during_job_then_expiry() {
    let m = builder("adv-stj", 1, 1)
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

/// A child prints one huge line (no newline): what does the parent's memory do?
async fn huge_log_line() {
    let m = builder("adv-line", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let lease = m.acquire().await.unwrap();
    let rss0 = vm_rss_kb();
    let hwm0 = vm_hwm_kb();
    let n = 400 << 20;
    let (r, took) = timed(
        Duration::from_secs(60),
        lease.call(Spew {
            bytes: n,
            newline: false,
            binary: true,
        }),
    )
    .await;
    std::thread::sleep(Duration::from_millis(500));
    let hwm1 = vm_hwm_kb();
    println!(
        "    call {r:?} in {took:?}; parent RSS {} MiB -> HWM {} MiB (was {} MiB)",
        rss0 >> 10,
        hwm1 >> 10,
        hwm0 >> 10
    );
    check!(
        hwm1.saturating_sub(hwm0) < (64 << 10),
        "a child's {} MiB log line grows the parent's peak memory by < 64 MiB (grew {} MiB)",
        n >> 20,
        hwm1.saturating_sub(hwm0) >> 10
    );
    lease.release().await;
    m.stop().await;
    report_leftovers("end", "adv-line");
}

/// A job leaves a thread that keeps logging; then stop().
async fn background_logger_then_stop() {
    let m = builder("adv-bg", 1, 2).build().unwrap();
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
async fn stop_during_slow_child_start() {
    let prog = script("slow", &format!("ADV_START_SLEEP_MS=3000 exec {}", exe()));
    let m = builder("adv-slow", 2, 2)
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
async fn stop_during_hung_handshake() {
    let prog = script("hung", "exec sleep 100");
    let m = builder("adv-hung", 1, 1)
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

async fn on_child_start_panics() {
    let prog = script("panic", &format!("ADV_START_PANIC=1 exec {}", exe()));
    let m = builder("adv-ocsp", 1, 2)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start: {r:?} in {took:?}");
    check!(
        matches!(r, Some(Err(LeaseError::NoHealthyPool(ref t))) if t.contains("on_child_start")),
        "start fails naming on_child_start: {r:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let (_, z) = kids();
    check!(z.is_empty(), "no zombies while it retries: {z:?}");
    m.stop().await;
    report_leftovers("end", "adv-ocsp");
}

async fn memory_limit_too_small_to_start() {
    let m = builder("adv-tiny", 1, 1)
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

async fn prints_before_init() {
    let prog = script("print", &format!("echo hello there; exec {}", exe()));
    let m = builder("adv-print", 1, 1)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start: {r:?} in {took:?}");
    check!(
        matches!(r, Some(Err(LeaseError::NoHealthyPool(_)))),
        "NoHealthyPool"
    );
    m.stop().await;
    // a prefix that mimics the magic then a huge length
    let prog = script("print2", "printf 'LPW\\001\\377\\377\\377\\377'; sleep 100");
    let m = builder("adv-print2", 1, 1)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start (magic + huge length): {r:?} in {took:?}");
    check!(
        matches!(r, Some(Err(LeaseError::NoHealthyPool(_)))),
        "NoHealthyPool"
    );
    m.stop().await;
    report_leftovers("end", "adv-print");
}

async fn tiny_max_message() {
    let r = builder("adv-tmm", 1, 1).max_message_bytes(16).build();
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

async fn big_output_and_big_panic() {
    let m = builder("adv-big", 1, 1)
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

/// A job writes an extra well-formed Done frame on the protocol pipe: the next job's answer?
async fn injected_frame() {
    let m = builder("adv-inj", 1, 1).build().unwrap();
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

async fn exit_while_writing() {
    let m = builder("adv-eww", 1, 1).build().unwrap();
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
async fn mixed_storm() {
    let fd0 = fd_count();
    let m = builder("adv-storm", 2, 3).build().unwrap();
    m.start().await.unwrap();
    let a = m.acquire().await.unwrap();
    let b = m.acquire().await.unwrap();
    let mut handles = Vec::new();
    for i in 0..300usize {
        let l = if i % 2 == 0 { &a } else { &b };
        let h: leasepool::JobHandle<u32> = match i % 7 {
            0 => l.submit_call(Crash::Abort).unwrap(),
            1 => l.submit_call(Crash::Panic).unwrap(),
            2 => l.submit_call(Crash::Exit(1)).unwrap(),
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

async fn start_stop_cycles() {
    let fd0 = fd_count();
    let th0 = thread_names().len();
    for i in 0..8 {
        let m = builder("adv-cyc", 1, 2).build().unwrap();
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
async fn drops_mid_job() {
    let m = builder("adv-drop", 1, 1)
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
async fn drop_manager_mid_job() {
    let m = builder("adv-dm", 1, 1)
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

async fn faults_during_jobs() {
    let m = builder("adv-flt", 1, 2)
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

async fn grinder_with_crashes() {
    let m = builder("adv-grc", 2, 2).build().unwrap();
    m.start().await.unwrap();
    let g = leasepool::WorkGrinder::builder(&m)
        .batch_size_threshold(8)
        .max_wait(Duration::from_millis(5))
        .build()
        .unwrap();
    g.start().await.unwrap();
    let hs: Vec<_> = (0..64)
        .map(|i| {
            (
                i,
                if i % 5 == 0 {
                    g.enqueue_call(Crash::Abort).unwrap()
                } else {
                    g.enqueue_call(Pid).unwrap()
                },
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for (i, h) in hs {
        let (r, _) = timed(Duration::from_secs(20), h).await;
        let good = if i % 5 == 0 {
            r == Some(Err(LeaseError::WorkerLost))
        } else {
            matches!(r, Some(Ok(_)))
        };
        if !good {
            wrong.push((i, r));
        }
    }
    check!(
        wrong.is_empty(),
        "grinder items answered right: {:?}",
        wrong
    );
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
    report_leftovers("end", "adv-grc");
}

async fn recycling_leaks_grandchildren_and_log_threads() {
    let m = builder("adv-rcy", 1, 1)
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

async fn wrapper_script_without_exec() {
    let prog = script("noexec", &exe());
    let m = builder("adv-nx", 1, 1)
        .worker_program(prog)
        .build()
        .unwrap();
    let (r, took) = timed(Duration::from_secs(20), m.start()).await;
    println!("    start: {r:?} in {took:?}");
    m.stop().await;
    report_leftovers("end", "adv-nx");
}

// ---- runner ----------------------------------------------------------------------------------

/// A process outside the child's group keeps writing into its stderr: recycling and stop must
/// still end the worker's log thread.
async fn a_writer_outside_the_group_cannot_wedge_the_worker() {
    let m = builder("adv-chat", 1, 1)
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
async fn a_child_that_left_its_group_is_still_killed() {
    let m = builder("adv-lg", 1, 1)
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

/// Big inputs, one per worker, three rounds: the parent and the children give the memory back
/// (RSS read with glibc's mmap threshold fixed: see `main`).
async fn big_messages_do_not_pin_memory() {
    let m = builder("adv-mem", 1, 4).build().unwrap();
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

fn grinder_over(m: &LeaseManager, threshold: usize) -> leasepool::WorkGrinder {
    leasepool::WorkGrinder::builder(m)
        .batch_size_threshold(threshold)
        .max_wait(Duration::from_millis(30))
        .build()
        .unwrap()
}

/// Batched frames: outputs that fit one by one but not together are each answered.
async fn batched_outputs_are_capped_per_item_not_per_frame() {
    let m = builder("adv-bout", 1, 1)
        .max_message_bytes(4096)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = grinder_over(&m, 10);
    g.start().await.unwrap();
    let hs: Vec<_> = (0..10)
        .map(|_| g.enqueue_call(BigOut(1000)).unwrap())
        .collect();
    for (i, h) in hs.into_iter().enumerate() {
        let r = h.await.map(|v| v.len());
        check!(r == Ok(1000), "item {i}: {r:?}");
    }
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}

/// Batched frames: a long job name does not push small items over the cap.
async fn batched_frames_leave_room_for_a_long_name() {
    let m = builder("adv-blong", 1, 1)
        .max_message_bytes(4096)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = grinder_over(&m, 1000);
    g.start().await.unwrap();
    let hs: Vec<_> = (0..1000)
        .map(|i| g.enqueue_call(LongName(u32::MAX - i)).unwrap())
        .collect();
    let mut bad = 0;
    for h in hs {
        if h.await.is_err() {
            bad += 1;
        }
    }
    check!(bad == 0, "every small item answered Ok: {bad} failed");
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}

/// Batched frames: an input whose Serialize panics or fails fails alone.
async fn batched_inputs_that_do_not_encode_fail_alone() {
    let m = builder("adv-bser", 1, 1).build().unwrap();
    m.start().await.unwrap();
    let g = grinder_over(&m, 10);
    g.start().await.unwrap();
    let hs: Vec<_> = (0..10)
        .map(|i| {
            let mut t = Touchy::new(i);
            t.ser_panic = i == 5;
            t.ser_err = i == 7;
            g.enqueue_call(t).unwrap()
        })
        .collect();
    for (i, h) in hs.into_iter().enumerate() {
        let r = h.await;
        match i {
            5 => check!(
                matches!(r, Err(LeaseError::ProcessJob(ref t))
                    if t.contains("encoding its input panicked: serialize panics 5")),
                "item 5: {r:?}"
            ),
            7 => check!(
                matches!(r, Err(LeaseError::ProcessJob(ref t)) if t.contains("cannot encode its input")),
                "item 7: {r:?}"
            ),
            _ => check!(r == Ok(i as u64), "item {i}: {r:?}"),
        }
    }
    g.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}

/// Batched frames: items whose Drop panics — skipped (their submitter left) or dropped unrun
/// (their lease expired) — neither abort the process nor take the others' answers.
async fn batched_items_with_panicking_drops_cost_nothing_else() {
    let m = builder("adv-bdrop", 1, 1)
        .lease_grace(Duration::ZERO)
        .build()
        .unwrap();
    m.start().await.unwrap();
    let g = leasepool::WorkGrinder::builder(&m)
        .batch_size_threshold(1000)
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap();
    g.start().await.unwrap();
    // Keeps the only worker busy while the batch's other parts wait.
    let busy = g.enqueue_call(SleepMs(300)).unwrap();
    let keep: Vec<_> = (0..5)
        .map(|i| g.enqueue_call(Touchy::new(100 + i)).unwrap())
        .collect();
    let mut left = Vec::new();
    for i in 0..2 {
        let g = g.clone();
        left.push(tokio::spawn(async move {
            let mut t = Touchy::new(i);
            t.drop_panic = true;
            let _ = tokio::time::timeout(Duration::from_millis(100), g.submit_call(t)).await;
        }));
    }
    for l in left {
        let _ = l.await;
    }
    let _ = busy.await;
    for (i, h) in keep.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(5), h).await;
        check!(
            matches!(r, Ok(Ok(id)) if id == 100 + i as u64),
            "kept item {i} answered: {r:?}"
        );
    }
    // Dropped unrun: a batch whose lease expires while its part waits behind a long job.
    let g2 = leasepool::WorkGrinder::builder(&m)
        .batch_size_threshold(1000)
        .max_wait(Duration::from_millis(20))
        .lease_for(Duration::from_millis(100))
        .build()
        .unwrap();
    g.stop(leasepool::StopMode::Drain).await;
    g2.start().await.unwrap();
    let busy = g2.enqueue_call(SleepMs(1500)).unwrap();
    let hs: Vec<_> = (0..3)
        .map(|i| {
            let mut t = Touchy::new(i);
            t.drop_panic = true;
            g2.enqueue_call(t).unwrap()
        })
        .collect();
    let _ = busy.await;
    for (i, h) in hs.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(5), h).await;
        check!(r.is_ok(), "item {i} with a panicking Drop resolved: {r:?}");
    }
    g2.stop(leasepool::StopMode::Drain).await;
    m.stop().await;
}

fn main() {
    process::init(jobs());
    // The RSS checks read what leasepool keeps, not what glibc caches: with a fixed mmap
    // threshold a freed big buffer goes back to the system at once (glibc's dynamic threshold
    // otherwise keeps 24 MiB buffers in per-thread arenas after the first one is freed).
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        use std::os::unix::process::CommandExt as _;
        let err = Command::new(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env("MALLOC_MMAP_THRESHOLD_", "131072")
            .exec();
        panic!("cannot run again with MALLOC_MMAP_THRESHOLD_: {err}");
    }
    let sub = tracing_subscriber::registry().with(Print);
    tracing::subscriber::set_global_default(sub).unwrap();
    let all = common::named_tests![
        batched_outputs_are_capped_per_item_not_per_frame,
        batched_frames_leave_room_for_a_long_name,
        batched_inputs_that_do_not_encode_fail_alone,
        batched_items_with_panicking_drops_cost_nothing_else,
        a_writer_outside_the_group_cannot_wedge_the_worker,
        a_child_that_left_its_group_is_still_killed,
        big_messages_do_not_pin_memory,
        idle_kill9_then_call,
        grandchild_then_crash,
        escaped_grandchild_then_crash,
        grandchild_outlives_job_then_stop,
        idle_kill9_with_grandchild_then_small_call,
        idle_kill9_with_grandchild_then_big_call,
        sigstop_idle_then_big_call,
        sigstop_during_job_then_expiry,
        huge_log_line,
        background_logger_then_stop,
        stop_during_slow_child_start,
        stop_during_hung_handshake,
        on_child_start_panics,
        memory_limit_too_small_to_start,
        prints_before_init,
        tiny_max_message,
        big_output_and_big_panic,
        injected_frame,
        exit_while_writing,
        mixed_storm,
        start_stop_cycles,
        drops_mid_job,
        drop_manager_mid_job,
        faults_during_jobs,
        wrapper_script_without_exec,
        recycling_leaks_grandchildren_and_log_threads,
        grinder_with_crashes,
    ];
    common::run_named(
        all,
        Duration::from_secs(150),
        common::block_on_tokio,
        |name| println!("== {name}"),
        |name| FAILS.lock().unwrap().push(format!("{name}: panicked")),
    );
    let fails = FAILS.lock().unwrap();
    println!(
        "\n{} checks, {} failed",
        CHECKS.load(Ordering::SeqCst),
        fails.len()
    );
    for f in fails.iter() {
        println!("  - {f}");
    }
    std::process::exit(if fails.is_empty() { 0 } else { 1 });
}
