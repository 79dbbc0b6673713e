//! What the tests share: builders, `/proc` readings, scratch directories, the `check!` of the long
//! probes, the subscriber that prints WARN/ERROR.

use leasepool::process::Jobs;
use leasepool::{process, Backend, Counters, LeaseError, LeaseManager, ManagerBuilder};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::jobs::*;

/// Children the test's own managers left running: must be none once they stopped.
pub(crate) fn assert_no_children(context: &str) {
    let me = std::process::id();
    assert!(
        eventually(Duration::from_secs(5), || children_of(me).0.is_empty()),
        "{context}: children still running: {:?}",
        children_of(me).0
    );
}

pub(crate) fn step_of(ms: u64) -> Step {
    Step { ms, abort: false }
}

/// While this file exists, a child refuses to start (its `on_child_start` hook panics).
pub(crate) fn refuse_starts_flag() -> PathBuf {
    std::env::temp_dir().join(format!("lp-process-truth-refuse-{}", parent_pid()))
}

/// The test process's pid, in the test process and in its children alike.
pub(crate) fn parent_pid() -> u32 {
    if process::is_worker_child() {
        stat(std::process::id()).map_or(0, |(_, ppid, _)| ppid)
    } else {
        std::process::id()
    }
}

pub(crate) fn fragile(id: u32, fault: Fault) -> Fragile {
    Fragile { id, fault }
}

/// The step a faulty [`Fragile`] is answered for.
pub(crate) fn step(fault: Fault) -> &'static str {
    match fault {
        Fault::None => "",
        Fault::EncodeInput => "encoding its input panicked: input",
        Fault::DecodeInput => "decoding its input panicked: input",
        Fault::EncodeOutput => "encoding its output panicked: output",
        Fault::DecodeOutput => "decoding its output panicked: output",
    }
}

pub(crate) const FAULTS: [Fault; 4] = [
    Fault::EncodeInput,
    Fault::DecodeInput,
    Fault::EncodeOutput,
    Fault::DecodeOutput,
];

/// Checks `answer` is what `Fragile { id, fault }` should get.
pub(crate) fn check_answer(id: u32, fault: Fault, answer: Result<FragileOut, LeaseError>) {
    match (fault, answer) {
        (Fault::None, Ok(out)) => assert_eq!(out, FragileOut { id, fault }),
        (fault, Err(LeaseError::ProcessJob(text))) if fault != Fault::None => assert!(
            text.contains(step(fault)) && text.contains(&id.to_string()),
            "{fault:?} answered {text:?}"
        ),
        (fault, other) => panic!("item {id} ({fault:?}) answered {other:?}"),
    }
}

/// The counters a test looks at.
pub(crate) fn jobs_counted(c: &Counters) -> [u64; 4] {
    [
        c.jobs_completed,
        c.jobs_panicked,
        c.jobs_failed,
        c.jobs_lost,
    ]
}

pub(crate) fn children_counted(c: &Counters) -> [u64; 5] {
    [
        c.children_started,
        c.children_crashed,
        c.children_killed,
        c.children_over_memory,
        c.children_recycled,
    ]
}

/// Waits until the job and child counters read `jobs` and `children` (a grinder part counts its
/// items when it ends, a replacement child starts after the answer), then returns them all.
/// Fails with the last reading if they never do.
pub(crate) async fn counted(
    m: &LeaseManager,
    jobs: [u64; 4],
    children: Option<[u64; 5]>,
) -> Counters {
    testkit::stats_until(m, "the counters", |s| {
        jobs_counted(&s.counters) == jobs
            && children.is_none_or(|c| children_counted(&s.counters) == c)
    })
    .await
    .counters
}

/// CPU time this process has used (every thread, from `/proc/self/task/*/schedstat`, in ns).
pub(crate) fn cpu_used() -> Duration {
    let mut total = 0_u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(total)
}

/// Context switches of this process's threads (voluntary and not).
pub(crate) fn switches() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.contains("ctxt_switches") {
                total += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// `(live, zombie)` children of this process.
pub(crate) fn kids() -> (Vec<u32>, Vec<u32>) {
    children_of(std::process::id())
}

/// `check!(cond, "what…")`: prints the check and its outcome and records a failure without
/// stopping the probe, so one run shows every promise that does not hold.
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
pub(crate) use check;

pub(crate) fn script(name: &str, body: &str) -> PathBuf {
    let dir = scratch(name);
    let path = dir.join("worker.sh");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

pub(crate) fn exe() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

pub(crate) fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

pub(crate) fn thread_names() -> Vec<String> {
    let mut v = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("comm")) {
            v.push(c.trim_end().to_owned());
        }
    }
    v
}

pub(crate) fn threads_with(prefix: &str) -> Vec<String> {
    let p = &prefix[..prefix.len().min(15)];
    thread_names()
        .into_iter()
        .filter(|n| n.starts_with(p))
        .collect()
}

pub(crate) fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn vm_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

pub(crate) async fn timed<F: std::future::Future>(
    limit: Duration,
    f: F,
) -> (Option<F::Output>, Duration) {
    let t = Instant::now();
    let r = tokio::time::timeout(limit, f).await.ok();
    (r, t.elapsed())
}

pub(crate) fn kill(sig: &str, pid: u32) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// `SIGKILL` to `pid`, which must exist: the test fails if `kill` does.
pub(crate) fn kill_now(pid: u32) {
    let status = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid}: {status}");
}

/// Cleanup: kill leftover processes whose pgid or ppid relate to `pids`.
pub(crate) fn reap_leftovers(pids: &[u32]) {
    for &p in pids {
        if alive(p) {
            kill("-CONT", p);
            kill("-KILL", p);
        }
    }
}

pub(crate) fn report_leftovers(what: &str, prefix: &str) {
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

/// An event's fields as one line, each value cut at 300 bytes.
#[derive(Default)]
pub(crate) struct Fields(pub(crate) String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut v = format!("{value:?}");
        if v.len() > 300 {
            let cut = (0..=300)
                .rev()
                .find(|&i| v.is_char_boundary(i))
                .unwrap_or(0);
            v.truncate(cut);
            v.push('…');
        }
        self.0.push_str(&format!(" {}={}", field.name(), v));
    }
}

/// Counts the lines the children's output and logs became ([`OUTPUT_LINES`]) and, with
/// `LP_TEST_LOG` set, prints leasepool's WARN and ERROR events briefly as they happen (a failed
/// test prints everything it logged anyway).
pub(crate) struct Print;

impl<S: Subscriber> Layer<S> for Print {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let m = event.metadata();
        if m.target() == "leasepool::process::output" || m.target() == "leasepool::process::child" {
            OUTPUT_LINES.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if *m.level() <= tracing::Level::WARN
            && m.target().starts_with("leasepool")
            && std::env::var_os("LP_TEST_LOG").is_some()
        {
            let mut f = Fields::default();
            event.record(&mut f);
            println!("      [{} {}]{}", m.level(), m.target(), f.0);
        }
    }
}

pub(crate) fn grinder_over(m: &LeaseManager, threshold: usize) -> leasepool::WorkGrinder {
    leasepool::WorkGrinder::builder(m)
        .batch_size_threshold(threshold)
        .max_wait(Duration::from_millis(30))
        .build()
        .unwrap()
}

/// A process-backend manager of `pools` fixed pools of `workers` children each, running `jobs`.
pub(crate) fn process_builder(
    jobs: Jobs,
    prefix: &str,
    pools: usize,
    workers: usize,
) -> ManagerBuilder<()> {
    LeaseManager::builder()
        .backend(Backend::Process)
        .process_jobs(jobs)
        .name_prefix(prefix)
        .max_pools(pools)
        .min_pools(pools)
        .workers_per_pool(workers)
}

/// A fresh, empty directory for one test, named after the binary, its pid and `name`.
pub(crate) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "lp-{}-{}-{name}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch dir");
    dir
}

/// `(state, parent pid, process group)` of `pid` from `/proc/<pid>/stat`.
pub(crate) fn stat(pid: u32) -> Option<(String, u32, u32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.to_owned();
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub(crate) fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(s, _, _)| s != "Z" && s != "X")
}

/// Every pid in `/proc`.
pub(crate) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// `(live, zombie)` children of `parent`.
pub(crate) fn children_of(parent: u32) -> (Vec<u32>, Vec<u32>) {
    let (mut live, mut zombie) = (Vec::new(), Vec::new());
    for pid in all_pids() {
        if let Some((state, ppid, _)) = stat(pid) {
            if ppid == parent {
                if state == "Z" {
                    zombie.push(pid);
                } else {
                    live.push(pid);
                }
            }
        }
    }
    (live, zombie)
}

/// Polls `cond` every 5 ms for up to `limit`; whether it came true.
pub(crate) fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A manager of `pools` fixed pools of `workers` children each, running the binary's jobs;
/// `stop` waits up to 5 s for running jobs.
pub(crate) fn builder(prefix: &str, pools: usize, workers: usize) -> ManagerBuilder<()> {
    process_builder(crate::jobs(), prefix, pools, workers).shutdown_timeout(Duration::from_secs(5))
}

/// [`builder`] whose `stop` waits only 2 s (the probes that stop under attack).
pub(crate) fn impatient_builder(prefix: &str, pools: usize, workers: usize) -> ManagerBuilder<()> {
    process_builder(crate::jobs(), prefix, pools, workers).shutdown_timeout(Duration::from_secs(2))
}

/// The failed `check!`s of the running test (the runner fails the test when there are any).
pub(crate) static FAILS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// How many `check!`s ran in the whole binary.
pub(crate) static CHECKS: AtomicUsize = AtomicUsize::new(0);

/// Lines of the children's output and logs that reached the parent so far.
pub(crate) static OUTPUT_LINES: AtomicUsize = AtomicUsize::new(0);
